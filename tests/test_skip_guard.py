"""The skip guard (tests/skip_guard.py): a skip for missing ../shared data or Ray fails where they exist, and
stays a skip where they do not. Each case runs pytest in a subprocess on a throwaway test file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = textwrap.dedent(
    """
    import pytest

    SHARED = {shared!r}

    def test_needs_real_splits():
        pytest.skip(f"real CrisisMMD split files not found at {{SHARED}}/data/crisismmd_real/settingA")

    @pytest.fixture
    def ray_fixture():
        pytest.importorskip("{ray_module}", reason="Ray is not installed (pip install 'crisis-tool[serve]')")

    def test_needs_ray(ray_fixture):
        pass

    def test_unrelated_skip():
        pytest.skip("no /dev/full")

    @pytest.mark.xfail(reason="Ray is not installed", run=False)
    def test_xfail_mentions_ray():
        pass
    """
)
MODULE_SKIP = 'import pytest\npytest.importorskip("{ray_module}", reason="Ray is not installed")\n\ndef test_x():\n' \
              "    pass\n"


def run_pytest(tmp_path: Path, source: str, shared: Path, ray_module: str, **env: str) -> str:
    (tmp_path / "test_sample.py").write_text(source.format(shared=str(shared), ray_module=ray_module))
    environ = {**os.environ, "PYTHONPATH": str(TESTS), "CRISIS_SKIP_GUARD_SHARED": str(shared),
               "CRISIS_SKIP_GUARD_RAY_MODULE": ray_module, **env}
    if "CRISIS_ALLOW_RESOURCE_SKIPS" not in env:
        environ.pop("CRISIS_ALLOW_RESOURCE_SKIPS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_guard", "-p", "no:cacheprovider", "-v", "-rA",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def outcomes(output: str) -> dict[str, str]:
    """test name -> PASSED / SKIPPED / FAILED / ERROR / XFAIL from the -v lines ("file::name OUTCOME")."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("test_sample.py::") and " " in line:
            name, outcome = line.split("::", 1)[1].split()[:2]
            found.setdefault(name, outcome)
    return found


def test_skips_for_present_resources_fail(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "data" / "crisismmd_real" / "settingA").mkdir(parents=True)
    # "json" stands for Ray being installed: importorskip of it succeeds, so make the skip explicit
    out = run_pytest(tmp_path, SAMPLE.replace('pytest.importorskip("{ray_module}", ', 'pytest.skip('),
                     shared, "json")
    got = outcomes(out)
    assert got["test_needs_real_splits"] == "FAILED", out
    assert got["test_needs_ray"] == "ERROR", out  # skipped in its fixture: a setup error
    assert got["test_unrelated_skip"] == "SKIPPED", out
    assert got["test_xfail_mentions_ray"] == "XFAIL", out
    assert "skip_guard: skipped because ../shared data is missing, but ../shared data is present" in out
    assert "skip_guard: skipped because Ray is missing, but Ray is present" in out


def test_skips_for_absent_resources_stay_skips(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, SAMPLE, tmp_path / "no-shared", "no_such_module_for_skip_guard")
    got = outcomes(out)
    assert got["test_needs_real_splits"] == got["test_needs_ray"] == got["test_unrelated_skip"] == "SKIPPED", out


def test_module_level_skip_is_caught_too(tmp_path: Path) -> None:
    source = MODULE_SKIP.replace('pytest.importorskip("{ray_module}", ', 'pytest.skip(allow_module_level=True, ')
    out = run_pytest(tmp_path, source, tmp_path / "no-shared", "json")
    assert "skip_guard: skipped because Ray is missing" in out and " 1 error" in out, out
    out = run_pytest(tmp_path, MODULE_SKIP, tmp_path / "no-shared", "no_such_module_for_skip_guard")
    assert " 1 skipped" in out and "skip_guard" not in out, out


def test_opt_out_keeps_the_skip(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    out = run_pytest(tmp_path, SAMPLE, shared, "no_such_module_for_skip_guard", CRISIS_ALLOW_RESOURCE_SKIPS="1")
    assert outcomes(out)["test_needs_real_splits"] == "SKIPPED", out


def test_the_guard_is_registered_for_this_suite(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("skip_guard")
