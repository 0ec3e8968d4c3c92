"""Real calibration and gate data: `--calib-data` records feed the gates (n recorded, with the top-1 interval)
and the static Q/DQ int8 candidate; a CrisisMMD root with a task and split works the same; texts follow the one
text rule (`record_text`); without data the export says so on stderr and records "generated"; unusable records
are skipped and counted; the manifest's top-level `calibration` says which it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.export.calibration import CalibrationSpec, batch_plan, load_gate_data
from crisis_tool.export.int8_candidates import STATIC_CANDIDATE
from crisis_tool.runtime.errors import BundleError, UsageError
from crisis_tool.runtime.manifest import Manifest, read_manifest_json
from crisis_tool.runtime.record_text import record_text


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 records with images, one with a missing image and one with empty text."""
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(3)
    lines = []
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, size=(40 + i, 50, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
        lines.append({"id": str(i), "text": f"flood water rising near bridge {i} #Harvey", "image": f"{i}.jpg"})
    lines.append({"id": "missing", "text": "no photo", "image": "nope.jpg"})
    lines.append({"id": "empty", "text": "", "image": "0.jpg"})
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root / "records.jsonl"


def test_batch_plan_covers_every_record():
    assert batch_plan(20, 8) == [1, 3, 8, 8]
    assert batch_plan(512, 64) == [1, 3] + [64] * 7 + [60]
    assert batch_plan(2, 8) == [1, 1]
    assert sum(batch_plan(513, 64)) == 513


def test_calib_data_feeds_the_gates_and_the_static_candidate(records, tiny_run, tmp_path, cli, capsys):
    out = tmp_path / "b"
    code = cli(["export", "--model", tiny_run, "--out", out, "--precision", "int8", "--max-batch", "8",
                "--calib-data", records])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "GENERATED" not in err and "2 records skipped" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"] == f"records:{records} n=20 (calibration 20)"
    for precision in ("fp32", "int8"):
        for graph, entry in manifest["parity"][precision].items():
            if graph == "batch_invariance":  # its own mixed records, not the gate's
                assert entry["passed"]
                continue
            assert entry["calibration"] == f"records:{records}" and entry["n"] == 20, (precision, graph)
            assert entry["batches"] == [1, 3, 8]
    report = manifest["parity"]["int8"]
    for graph in ("image_encoder", "text_encoder", "head_informative"):
        assert STATIC_CANDIDATE in report[graph]["candidates"]
    e2e = report["end_to_end:informative"]
    lo, hi = e2e["top1_interval"]
    assert 0.0 <= lo <= e2e["top1_agreement"] <= hi <= 1.0 and lo < 0.9  # n=20: a wide interval


def _run_and_tokenizer(run_dir: Path):
    from crisis_tool.clip_loader import load_recorded_clip
    from crisis_tool.run_dir import load_run
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    run = load_run(run_dir)
    clip = load_recorded_clip(run.config["clip"], run_dir)
    return run, ClipTokenizer(clip.vocab_path, context_length=clip.context_length)


def test_crisismmd_root_with_task_and_split(tiny_run, crisismmd_root):
    run, tok = _run_and_tokenizer(tiny_run)
    root = crisismmd_root
    spec = CalibrationSpec(data=root, task="informative", split="dev", limit=5)
    data = load_gate_data(spec, preprocess=run.config["preprocess"], tokenizer=tok, text_source="tweet",
                          max_batch=4)
    assert data.n == 5 and [p.shape[0] for p, _ in data.batches] == [1, 3, 1]
    assert data.source == f"crisismmd:{root} task=informative split=dev (settingA)"
    pixels, ids = data.batches[1]
    assert pixels.shape == (3, 3, 224, 224) and pixels.dtype == np.float32 and ids.dtype == np.int64
    assert (ids[:, 0] == tok.sot_token_id).all()


@pytest.mark.parametrize(("spec", "message"), [
    (CalibrationSpec(task="informative", split="dev"), "pass --calib-data too"),
    (CalibrationSpec(data=Path("."), task="informative"), "needs both --task and --split"),
    (CalibrationSpec(data=Path("/nonexistent/x.jsonl")), "not found"),
    (CalibrationSpec(data=Path("."), limit=0), "--calib-n must be >= 1"),
    (CalibrationSpec(data=Path("."), task="informative", split="val"), "--split 'val': choose from train"),
    (CalibrationSpec(data=Path("."), task="flooding", split="dev"), "unknown task 'flooding'"),
])
def test_inconsistent_calibration_options_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        spec.check()


def test_without_calib_data_the_export_says_generated(tiny_run, tmp_path, cli, capsys):
    out = tmp_path / "g"
    assert cli(["export", "--model", tiny_run, "--out", out, "--precision", "fp16", "--max-batch", "2"]) == 0
    assert "GENERATED inputs" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"] == "generated"
    gates = {g: e for g, e in manifest["parity"]["fp32"].items() if g != "batch_invariance"}
    assert all(e["calibration"] == "generated" for e in gates.values())


def test_texts_follow_the_one_text_rule(tiny_run, tmp_path):
    """Under text source `llava`, a record without a caption is fed its cleaned tweet (the rule's fallback, as
    predict does; the old composition gave "" and skipped it); a tweet that cleans to "" is fed "" (predict still
    classifies it); a record with no text at all is skipped."""
    run, tok = _run_and_tokenizer(tiny_run)
    Image.new("RGB", (32, 24), (120, 30, 200)).save(tmp_path / "a.jpg")
    rows = [{"id": "1", "text": "RT @user Flooding on Main St #Harvey https://t.co/abc", "image": "a.jpg"},
            {"id": "2", "text": "https://t.co/only", "image": "a.jpg"},
            {"id": "3", "text": "  ", "image": "a.jpg"},
            {"id": "4", "text": "ignored", "llava_text": "A flooded street with cars.", "image": "a.jpg"}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_gate_data(CalibrationSpec(data=tmp_path / "r.jsonl"), preprocess=run.config["preprocess"],
                          tokenizer=tok, text_source="llava", max_batch=8)
    assert data.n == 3 and data.skipped == 1
    texts = [record_text(r["text"], r.get("llava_text"), "llava").text for r in rows if r["id"] != "3"]
    assert texts[0] and texts[1] == "" and texts[2] == "A flooded street with cars."
    got = [ids for _, batch in data.batches for ids in batch]
    for ids, text in zip(got, texts, strict=True):
        want = tok.tokenize([text], trim=False)[0]
        np.testing.assert_array_equal(ids, want[: len(ids)])
        assert not want[len(ids):].any()  # only padding was trimmed


def test_manifest_records_the_calibration_source(tiny_int8_bundle, tmp_path, cli, capsys):
    """The top-level `calibration` field: parsed as a string, optional (older bundles have none), and covered by
    the manifest digest like every other field."""
    data = read_manifest_json(tiny_int8_bundle)
    assert data["calibration"] == "generated"  # the tiny bundle was exported without --calib-data
    assert Manifest.from_dict(data).calibration == "generated"
    older = {k: v for k, v in data.items() if k != "calibration"}
    parsed = Manifest.from_dict(older)
    assert parsed.calibration is None and "calibration" not in parsed.to_dict()
    with pytest.raises(BundleError, match="manifest field 'calibration' must be str, not a list"):
        Manifest.from_dict({**data, "calibration": ["records:x"]})
    copy = tmp_path / "b"
    import shutil

    shutil.copytree(tiny_int8_bundle, copy)
    (copy / "manifest.json").write_text(json.dumps({**data, "calibration": "records:real.jsonl n=512"}))
    assert cli(["verify", copy]) != 0
    assert "was altered" in capsys.readouterr().err
