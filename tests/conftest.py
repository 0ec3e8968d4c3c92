"""Shared fixtures: paths to the real CrisisMMD split files (never copied here) and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SPLITS = REPO_ROOT.parent / "shared" / "data" / "crisismmd_real" / "settingA"


@pytest.fixture(scope="session")
def real_splits() -> Path:
    """The real settingA TSVs (no images); tests that need them skip when they are absent."""
    if not REAL_SPLITS.is_dir():
        pytest.skip(f"real CrisisMMD split files not found at {REAL_SPLITS}")
    return REAL_SPLITS
