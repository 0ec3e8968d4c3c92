"""Fixtures for the Ray tests: one local Ray per module (the tiny bundle is shared, in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest
from serve_helpers import RAY_MISSING

from crisis_tool.runtime.serve.cluster import LOCAL_ONLY_ENV

os.environ.setdefault(LOCAL_ONLY_ENV, "0")  # read when ray is first imported: the test Ray binds 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (4 logical CPUs on loopback) for the module, shut down at its end."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    from crisis_tool.runtime.serve.cluster import ray_session

    with ray_session(None, num_cpus=4):
        yield ray
