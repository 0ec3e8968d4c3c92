"""Fixtures for the runtime tests: the real CrisisMMD tweets (optional) and open_clip's BPE vocab (the tiny bundle
is shared, in tests/conftest.py)."""

from __future__ import annotations

import csv
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
