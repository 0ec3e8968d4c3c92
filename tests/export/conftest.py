"""Export fixtures: a small synthetic CrisisMMD root for calibration data (the tiny run and bundle are shared,
in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def crisismmd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CrisisMMD root (informative task; 4 train, 6 dev, 4 test records)."""
    from crisis_tool.data.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("crisismmd") / "CrisisMMD_v2.0", n_train=4, n_dev=6, n_test=4,
                          tasks=("informative",))
