"""The TensorRT backend's inference path (buffers, shapes, copies, H2D timing) against the shared fakes.

No GPU or TensorRT exists here. The fakes are the ones export's engine tests use (`tests/export/fake_cuda.py`,
`tests/export/fake_tensorrt.py`): the fake cudart hands out host memory as "device" pointers, so the backend's
real cudaMemcpyAsync / set_tensor_address / execute_async_v3 sequence moves real bytes, and each fake engine
runs the bundle's own fp32 ONNX graph in onnxruntime on what the copies put in its input buffers. The reference
is the same graph run directly. Copies and kernels only run when the stream is synchronised, and an async copy's
host buffer must still hold its bytes then, so a missing cudaStreamSynchronize or a host buffer released too
early fails here. What this cannot show: real engines, real GPU memory or real timings (the event timer is fixed).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError

EXPORT_TESTS = Path(__file__).parents[1] / "export"
PROFILE_MAX = {"image_encoder": 8, "text_encoder": 8, "head_damage": 6}  # tiny_bundle: one damage head
HEAD = "head_damage"


def _shared_fake(name: str) -> types.ModuleType:
    """tests/export/<name>.py as module `name` (the one instance export's tests import too)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXPORT_TESTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fake_cuda = _shared_fake("fake_cuda")
fake_tensorrt = _shared_fake("fake_tensorrt")


class Reference:
    """The bundle's fp32 graphs run directly in onnxruntime: what the fake engines must reproduce."""

    def __init__(self, bundle: Bundle) -> None:
        import onnxruntime as ort

        self.spec = bundle.spec
        self.sessions = {g: ort.InferenceSession(str(bundle.graph_path(g, "fp32")), providers=["CPUExecutionProvider"])
                         for g in self.spec.graph_names}

    def __call__(self, graph: str, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = {name: np.asarray(a, dtype=np.int64 if name == "input_ids" else np.float32)
                 for name, a in zip(self.spec.graph(graph).input_names, arrays, strict=True)}
        return self.sessions[graph].run(None, feeds)


@pytest.fixture()
def trt_bundle(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Bundle, Any]:
    """A copy of the tiny bundle with fp16 "engines" (fake: each is its fp32 ONNX graph) and the fakes installed."""
    root = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    trt = fake_tensorrt.as_module()  # state reset
    cudart = fake_tensorrt.fake_cudart()
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "engines").mkdir()
    entries = {}
    for graph, entry in manifest["graphs"]["fp32"].items():
        fake_tensorrt.RECORD["engines"].append((root / entry["file"]).read_bytes())
        rel = f"engines/{graph}.fp16.engine"
        (root / rel).write_bytes(b"fake-engine:%d" % (len(fake_tensorrt.RECORD["engines"]) - 1))
        first = Bundle.load(root, verify=False).spec.graph(graph).input_names[0]
        entries[graph] = {"file": rel, "trt_version": fake_tensorrt.__version__, "gpu_name": "NVIDIA FakeGPU 80GB",
                          "compute_capability": "9.0",
                          "profile": {first: {"min": [1], "opt": [4], "max": [PROFILE_MAX[graph]]}}}
    manifest["engines"] = {"fp16": entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    bindings = types.SimpleNamespace(runtime=cudart)
    for name, module in (("tensorrt", trt), ("cuda", types.SimpleNamespace(bindings=bindings)),
                         ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    return Bundle.load(root, verify=False), fake_tensorrt.Runtime.CUDA


def _ids(rng: np.random.Generator, batch: int, eot: int, dtype: Any = np.int64) -> np.ndarray:
    ids = rng.integers(1, eot - 1, size=(batch, 9))
    ids[:, 0], ids[:, -1] = eot - 1, eot  # sot ... eot
    return ids.astype(dtype)


def test_engines_run_with_growing_buffers_and_timed_copies(trt_bundle) -> None:
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle, memory = trt_bundle
    reference, eot = Reference(bundle), bundle.manifest.tokenizer.eot_token_id
    backend = TensorRTBackend(bundle, precision="fp16")
    assert backend.provider == f"TensorRT {fake_tensorrt.__version__} on NVIDIA FakeGPU 80GB"
    assert backend.engine_batch_limit == 6  # the smallest optimization-profile limit among the engines
    rng = np.random.default_rng(0)
    size = bundle.manifest.dims["H"]
    for batch in (2, 5, 1):  # grow, then reuse the larger buffers
        pixels = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        ids = _ids(rng, batch, eot)
        img, txt = backend.encode_image(pixels), backend.encode_text(ids)
        np.testing.assert_allclose(img, reference("image_encoder", pixels)[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(txt, reference("text_encoder", ids)[0], rtol=1e-5, atol=1e-6)
        logits, probs = backend.run_head(img, txt)
        ref_logits, ref_probs = reference(HEAD, img, txt)[:2]
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    assert memory.copies.count("h2d") == 3 * 4 and memory.copies.count("d2h") == 3 * 4
    assert fake_tensorrt.RECORD["runs"].count("logits+probs") == 3
    assert backend.h2d_seconds == pytest.approx(9 * 0.25e-3)  # 3 engines x 3 calls, GPU-timed by events
    backend.synchronize()
    backend.close()
    assert not memory.blocks  # every device buffer freed


def test_predictor_batches_within_the_engine_profile(trt_bundle) -> None:
    from crisis_tool.runtime.predictor import Predictor

    bundle, _ = trt_bundle
    predictor = Predictor.from_bundle(bundle.root, backend="tensorrt", precision="fp16", batch_size=32, verify=False)
    assert predictor.batch_size == 6
    predictor.close()


def test_engine_for_another_gpu_is_refused_with_rebuild_hint(trt_bundle) -> None:
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle, _ = trt_bundle
    engines = bundle.manifest.engines["fp16"]
    engines = {**engines, HEAD: replace(engines[HEAD], gpu_name="Orin (nvgpu)")}
    bundle = replace(bundle, manifest=replace(bundle.manifest, engines={"fp16": engines}))
    with pytest.raises(BundleError, match=r"another machine.*crisis-tool export --from-bundle .* --format trt"):
        TensorRTBackend(bundle, precision="fp16")


def test_inputs_converted_on_the_host_stay_alive_until_the_copy_ran(trt_bundle) -> None:
    """int32 ids and float64 embeddings are converted into temporary host arrays; the async copies read them at
    synchronisation, so the backend must hold every one until then (the fake overwrites released memory).
    The head has two inputs: dropping the first one's converted array before the sync is caught here."""
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle, memory = trt_bundle
    reference, eot = Reference(bundle), bundle.manifest.tokenizer.eot_token_id
    backend = TensorRTBackend(bundle, precision="fp16")
    rng = np.random.default_rng(1)
    ids = _ids(rng, 3, eot, np.int32)
    np.testing.assert_allclose(backend.encode_text(ids), reference("text_encoder", ids)[0], rtol=1e-5, atol=1e-6)
    dim = bundle.manifest.dims["D"]
    image_embeds, text_embeds = rng.standard_normal((3, dim)), rng.standard_normal((3, dim))  # float64
    logits, _ = backend.run_head(image_embeds, text_embeds)
    np.testing.assert_allclose(logits, reference(HEAD, image_embeds, text_embeds)[0], rtol=1e-5, atol=1e-6)
    assert memory.syncs >= 2 and not memory.queues  # nothing left pending after a call returns
    backend.close()


def test_the_fake_defers_copies_and_refuses_a_released_host_buffer() -> None:
    """The fake itself: nothing moves before synchronisation; a source freed before it raises."""
    cuda = fake_cuda.FakeCuda()
    rt = cuda.cudart
    _, stream = rt.cudaStreamCreate()
    _, dev = rt.cudaMalloc(64)
    src = np.arange(16, dtype=np.float32)
    rt.cudaMemcpyAsync(dev, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    assert not cuda.view(dev, np.float32, (16,)).any()  # not copied yet
    rt.cudaStreamSynchronize(stream)
    np.testing.assert_array_equal(cuda.view(dev, np.float32, (16,)), src)

    temp = np.arange(16, dtype=np.float32) + 1
    rt.cudaMemcpyAsync(dev, temp.ctypes.data, temp.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    temp[0] = -1.0  # the host buffer changes (as freed memory would) before the copy ran
    with pytest.raises(fake_cuda.HostBufferReleased):
        rt.cudaStreamSynchronize(stream)
