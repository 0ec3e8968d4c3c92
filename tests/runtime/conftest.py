"""Fixtures for the runtime tests: the real CrisisMMD split TSVs (optional) and open_clip's BPE vocab."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CRISISMMD_REAL = REPO_ROOT.parent / "shared" / "data" / "crisismmd_real"


def read_tweet_texts(root: Path) -> list[str]:
    """Every distinct tweet_text of the settingA TSVs (quoting disabled: tweets hold bare quotes)."""
    texts: set[str] = set()
    for path in sorted((root / "settingA").glob("*.tsv")):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            column = next(reader).index("tweet_text")
            texts.update(row[column] for row in reader)
    return sorted(texts)


@pytest.fixture(scope="session")
def real_tweets() -> list[str]:
    if not (CRISISMMD_REAL / "settingA").is_dir():
        pytest.skip(f"real CrisisMMD TSVs not found at {CRISISMMD_REAL}")
    texts = read_tweet_texts(CRISISMMD_REAL)
    if not texts:
        pytest.skip(f"no tweet_text rows under {CRISISMMD_REAL}")
    return texts


@pytest.fixture(scope="session")
def bpe_vocab_path() -> Path:
    """open_clip's bundled vocab (the same file the toolkit ships in bundles)."""
    tokenizer = pytest.importorskip("open_clip.tokenizer")
    return Path(tokenizer.default_bpe())


# --------------------------------------------------------------------------- bundles for predictor tests
TINY_LABELS = ["little_or_no_damage", "mild_damage", "severe_damage"]


def _export_tiny_bundle(tmp: Path) -> Path:
    """A crisis-tiny run dir (random CLIP, random head) exported with `crisis-tool export`."""
    torch = pytest.importorskip("torch")
    from crisis_tool.cli import run
    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    warnings.filterwarnings("ignore", message="CLIP encoders use RANDOM weights")
    clip = load_clip("crisis-tiny", "none")
    cfg = HeadConfig(num_classes=len(TINY_LABELS), clip_embed_dim=clip.embed_dim, d_repr=64, d_proj=32)
    torch.manual_seed(0)
    head = build_head(cfg).eval()
    config = {
        "task": "damage", "labels": TINY_LABELS, "text_source": "tweet", "head": cfg.to_dict(),
        "clip": clip.describe(), "preprocess": clip.preprocess.to_dict(),
    }
    run_dir = tmp / "run"
    save_run(run_dir, head, config, {})
    bundle = tmp / "bundle"
    code = run(["export", "--model", str(run_dir), "--out", str(bundle)])
    if code != 0 or not (bundle / "manifest.json").is_file():
        raise RuntimeError(f"crisis-tool export failed with exit code {code}")
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported crisis-tiny bundle, built once per session."""
    return _export_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))
