"""Shared fixtures: a tiny trained-looking run dir (crisis-tiny CLIP, random weights) and its exported bundle."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

TINY_MAX_BATCH = 8


def run_cli(argv: list[str]) -> int:
    """Run `crisis-tool` in-process and return its exit code."""
    from crisis_tool import cli

    return cli.run([str(a) for a in argv])


def make_run_dir(path: Path, head_type: str = "guided-diff", seed: int = 0) -> Path:
    """Save a crisis-tiny head with non-trivial BatchNorm statistics as a run dir of the spec'd schema."""
    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("crisis-tiny", "none")
    cfg = HeadConfig(num_classes=2, clip_embed_dim=clip.embed_dim, head=head_type, d_repr=64, d_proj=32, num_heads=4)
    torch.manual_seed(seed)
    head = build_head(cfg)
    head.train()
    with torch.no_grad():
        for _ in range(4):
            head(torch.randn(16, clip.embed_dim) * 0.5 + 0.2, torch.randn(16, clip.embed_dim) * 0.5 - 0.1)
    head.eval()
    config = {
        "task": "informative",
        "labels": ["not_informative", "informative"],
        "text_source": "tweet",
        "head": cfg.to_dict(),
        "clip": clip.describe(),
        "preprocess": clip.preprocess.to_dict(),
    }
    save_run(path, head, config, {"dev": {"accuracy": 0.5}})
    return path


@pytest.fixture(scope="session")
def cli():
    """`crisis-tool` in-process: cli(argv) -> exit code."""
    return run_cli


@pytest.fixture(scope="session")
def make_run():
    """make_run(path, head_type="guided-diff") -> a tiny run dir."""
    return make_run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """fp32 + int8 bundle of the tiny run, exported once through the CLI (max batch 8)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-int8"
    code = run_cli(["export", "--model", tiny_run, "--out", out, "--precision", "int8",
                    "--max-batch", TINY_MAX_BATCH])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def crisismmd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CrisisMMD root (informative task; 4 train, 6 dev, 4 test records)."""
    from crisis_tool.data.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("crisismmd") / "CrisisMMD_v2.0", n_train=4, n_dev=6, n_test=4,
                          tasks=("informative",))
