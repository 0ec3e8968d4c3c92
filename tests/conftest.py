"""Shared fixtures: the real CrisisMMD split files (never copied here), offline settings, and the one tiny run
and bundle (crisis-tiny CLIP, random weights) that every test folder uses."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A run started with SIGINT ignored (a background job of a non-interactive shell) passes that on to every child
# process, and the Ctrl-C tests would then send a signal nobody hears: give the children Python's default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
pytest_plugins = ["skip_guard"]  # a skip for missing ../shared data or Ray fails where they exist
REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SPLITS = REPO_ROOT.parent / "shared" / "data" / "crisismmd_real" / "settingA"


@pytest.fixture(scope="session")
def real_splits() -> Path:
    """The real settingA TSVs (no images); tests that need them skip when they are absent."""
    if not REAL_SPLITS.is_dir():
        pytest.skip(f"real CrisisMMD split files not found at {REAL_SPLITS}")
    return REAL_SPLITS


# --------------------------------------------------------------------------- the one tiny run and bundle
TINY_MAX_BATCH = 8
TINY_LABELS = {"informative": ["not_informative", "informative"],
               "damage": ["little_or_no_damage", "mild_damage", "severe_damage"]}


def run_cli(argv: list[Any]) -> int:
    """Run `crisis-tool` in-process and return its exit code."""
    from crisis_tool import cli

    return cli.run([str(a) for a in argv])


def make_run_dir(path: Path, head_type: str = "guided-diff", seed: int = 0, task: str = "informative") -> Path:
    """A crisis-tiny run dir (random CLIP, random head with non-trivial BatchNorm statistics)."""
    torch = pytest.importorskip("torch")
    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    labels = TINY_LABELS[task]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("crisis-tiny", "none")
    cfg = HeadConfig(num_classes=len(labels), clip_embed_dim=clip.embed_dim, head=head_type, d_repr=64, d_proj=32,
                     num_heads=4)
    torch.manual_seed(seed)
    head = build_head(cfg)
    head.train()
    with torch.no_grad():
        for _ in range(4):
            head(torch.randn(16, clip.embed_dim) * 0.5 + 0.2, torch.randn(16, clip.embed_dim) * 0.5 - 0.1)
    head.eval()
    config = {"task": task, "labels": labels, "text_source": "tweet", "head": cfg.to_dict(),
              "clip": clip.describe(), "preprocess": clip.preprocess.to_dict()}
    save_run(path, head, config, {"dev": {"accuracy": 0.5}})
    return path


@pytest.fixture(scope="session")
def cli():
    """`crisis-tool` in-process: cli(argv) -> exit code."""
    return run_cli


@pytest.fixture(scope="session")
def make_run():
    """make_run(path, head_type="guided-diff", seed=0, task="informative") -> a tiny run dir."""
    return make_run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-class (informative) tiny run dir."""
    return make_run_dir(tmp_path_factory.mktemp("runs") / "tiny")


def export_tiny(run_dir: Path, out: Path, *args: Any) -> Path:
    """`crisis-tool export` of a tiny run dir to `out` (extra CLI args pass through); RuntimeError on failure."""
    code = run_cli(["export", "--model", run_dir, "--out", out, *args])
    if code != 0 or not (out / "manifest.json").is_file():
        raise RuntimeError(f"crisis-tool export of {run_dir} failed with exit code {code}")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class (damage) fp32 bundle: what the runtime, serve and toolkit tests predict with."""
    root = tmp_path_factory.mktemp("tiny_bundle")
    return export_tiny(make_run_dir(root / "run", task="damage"), root / "bundle")


@pytest.fixture(scope="session")
def tiny_int8_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """The 2-class tiny run with fp32 + int8 graphs (int8 by default), max batch 8: the export tests' bundle."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-int8"
    return export_tiny(tiny_run, out, "--precision", "int8", "--max-batch", TINY_MAX_BATCH)
