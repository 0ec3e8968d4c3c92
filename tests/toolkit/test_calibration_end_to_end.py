"""Calibration end to end on synthetic data: an overconfident head (trained long on 30% label noise) gets a
temperature above 1 fitted on its dev split, its test ECE drops, `evaluate --json` reports per head
`temperature`, `ece` (calibrated) and `ece_uncalibrated`, and `evaluate --plot` draws its reliability diagram."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch")

OTHER = {"informative": "not_informative", "not_informative": "informative"}


def _add_label_noise(data: Path, rate: float = 0.3, seed: int = 0) -> None:
    rng = random.Random(seed)
    for split in ("train", "dev", "test"):
        tsv = data / "crisismmd_datasplit_settingA" / f"task_informative_text_img_{split}.tsv"
        with tsv.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            fields, rows = reader.fieldnames, list(reader)
        for row in rows:
            if rng.random() < rate:
                row["label"] = OTHER[row["label"]]
        with tsv.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def test_an_overconfident_head_is_calibrated(tmp_path: Path, cli) -> None:
    data, run, cache = tmp_path / "data", tmp_path / "run", tmp_path / "cache"
    assert cli(["make-demo-data", "--out", data, "--n-train", "96", "--n-dev", "64", "--n-test", "64"]) == 0
    _add_label_noise(data)
    assert cli(["train", "--data", data, "--task", "informative", "--out", run, "--clip-model", "crisis-tiny",
                "--pretrained", "none", "--epochs", "80", "--early-stop", "80", "--optimizer", "adamw", "--lr",
                "1e-2", "--cache-dir", cache]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["tasks"]["informative"]
    assert metrics["calibration"]["temperature"] > 1.5  # it was overconfident: the fit softens it
    test = metrics["test"]
    assert test["ece"] < test["ece_uncalibrated"] and test["nll"] < test["nll_uncalibrated"]
    report = tmp_path / "eval.json"
    assert cli(["evaluate", "--model", run, "--data", data, "--split", "test", "--json", report, "--plot",
                "--cache-dir", cache]) == 0
    head = json.loads(report.read_text())["tasks"]["informative"]
    assert head["temperature"] == pytest.approx(metrics["calibration"]["temperature"])
    assert head["ece"] == pytest.approx(test["ece"]) and head["ece_uncalibrated"] == pytest.approx(
        test["ece_uncalibrated"])
    assert 0 < head["review"]["share_flagged"] <= 1
    with Image.open(head["reliability_png"]) as png:
        assert png.size[0] > 300 and png.size[1] > 200
