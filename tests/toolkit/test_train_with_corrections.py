"""`train --labels corrections.jsonl`: human labels replace the split labels by id and task, the counts are
reported, and the retrained head answers the corrected posts with the human labels (issue 20).

Synthetic data: 20 training posts of the informative task get a wrong label in the split file (label noise);
the reviewer's corrections give their true labels back. The dev split is made a copy of the training split, so
early stopping keeps the head that fits the (corrected or not) labels best: the noisy run then answers the 20
posts with the noisy labels and the corrected run with the human ones, which shows the labels came through.
The second run reuses the feature cache.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

FLIPS = 20
TRAIN_ARGS = ["--task", "informative", "--clip-model", "crisis-tiny", "--pretrained", "none", "--epochs", "120",
              "--early-stop", "120", "--optimizer", "adamw", "--lr", "3e-3", "--batch-size", "16"]


def _flip_train_labels(data: Path) -> list[dict[str, str]]:
    """Give FLIPS training rows the other informative label; return [{id, true, noisy}]."""
    tsv = data / "crisismmd_datasplit_settingA" / "task_informative_text_img_train.tsv"
    with tsv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        fields, rows = reader.fieldnames, list(reader)
    other = {"informative": "not_informative", "not_informative": "informative"}
    flipped = []
    for row in rows[:FLIPS]:
        true = row["label"]
        row["label"] = row["label_text"] = row["label_image"] = other[true]
        flipped.append({"id": row["image_id"], "true": true, "noisy": other[true]})
    for split in ("train", "dev"):  # dev = train: early stopping rewards fitting the labels given
        with tsv.with_name(f"task_informative_text_img_{split}.tsv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return flipped


def _head_answers(run: Path, data: Path, cache: Path, ids: list[str]) -> dict[str, str]:
    """The run's informative head on the cached training features of `ids`."""
    from crisis_tool.clip_loader import load_recorded_clip
    from crisis_tool.data.crisismmd import load_split
    from crisis_tool.features import FeatureCache
    from crisis_tool.run_dir import load_run
    from crisis_tool.train import predict_logits

    loaded = load_run(run)
    examples = [ex for ex in load_split(data, "informative", "train") if ex.image_id in ids]
    enc = FeatureCache(cache, load_recorded_clip(loaded.config["clip"], run), log=lambda m: None).encode_split(
        data, examples, "tweet", None, loaded.labels, False)
    logits = predict_logits(loaded.heads["informative"], enc.image_embeds, enc.text_embeds)
    return {ex.image_id: loaded.labels[int(i)] for ex, i in zip(examples, np.argmax(logits, 1), strict=True)}


def test_corrections_replace_split_labels_and_retrain(tmp_path: Path, cli, capfd) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    assert cli(["make-demo-data", "--out", data, "--n-train", "48", "--n-dev", "4", "--n-test", "4"]) == 0
    flipped = _flip_train_labels(data)
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text("".join(json.dumps(
        {"id": f["id"], "task": "informative", "label": f["true"], "previous": f["noisy"],
         "time": "2026-12-06T05:30:00Z", "action": "correct", "reviewer": "test"}) + "\n" for f in flipped))
    assert cli(["train", "--data", data, "--out", tmp_path / "noisy", "--cache-dir", cache, *TRAIN_ARGS]) == 0
    capfd.readouterr()
    assert cli(["train", "--data", data, "--out", tmp_path / "fixed", "--cache-dir", cache, *TRAIN_ARGS,
                "--labels", corrections]) == 0
    err = capfd.readouterr().err
    assert "informative: human labels: 20 used, 20 changed" in err  # a post in train and (its copy) dev: once
    assert "encoding" not in err.lower() or "0 new" in err.lower()  # features came from the cache
    ids = [f["id"] for f in flipped]
    fixed = _head_answers(tmp_path / "fixed", data, cache, ids)
    noisy = _head_answers(tmp_path / "noisy", data, cache, ids)
    truth = {f["id"]: f["true"] for f in flipped}
    right_fixed = sum(fixed[i] == truth[i] for i in ids)
    right_noisy = sum(noisy[i] == truth[i] for i in ids)
    assert right_fixed == FLIPS and right_noisy <= FLIPS // 2, (right_fixed, right_noisy)
    config = json.loads((tmp_path / "fixed" / "config.json").read_text())
    assert config["data"]["corrections"] == [str(corrections)]


def test_a_correction_with_an_unknown_label_is_one_line(tmp_path: Path, cli, capsys) -> None:
    data = tmp_path / "data"
    assert cli(["make-demo-data", "--out", data, "--n-train", "6", "--n-dev", "4", "--n-test", "2"]) == 0
    corrections = tmp_path / "c.jsonl"
    image_id = next(iter(csv.DictReader(
        (data / "crisismmd_datasplit_settingA" / "task_informative_text_img_train.tsv").open(), delimiter="\t")))
    corrections.write_text(json.dumps({"id": image_id["image_id"], "task": "informative", "label": "on_fire",
                                       "previous": None, "time": "2026-12-06T05:30:00Z", "action": "correct"}) + "\n")
    capsys.readouterr()
    assert cli(["train", "--data", data, "--out", tmp_path / "r", "--cache-dir", tmp_path / "cache", *TRAIN_ARGS,
                "--labels", corrections]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "line 1" in err[0] and "on_fire" in err[0]
