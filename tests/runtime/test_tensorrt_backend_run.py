"""The TensorRT backend's inference path (buffers, shapes, copies, H2D timing) against a fake TensorRT runtime.

No GPU or TensorRT exists here. The fake cudart (`tests/export/fake_cuda.py`) hands out host memory as
"device" pointers, so the backend's real cudaMemcpyAsync / set_tensor_address / execute_async_v3 sequence moves
real bytes, and the fake engines compute simple numpy functions of their inputs that the test checks. Copies and
kernels only run when the stream is synchronised, and an async copy's host buffer must still hold its bytes then,
so a missing cudaStreamSynchronize or a host buffer released too early fails here. What this cannot show: real
engines, real GPU memory or real timings (the event timer is fixed).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError

_SPEC = importlib.util.spec_from_file_location("fake_cuda", Path(__file__).parents[1] / "export" / "fake_cuda.py")
fake_cuda = importlib.util.module_from_spec(_SPEC)  # type: ignore[arg-type]
sys.modules.setdefault("fake_cuda", fake_cuda)
_SPEC.loader.exec_module(fake_cuda)  # type: ignore[union-attr]

D, C = 6, 3
SPECS = {  # component -> ([(name, dtype)] inputs, [(name, dtype)] outputs)
    "image_encoder": ([("pixel_values", np.float32)], [("image_embeds", np.float32)]),
    "text_encoder": ([("input_ids", np.int64)], [("text_embeds", np.float32)]),
    "head": ([("image_embeds", np.float32), ("text_embeds", np.float32)],
             [("logits", np.float32), ("probs", np.float32)]),
}


def image_fn(x: np.ndarray) -> np.ndarray:
    return np.repeat(x.mean(axis=(2, 3)), 2, axis=1).astype(np.float32)  # [B, 6]


def text_fn(ids: np.ndarray) -> np.ndarray:
    return np.tile((ids.sum(axis=1, keepdims=True) % 97).astype(np.float32), (1, D))


def head_fn(img: np.ndarray, txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = (img[:, :C] - 0.01 * txt[:, :C]).astype(np.float32)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return logits, (e / e.sum(1, keepdims=True)).astype(np.float32)


def make_fakes(memory: fake_cuda.FakeCuda):
    cudart = memory.cudart

    class Context:
        def __init__(self, component: str) -> None:
            self.component, self.shapes, self.addresses = component, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def get_tensor_shape(self, name):
            batch = next(iter(self.shapes.values()))[0]
            return (batch, C) if self.component == "head" else (batch, D)

        def execute_async_v3(self, stream):
            inputs, outputs = SPECS[self.component]
            addresses, shapes = dict(self.addresses), dict(self.shapes)

            def kernel():  # runs when the stream is synchronised, on what the copies put there by then
                arrays = [memory.view(addresses[n], t, shapes[n]).copy() for n, t in inputs]
                fn = {"image_encoder": lambda a: (image_fn(a),), "text_encoder": lambda a: (text_fn(a),),
                      "head": head_fn}[self.component]
                for (name, _), value in zip(outputs, fn(*arrays)):
                    memory.view(addresses[name], np.float32, value.shape)[...] = value
                memory.kernels += 1

            memory.enqueue(stream, "kernel", kernel)
            return True

    class Engine:
        def __init__(self, component: str) -> None:
            self.component = component
            inputs, outputs = SPECS[component]
            self.io = [(n, t, "in") for n, t in inputs] + [(n, t, "out") for n, t in outputs]
            self.num_io_tensors = len(self.io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return next(m for n, _, m in self.io if n == name)

        def get_tensor_dtype(self, name):
            return next(t for n, t, _ in self.io if n == name)

        def create_execution_context(self):
            return Context(self.component)

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda t: t
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda blob: Engine(blob.decode()))
    return trt, cudart


@pytest.fixture()
def trt_bundle(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> tuple[Bundle, fake_cuda.FakeCuda]:
    root = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "engines").mkdir()
    entries = {}
    for component in SPECS:
        rel = f"engines/{component}.fp16.engine"
        (root / rel).write_bytes(component.encode())  # the fake runtime "deserialises" the component name
        limit = [6 if component == "head" else 8]
        entries[component] = {"file": rel, "trt_version": "10.9.0", "gpu_name": "NVIDIA H200",
                              "compute_capability": "9.0",
                              "profile": {SPECS[component][0][0][0]: {"min": [1], "opt": [4], "max": limit}}}
    manifest["engines"] = {"fp16": entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    memory = fake_cuda.FakeCuda()
    trt, cudart = make_fakes(memory)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    return Bundle.load(root, verify=False), memory


def test_engines_run_with_growing_buffers_and_timed_copies(trt_bundle) -> None:
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle, memory = trt_bundle
    backend = TensorRTBackend(bundle, precision="fp16")
    assert backend.provider == "TensorRT 10.9.0 on NVIDIA H200"
    assert backend.max_batch == 6  # the smallest optimization-profile limit among the engines
    rng = np.random.default_rng(0)
    for batch in (2, 5, 1):  # grow, then reuse the larger buffers
        pixels = rng.random((batch, 3, 8, 8), dtype=np.float32)
        ids = rng.integers(0, 49408, size=(batch, 9))
        img, txt = backend.encode_image(pixels), backend.encode_text(ids)
        np.testing.assert_allclose(img, image_fn(pixels), rtol=1e-6)
        np.testing.assert_array_equal(txt, text_fn(ids))
        logits, probs = backend.run_head(img, txt)
        ref_logits, ref_probs = head_fn(img, txt)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-6)
        np.testing.assert_allclose(probs, ref_probs, rtol=1e-6)
    assert memory.copies.count("h2d") == 3 * 4 and memory.copies.count("d2h") == 3 * 4
    assert backend.h2d_seconds == pytest.approx(9 * 0.25e-3)  # 3 engines x 3 calls, GPU-timed by events
    backend.synchronize()
    backend.close()
    assert not memory.blocks  # every device buffer freed


def test_predictor_batches_within_the_engine_profile(trt_bundle) -> None:
    from crisis_tool.runtime.predictor import Predictor

    bundle, _ = trt_bundle
    predictor = Predictor.from_bundle(bundle.root, backend="tensorrt", precision="fp16", max_batch=32, verify=False)
    assert predictor.max_batch == 6
    predictor.close()


def test_engine_for_another_gpu_is_refused_with_rebuild_hint(trt_bundle) -> None:
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle, _ = trt_bundle
    engines = bundle.manifest.engines["fp16"]
    engines = {**engines, "head": replace(engines["head"], gpu_name="Orin (nvgpu)")}
    bundle = replace(bundle, manifest=replace(bundle.manifest, engines={"fp16": engines}))
    with pytest.raises(BundleError, match=r"another machine.*crisis-tool export --from-bundle .* --format trt"):
        TensorRTBackend(bundle, precision="fp16")


def test_inputs_converted_on_the_host_stay_alive_until_the_copy_ran(trt_bundle) -> None:
    """float64 pixels and int32 ids are converted into temporary host arrays; the async copy reads them at
    synchronisation, so the backend must hold them until then (the fake overwrites released memory)."""
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle, memory = trt_bundle
    backend = TensorRTBackend(bundle, precision="fp16")
    rng = np.random.default_rng(1)
    pixels = rng.random((3, 3, 8, 8))  # float64: the backend converts to float32 on the host
    ids = rng.integers(0, 49408, size=(3, 9)).astype(np.int32)
    np.testing.assert_allclose(backend.encode_image(pixels), image_fn(pixels.astype(np.float32)), rtol=1e-6)
    np.testing.assert_array_equal(backend.encode_text(ids), text_fn(ids.astype(np.int64)))
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
