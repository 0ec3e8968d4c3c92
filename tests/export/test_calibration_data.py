"""Real calibration and gate data: `--calib-data` records feed the gates (n recorded, with the top-1 interval)
and the static Q/DQ int8 candidate; a CrisisMMD root with a task and split works the same; without data the
export says so on stderr and records "generated"; unusable records are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.export.calibration import CalibrationSpec, batch_plan
from crisis_tool.export.int8_candidates import STATIC_CANDIDATE
from crisis_tool.runtime.errors import UsageError


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
    for precision in ("fp32", "int8"):
        for graph, entry in manifest["parity"][precision].items():
            assert entry["calibration"] == f"records:{records}" and entry["n"] == 20, (precision, graph)
            assert entry["batches"] == [1, 3, 8]
    report = manifest["parity"]["int8"]
    for graph in ("image_encoder", "text_encoder", "head"):
        assert STATIC_CANDIDATE in report[graph]["candidates"]
    lo, hi = report["end_to_end"]["top1_interval"]
    assert 0.0 <= lo <= report["end_to_end"]["top1_agreement"] <= hi <= 1.0 and lo < 0.9  # n=20: a wide interval


def test_crisismmd_root_with_task_and_split(tiny_run, tmp_path):
    from crisis_tool.data.synthetic import make_demo_data
    from crisis_tool.export.calibration import load_gate_data
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    root = make_demo_data(tmp_path / "CrisisMMD_v2.0", n_train=4, n_dev=6, n_test=4, tasks=("informative",))
    from crisis_tool.run_dir import load_run

    run = load_run(tiny_run)
    from crisis_tool.clip_loader import load_recorded_clip

    clip = load_recorded_clip(run.config["clip"], tiny_run)
    tok = ClipTokenizer(clip.vocab_path, context_length=clip.context_length)
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
])
def test_inconsistent_calibration_options_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        spec.check()


def test_without_calib_data_the_export_says_generated(tiny_run, tmp_path, cli, capsys):
    out = tmp_path / "g"
    assert cli(["export", "--model", tiny_run, "--out", out, "--precision", "fp16", "--max-batch", "2"]) == 0
    assert "GENERATED inputs" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(e["calibration"] == "generated" for e in manifest["parity"]["fp32"].values())
