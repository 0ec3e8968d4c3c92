"""ONE full-size export: ViT-B-32 with random weights (`--pretrained none`), fp32 + int8, parity at batch 1/3/8."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from crisis_tool.export.int8_candidates import ROWWISE_CANDIDATE, UNCALIBRATED_CANDIDATES


@pytest.mark.slow
def test_vitb32_random_weights_export(tmp_path: Path, cli, capsys):
    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("ViT-B-32", "none")
    torch.manual_seed(0)
    cfg = HeadConfig(num_classes=2, clip_embed_dim=clip.embed_dim, head="guided-diff")
    head = build_head(cfg).eval()
    config = {"task": "informative", "labels": ["not_informative", "informative"], "text_source": "tweet",
              "head": cfg.to_dict(), "clip": clip.describe(), "preprocess": clip.preprocess.to_dict()}
    save_run(tmp_path / "run", head, config, {})
    del clip

    out = tmp_path / "bundle"
    code = cli(["export", "--model", tmp_path / "run", "--out", out, "--precision", "int8", "--max-batch", "8"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    fp32, int8 = manifest["parity"]["fp32"], manifest["parity"]["int8"]
    print(json.dumps({p: {c: {k: e.get(k) for k in ("max_abs", "min_cosine", "top1_agreement", "weight_type")}
                          for c, e in r.items()} for p, r in manifest["parity"].items()}, indent=1))
    assert fp32["end_to_end:informative"]["batches"] == [1, 3, 8]
    assert all(e["passed"] for e in fp32.values())
    assert fp32["end_to_end:informative"]["max_abs"] <= 1e-4 and fp32["end_to_end:informative"]["top1_agreement"] == 1.0
    assert fp32["image_encoder"]["min_cosine"] > 0.99999 and fp32["text_encoder"]["min_cosine"] > 0.99999
    assert manifest["validated"]["int8"] is True
    image = int8["image_encoder"]
    assert image["weight_type"] in UNCALIBRATED_CANDIDATES and image["chosen"] == image["weight_type"]  # no calib
    assert ROWWISE_CANDIDATE in image["candidates"] and image["candidates"][image["chosen"]]["seconds"] > 0
    assert image["candidates"][image["chosen"]]["batch_invariant"] is True
    assert manifest["calibration"] == "generated"
    assert int8["image_encoder"]["min_cosine"] >= 0.999 and int8["end_to_end:informative"]["top1_agreement"] >= 0.99
    assert cli(["verify", out]) == 0
