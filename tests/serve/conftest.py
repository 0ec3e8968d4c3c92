"""Fixtures for the Ray tests: the runtime tests' tiny bundle, generated images, one local Ray per module."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from serve_helpers import RAY_MISSING

from crisis_tool.runtime.serve.cluster import LOCAL_ONLY_ENV

os.environ.setdefault(LOCAL_ONLY_ENV, "0")  # read when ray is first imported: the test Ray binds 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _runtime_fixtures():
    """tests/runtime/conftest.py as a module: its `tiny_bundle` fixture is reused here, not copied."""
    spec = importlib.util.spec_from_file_location("runtime_test_fixtures",
                                                  Path(__file__).parents[1] / "runtime" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_bundle = _runtime_fixtures().tiny_bundle


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (4 logical CPUs on loopback) for the module, shut down at its end."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    from crisis_tool.runtime.serve.cluster import ray_session

    with ray_session(None, num_cpus=4):
        yield ray
