"""pytest plugin: a test that skips because `../shared` data or Ray is missing fails where they are present.

A skip is right on a machine without the real CrisisMMD files or without Ray; on a machine that has them the
same skip means the test silently stopped running (a moved folder, a broken Ray install, a typo in a path).
For every skipped test (or module) whose reason says a resource is missing, the plugin checks the resource
itself; if it is there, the skip becomes a failure naming the resource. Always on (CI included); set
CRISIS_ALLOW_RESOURCE_SKIPS=1 to keep such skips on a machine where the resource is known to be unusable.

Registered by `pytest_plugins = ["skip_guard"]` in tests/conftest.py. CRISIS_SKIP_GUARD_SHARED and
CRISIS_SKIP_GUARD_RAY_MODULE point the checks elsewhere (the plugin's own tests use them).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"  # the repo's ../shared, as the tests locate it
MISSING = re.compile(r"not found|not installed|could not import|no module named|missing|absent|\bno \w+ rows under",
                     re.IGNORECASE)


def _shared_dir() -> Path:
    return Path(os.environ.get("CRISIS_SKIP_GUARD_SHARED", SHARED))


def _shared_present(reason: str) -> bool:
    shared = _shared_dir()
    named = [Path(m) for m in re.findall(r"(/[^\s:;,)'\"]+)", reason)]
    inside = [p for p in named if p.is_relative_to(shared)] or [shared / "data"]
    return any(p.exists() for p in inside)


def _ray_present(reason: str) -> bool:
    return importlib.util.find_spec(os.environ.get("CRISIS_SKIP_GUARD_RAY_MODULE", "ray")) is not None


@dataclass(frozen=True)
class Resource:
    name: str
    mentioned: re.Pattern[str]
    present: Callable[[str], bool]


RESOURCES = (
    Resource("../shared data", re.compile(r"crisismmd|/shared/|\bshared data\b|\bphotos\b", re.IGNORECASE),
             _shared_present),
    Resource("Ray", re.compile(r"\bray\b", re.IGNORECASE), _ray_present),
)


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason of a plain skip (not an xfail), or None."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def unjustified(reason: str) -> Resource | None:
    """The resource a skip says is missing while it is present here, if any."""
    if not MISSING.search(reason):
        return None
    for resource in RESOURCES:
        if resource.mentioned.search(reason) and resource.present(reason):
            return resource
    return None


def _fail(report: pytest.CollectReport | pytest.TestReport) -> None:
    if os.environ.get("CRISIS_ALLOW_RESOURCE_SKIPS") == "1":
        return
    reason = skip_reason(report)
    resource = unjustified(reason) if reason else None
    if resource is None:
        return
    report.outcome = "failed"
    report.longrepr = (f"skip_guard: skipped because {resource.name} is missing, but {resource.name} is present "
                       f"on this machine ({reason}); fix the test or the resource lookup "
                       "(CRISIS_ALLOW_RESOURCE_SKIPS=1 to accept)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    _fail(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail(outcome.get_result())
