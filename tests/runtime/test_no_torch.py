"""The lean runtime and `crisis-tool predict` work in a process where importing torch fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"torch", "torchvision", "open_clip", "transformers"}

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name} (lean runtime test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    """
)

CHECK = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import crisis_tool.runtime as runtime

    names = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "crisis_tool.runtime."))
    for name in names:
        importlib.import_module(name)
    for required in ("records", "writers", "predictor", "backends", "backends.onnxruntime_backend",
                     "backends.tensorrt_backend", "bundle", "tokenizer", "preprocess", "text_clean"):
        assert f"crisis_tool.runtime.{required}" in names, required
    leaked = sorted(m for m in sys.modules if m.startswith("crisis_tool.")
                    and not m.startswith("crisis_tool.runtime"))
    assert not leaked, f"runtime imported toolkit/export modules: {leaked}"
    import crisis_tool.cli
    assert "torch" not in sys.modules
    code = crisis_tool.cli.run(sys.argv[1:])
    assert "torch" not in sys.modules
    print("EXIT", code)
    """
)


def test_runtime_and_predict_without_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 40, 40)).save(image)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "storm damage", "image": "a.png"}) + "\n"
                   + json.dumps({"id": "b", "text": "", "image": "a.png"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--bundle", str(tiny_bundle), "--input", str(src), "--output", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + CHECK, *argv],
        capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EXIT 3" in proc.stdout  # record b has no text
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["error"] is None and "empty text" in rows[1]["error"]


def test_engines_from_bundle_without_torch_or_onnx(tiny_bundle: Path) -> None:
    """On a Jetson (lean install) `export --from-bundle --engine trt` needs only TensorRT: without it, exit 2
    with one line, and neither torch nor onnx is imported on the way."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: this test covers machines without it")
    script = BLOCKER.replace('"transformers"}', '"transformers", "onnx"}') + textwrap.dedent(
        """
        import sys
        from crisis_tool.cli import run
        code = run(sys.argv[1:])
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")]
        print("EXIT", code)
        """
    )
    argv = ["export", "--from-bundle", str(tiny_bundle), "--format", "trt"]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EXIT 2" in proc.stdout
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "tensorrt" in err[0] and "--from-bundle" in err[0]


def test_blocker_really_blocks_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert proc.returncode != 0 and "blocked import of torch" in proc.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1"}
