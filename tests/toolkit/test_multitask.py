"""One bundle, three answers: `train --task all` -> `export` -> `predict` on synthetic three-task data.

Every output line carries all three heads; each head's test accuracy from `predict` equals what `evaluate`
reports for that head; `--tasks` selects heads; the encoders run once per post whatever the number of heads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

TASKS = ("informative", "humanitarian", "damage")


@pytest.fixture(scope="module")
def three_task(tmp_path_factory: pytest.TempPathFactory, cli) -> dict[str, Path]:
    """Synthetic data for all three tasks, a three-head run (crisis-tiny) and its fp32 bundle."""
    root = tmp_path_factory.mktemp("three")
    data, run, bundle, cache = root / "data", root / "run", root / "bundle", root / "cache"
    assert cli(["make-demo-data", "--out", data, "--n-train", "48", "--n-dev", "24", "--n-test", "24"]) == 0
    assert cli(["train", "--data", data, "--task", "all", "--out", run, "--clip-model", "crisis-tiny",
                "--pretrained", "none", "--epochs", "4", "--optimizer", "adamw", "--lr", "3e-3",
                "--cache-dir", cache]) == 0
    assert cli(["export", "--model", run, "--out", bundle]) == 0
    return {"data": data, "run": run, "bundle": bundle, "cache": cache, "root": root}


def _split(data: Path, task: str, split: str = "test") -> Path:
    return data / "crisismmd_datasplit_settingA" / f"task_{task}_text_img_{split}.tsv"


def _gold(tsv: Path, task: str) -> dict[str, str]:
    from crisis_tool.data.crisismmd import read_split_tsv, resolve_task

    return {ex.image_id: ex.label for ex in read_split_tsv(tsv, resolve_task(task))}


def test_one_run_trains_a_calibrated_head_per_task(three_task) -> None:
    config = json.loads((three_task["run"] / "config.json").read_text())
    assert [h["task"] for h in config["heads"]] == list(TASKS)
    metrics = json.loads((three_task["run"] / "metrics.json").read_text())["tasks"]
    for task in TASKS:
        for split in ("dev", "test"):
            report = metrics[task][split]
            assert {"accuracy", "macro_f1", "weighted_f1", "ece", "ece_uncalibrated"} <= set(report)
        assert metrics[task]["calibration"]["temperature"] > 0
    manifest = json.loads((three_task["bundle"] / "manifest.json").read_text())
    heads = {h["task"]: h for h in manifest["spec"]["heads"]}
    assert list(heads) == list(TASKS) and len(heads["humanitarian"]["labels"]) == 6
    assert {f for f in manifest["files"] if f.endswith(".onnx")} == {
        "image_encoder.onnx", "text_encoder.onnx", *(f"head_{t}.onnx" for t in TASKS)}  # encoders once
    for task in TASKS:
        assert heads[task]["temperature"] == next(h for h in config["heads"] if h["task"] == task)["temperature"]
        assert manifest["parity"]["fp32"][f"end_to_end:{task}"]["passed"]


def test_predict_gives_every_head_and_matches_evaluate(three_task, cli, tmp_path) -> None:
    data, bundle = three_task["data"], three_task["bundle"]
    report_path = tmp_path / "eval.json"
    assert cli(["evaluate", "--model", three_task["run"], "--data", data, "--split", "test", "--json", report_path,
                "--cache-dir", three_task["cache"]]) == 0
    evaluated = json.loads(report_path.read_text())["tasks"]
    for task in TASKS:
        out = tmp_path / f"{task}.jsonl"
        assert cli(["predict", "--bundle", bundle, "--input", _split(data, task), "--image-root", data,
                    "--output", out, "--backend", "onnxruntime"]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        gold = _gold(_split(data, task), task)
        assert len(lines) == len(gold)
        for line in lines:
            assert set(line["tasks"]) == set(TASKS) and line["error"] is None
            assert "label" not in line  # a three-head bundle has no single top-level answer
            for answer in line["tasks"].values():
                assert abs(sum(answer["probs"].values()) - 1) < 1e-5
                assert answer["confidence"] == max(answer["probs"].values())
                assert answer["label"] == max(answer["probs"], key=answer["probs"].get)
            assert line["needs_review"] == any(a["needs_review"] for a in line["tasks"].values())
        accuracy = sum(line["tasks"][task]["label"] == gold[line["id"]] for line in lines) / len(lines)
        assert accuracy == pytest.approx(evaluated[task]["accuracy"], abs=1e-12), task


def test_tasks_selects_heads_and_unknown_is_one_line(three_task, cli, tmp_path, capsys) -> None:
    data, bundle = three_task["data"], three_task["bundle"]
    out = tmp_path / "two.jsonl"
    assert cli(["predict", "--bundle", bundle, "--input", _split(data, "damage"), "--image-root", data,
                "--output", out, "--tasks", "damage,informative", "--backend", "onnxruntime"]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert list(first["tasks"]) == ["damage", "informative"]
    capsys.readouterr()
    assert cli(["predict", "--bundle", bundle, "--input", _split(data, "damage"), "--image-root", data,
                "--output", tmp_path / "x.jsonl", "--tasks", "flooding"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flooding" in err[0] and "informative, humanitarian, damage" in err[0]
    assert not (tmp_path / "x.jsonl").exists()


def test_encoders_run_once_per_post_for_three_heads(three_task) -> None:
    """The backend's encoders see each post once; every head runs on the same embeddings."""
    from crisis_tool.runtime.bundle import Bundle
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.records import read_records

    calls: dict[str, int] = {"image": 0, "text": 0}
    heads: list[str] = []
    predictor = Predictor.from_bundle(three_task["bundle"], backend="onnxruntime", batch_size=8)
    inner = predictor.backend

    class Counting:
        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(inner, name)

        def encode_image(self, pixels):  # noqa: ANN001, ANN201
            calls["image"] += len(pixels)
            return inner.encode_image(pixels)

        def encode_text(self, ids):  # noqa: ANN001, ANN201
            calls["text"] += len(ids)
            return inner.encode_text(ids)

        def run_head(self, image, text, task=None):  # noqa: ANN001, ANN201
            heads.append(task)
            return inner.run_head(image, text, task)

    predictor.backend = Counting()  # type: ignore[assignment]
    records = [r for r in read_records(str(_split(three_task["data"], "damage")), three_task["data"])][:16]
    with predictor:
        predictions = predictor.predict(records)
    images = {r.image for r in records}
    texts = {r.text for r in records}
    assert calls["image"] == len(images) and calls["text"] <= len(texts)
    assert sorted(set(heads)) == sorted(TASKS) and len(heads) == 3 * 2  # 16 posts in 2 batches of 8
    assert all(set(p.tasks) == set(TASKS) for p in predictions)
    assert Bundle.load(three_task["bundle"]).spec.tasks == TASKS


def test_one_task_run_keeps_the_top_level_answer(tiny_bundle: Path, tmp_path: Path, cli) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "a.jpg")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "roof torn off", "image": "a.jpg"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli(["predict", "--bundle", tiny_bundle, "--input", src, "--output", out, "--backend",
                "onnxruntime"]) == 0
    line = json.loads(out.read_text())
    assert list(line["tasks"]) == ["damage"]
    assert line["label"] == line["tasks"]["damage"]["label"]
    assert line["probs"] == line["tasks"]["damage"]["probs"] and line["group"] in ("a", None)


def test_train_task_list_and_unknown_task(cli, tmp_path, capsys) -> None:
    from crisis_tool.data.crisismmd import resolve_tasks

    assert [t.name for t in resolve_tasks("damage,task1")] == ["damage", "informative"]
    assert [t.name for t in resolve_tasks("all")] == list(TASKS)
    assert cli(["train", "--data", tmp_path, "--task", "damage,flooding", "--out", tmp_path / "r"]) == 2
    assert "flooding" in capsys.readouterr().err


def test_gold_reader_matches_the_tsv(three_task) -> None:
    tsv = _split(three_task["data"], "informative")
    with tsv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(_gold(tsv, "informative")) == len(rows)
