"""`crisis-tool reproduce` end to end on synthetic CrisisMMD-format data with the tiny CLIP config."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from crisis_tool.cli import run
from crisis_tool.data.synthetic import make_demo_data
from crisis_tool.reproduce import CONFIGURATIONS


def test_reproduce_writes_table_json_and_chart(tmp_path: Path, capsys) -> None:
    data = make_demo_data(tmp_path / "data", n_train=60, n_dev=24, n_test=24, seed=4, tasks=("damage",))
    out = tmp_path / "results"
    code = run(["reproduce", "--data", str(data), "--out", str(out), "--tasks", "damage", "--seeds", "2",
                "--llava-file", str(data / "llava.jsonl"), "--clip-model", "crisis-tiny", "--pretrained", "none",
                "--optimizer", "adamw", "--lr", "3e-3", "--epochs", "12", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["tasks"]["damage"]["rows"]
    assert list(rows) == [c.name for c in CONFIGURATIONS]
    for row in rows.values():
        for metric in ("accuracy", "macro_f1", "weighted_f1"):
            assert 0.0 <= row[metric]["mean"] <= 1.0 and row[metric]["std"] >= 0.0
    # The image colour encodes the class, so the image-only baseline must learn it.
    assert rows["image-only"]["accuracy"]["mean"] >= 0.8
    # Feature caches: one image store and one text store for the shared encoder.
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/*")) == ["image", "text"]
    md = (out / "results.md").read_text()
    assert md.count("| damage (test) |") == len(CONFIGURATIONS) and "±" in md
    with Image.open(out / "results.png") as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
