"""Warm start: onnxruntime's optimised models and OpenVINO's compiled blobs land in the user cache, keyed by
content; the next load reads them and answers exactly as before; a damaged entry is rebuilt; `off` writes
nothing."""

from __future__ import annotations

import numpy as np
import pytest

from crisis_tool.runtime.backends import create_backend
from crisis_tool.runtime.backends.user_cache import cache_root, file_sha256
from crisis_tool.runtime.batch_invariance import mixed_inputs
from crisis_tool.runtime.bundle import Bundle

CPU = ["CPUExecutionProvider"]


def _outputs(backend, bundle: Bundle) -> tuple[np.ndarray, ...]:
    mixed = mixed_inputs(bundle.dims, n=4)
    image = backend.encode_image(mixed.pixel_values)
    text = backend.encode_text(mixed.input_ids[:, :20])
    return (image, text, *backend.run_head(image, text))


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", "off")
    assert cache_root() is None
    monkeypatch.delenv("CRISIS_TOOL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "crisis-tool"


def test_onnxruntime_saves_then_reuses_optimised_models(tiny_bundle, monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", str(tmp_path))
    bundle = Bundle.load(tiny_bundle)
    cold = create_backend("onnxruntime", bundle, precision="fp32", providers=CPU)
    saved = sorted((tmp_path / "onnxruntime").glob("*.onnx"))
    digests = {file_sha256(p)[:32] for p in cold.paths.values()}
    assert len(saved) == len(digests) and {p.name[:32] for p in saved} == digests  # keyed by the graph's sha256
    assert not list((tmp_path / "onnxruntime").glob(".*partial"))
    stamps = {p: p.stat().st_mtime_ns for p in saved}
    warm = create_backend("onnxruntime", bundle, precision="fp32", providers=CPU)
    level = next(iter(warm.sessions.values())).get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the saved, already optimised model
    assert {p: p.stat().st_mtime_ns for p in saved} == stamps
    for a, b in zip(_outputs(cold, bundle), _outputs(warm, bundle), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_cache_entry_is_rebuilt(tiny_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", str(tmp_path))
    bundle = Bundle.load(tiny_bundle)
    reference = _outputs(create_backend("onnxruntime", bundle, precision="fp32", providers=CPU), bundle)
    for path in (tmp_path / "onnxruntime").glob("*.onnx"):
        path.write_bytes(b"not a model")
    again = create_backend("onnxruntime", bundle, precision="fp32", providers=CPU)
    for a, b in zip(reference, _outputs(again, bundle), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(p.stat().st_size > 100 for p in (tmp_path / "onnxruntime").glob("*.onnx"))


def test_cache_off_writes_nothing(tiny_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    create_backend("onnxruntime", Bundle.load(tiny_bundle), precision="fp32", providers=CPU)
    assert not list(tmp_path.iterdir())


def test_openvino_compiles_into_the_cache(tiny_bundle, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", str(tmp_path))
    bundle = Bundle.load(tiny_bundle)
    cold = create_backend("openvino", bundle, precision="fp32")
    blobs = sorted((tmp_path / "openvino").glob("*.blob"))
    assert blobs
    warm = create_backend("openvino", bundle, precision="fp32")
    assert sorted((tmp_path / "openvino").glob("*.blob")) == blobs
    for a, b in zip(_outputs(cold, bundle), _outputs(warm, bundle), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_measure_start_runs_cold_then_warm_in_fresh_processes(tiny_bundle, monkeypatch, tmp_path):
    from crisis_tool.runtime.bench.start_time import measure_start

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))  # the user's cache must stay untouched
    monkeypatch.delenv("CRISIS_TOOL_CACHE_DIR", raising=False)
    result = measure_start(tiny_bundle, "onnxruntime", "fp32", timeout=300)
    assert result["cold_s"] > 0 and result["warm_s"] > 0 and result["cold_load_s"] <= result["cold_s"]
    assert result["chosen"].startswith("onnxruntime (fp32")
    assert not list((tmp_path / "user").rglob("*.onnx")), list((tmp_path / "user").rglob("*"))
