"""Predictor on a real tiny bundle: order, batching, dedupe, threads, warnings, backends and providers."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from crisis_tool.runtime import backends
from crisis_tool.runtime.backends import Backend, backend_unavailable_reason, create_backend
from crisis_tool.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError, MissingDependencyError, UsageError
from crisis_tool.runtime.manifest import EngineEntry
from crisis_tool.runtime.predictor import TIMING_KEYS, Predictor
from crisis_tool.runtime.records import Record


class CountingBackend(Backend):
    """Delegates to a real backend and counts the rows each component receives."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name, self.precision, self.provider = inner, inner.name, inner.precision, inner.provider
        self.rows = {"image": 0, "text": 0, "head": 0}
        self._lock = threading.Lock()

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self.rows[key] += n

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        self._count("image", len(pixel_values))
        return self.inner.encode_image(pixel_values)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        self._count("text", len(input_ids))
        return self.inner.encode_text(input_ids)

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        self._count("head", len(image_embeds))
        return self.inner.run_head(image_embeds, text_embeds, task)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, colour in enumerate([(220, 20, 20), (20, 200, 30), (20, 30, 210), (240, 240, 240), (10, 10, 10)]):
        path = root / f"img{i}.png"
        Image.new("RGB", (64 + 16 * i, 48), colour).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    with Predictor.from_bundle(tiny_bundle, batch_size=4) as p:
        yield p


def _records(images: list[Path], n: int = 11) -> list[Record]:
    texts = ["Flooding on Main St #Harvey", "RT @FEMA: shelters open http://t.co/x", "power lines down",
             "donate now", "all good here", "bridge collapsed after the quake"]
    return [Record(f"r{i}", texts[i % len(texts)], str(images[i % len(images)]), line_no=i + 1) for i in range(n)]


def test_predict_in_order_and_equals_stream(predictor: Predictor, images: list[Path]) -> None:
    records = _records(images)
    preds = predictor.predict(records)
    assert [p.id for p in preds] == [r.id for r in records]
    assert all(p.error is None for p in preds)
    for p in preds:
        assert list(p.probs) == predictor.labels
        assert abs(sum(p.probs.values()) - 1) < 1e-4
        assert p.label == max(p.probs, key=p.probs.get) and p.confidence == p.probs[p.label]
    assert set(predictor.last_timings) == set(TIMING_KEYS)
    assert predictor.cold_start_s is not None and predictor.cold_start_s > 0
    streamed = list(predictor.predict_stream(iter(records)))
    assert [s.id for s in streamed] == [p.id for p in preds]
    for s, p in zip(streamed, preds, strict=True):
        np.testing.assert_allclose(list(s.probs.values()), list(p.probs.values()), atol=1e-5)


def test_batch_size_does_not_change_predictions(tiny_bundle: Path, predictor: Predictor, images) -> None:
    records = _records(images, 9)
    reference = predictor.predict(records)
    with Predictor.from_bundle(tiny_bundle, batch_size=1, cache_size=0) as single:
        for rec, ref in zip(records, reference, strict=True):
            (alone,) = single.predict([rec])
            np.testing.assert_allclose(list(alone.probs.values()), list(ref.probs.values()), atol=1e-5)


def test_identical_images_and_texts_are_encoded_once(tiny_bundle: Path, images: list[Path], tmp_path) -> None:
    copy = tmp_path / "same_bytes_other_name.png"
    shutil.copy(images[0], copy)
    records = [Record("a", "same text", str(images[0])), Record("b", "same text", str(copy)),
               Record("c", "same  text ", str(images[0])), Record("d", "other text", str(images[1]))]
    bundle = Bundle.load(tiny_bundle)
    counting = CountingBackend(create_backend("onnxruntime", bundle))
    with Predictor(bundle, counting, batch_size=8) as p:
        first = p.predict(records)
        assert counting.rows == {"image": 2, "text": 2, "head": 4}
        second = p.predict(records)  # the LRU caches answer a later call too
        assert counting.rows == {"image": 2, "text": 2, "head": 8}
    assert first == second
    assert first[0].probs == first[1].probs == first[2].probs


def test_threads_share_one_predictor(predictor: Predictor, images: list[Path]) -> None:
    records = _records(images, 13)
    expected = predictor.predict(records)
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = predictor.predict(records[k:] + records[:k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, preds in results.items():
        rotated = expected[k:] + expected[:k]
        assert [p.id for p in preds] == [p.id for p in rotated]
        for a, b in zip(preds, rotated, strict=True):
            np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)


def test_llava_bundle_without_llava_text_warns_once(tiny_bundle: Path, images, caplog) -> None:
    base = Bundle.load(tiny_bundle)
    bundle = replace(base, manifest=replace(base.manifest, text_source="tweet+llava"))
    with caplog.at_level(logging.WARNING, logger="crisis_tool.runtime.predictor"):
        with Predictor(bundle, create_backend("onnxruntime", bundle)) as p:
            preds = p.predict(_records(images, 5))
            preds += p.predict(_records(images, 3))
            with_llava = p.predict([Record("x", "", str(images[0]), llava_text="A flooded road.")])
    assert all(pred.error is None for pred in preds)
    assert with_llava[0].error is None
    warnings = [r for r in caplog.records if "accuracy of this mismatch is unknown" in r.getMessage()]
    assert len(warnings) == 1


def test_provider_reported_is_the_one_in_use(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    requested = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    calls = []

    class CpuOnlySession:
        def __init__(self, path: str, options, providers: list[str]) -> None:
            calls.append(list(providers))
            self.real = ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # for the graph's I/O

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

        def get_inputs(self) -> list:
            return self.real.get_inputs()

        def get_outputs(self) -> list:
            return self.real.get_outputs()

    fake = OnnxRuntimeBackend(bundle, providers=requested, session_factory=CpuOnlySession)
    assert fake.provider == "CPUExecutionProvider"
    assert calls[0] == requested and calls[1:] == [["CPUExecutionProvider"]] * 2
    real = OnnxRuntimeBackend(bundle, providers=requested)  # no GPU here: ORT silently falls back
    assert real.provider == real.sessions["image_encoder"].get_providers()[0]
    with pytest.raises(UsageError, match="unknown onnxruntime provider"):
        OnnxRuntimeBackend(bundle, providers=["NoSuchProvider"])


def test_backend_registry_errors(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(UsageError, match="unknown backend"):
        create_backend("nope", bundle)
    monkeypatch.setitem(backends.REGISTRY, "torch",
                        replace(backends.REGISTRY["torch"], target="crisis_tool.no_such_module:TorchBackend"))
    with pytest.raises(MissingDependencyError, match="needs torch"):
        create_backend("torch", bundle)
    assert "needs torch" in backend_unavailable_reason("torch")
    assert backend_unavailable_reason("onnxruntime") is None
    with pytest.raises(UsageError, match="no int8 graphs"):
        create_backend("onnxruntime", bundle, precision="int8")


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, devices: int, gpu: bytes = b"NVIDIA H200") -> None:
    props = types.SimpleNamespace(name=gpu, major=9, minor=0)
    cudart = types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (0, devices), cudaGetDeviceProperties=lambda d: (0, props),
        cudaSetDevice=lambda d: (0,), cudaGetErrorName=lambda e: (0, b"cudaErrorNoDevice"),
    )
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"
    trt.Runtime = lambda logger: object()
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


def test_tensorrt_backend_refusals(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crisis_tool.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle = Bundle.load(tiny_bundle)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="needs TensorRT 10"):
        create_backend("tensorrt", bundle)
    assert "TensorRT" in backend_unavailable_reason("tensorrt")

    _fake_cuda(monkeypatch, devices=0)
    assert "needs an NVIDIA GPU (none found)" in TensorRTBackend.unavailable_reason()
    _fake_cuda(monkeypatch, devices=1)
    assert TensorRTBackend.unavailable_reason() is None
    with pytest.raises(UsageError, match="--providers"):
        TensorRTBackend(bundle, providers=["CPUExecutionProvider"])
    with pytest.raises(BundleError, match="no fp32 TensorRT engine for image_encoder"):
        TensorRTBackend(bundle)

    def refuse(entry, trt_version, gpu_name, compute_capability, bundle="BUNDLE_DIR"):
        if entry["gpu_name"] != gpu_name:
            raise BundleError(f"engine built for {entry['gpu_name']}, this GPU is {gpu_name}")

    meta = types.ModuleType("crisis_tool.runtime.engine_meta")
    meta.check_engine_compat = refuse
    try:
        import crisis_tool.runtime.engine_meta  # noqa: F401  (real one when the export engineer has written it)
    except ImportError:
        monkeypatch.setitem(sys.modules, "crisis_tool.runtime.engine_meta", meta)
    entry = {"file": "engines/image_encoder.fp32.plan", "trt_version": "10.9.0", "gpu_name": "NVIDIA A100",
             "compute_capability": "8.0"}
    engines = {"fp32": {c: EngineEntry(**entry) for c in bundle.spec.graph_names}}
    foreign = replace(bundle, manifest=replace(bundle.manifest, engines=engines))
    with pytest.raises(BundleError, match="A100"):
        TensorRTBackend(foreign)


def test_stream_answers_before_the_input_ends(predictor: Predictor, images: list[Path]) -> None:
    records = _records(images, 3)
    got_first = threading.Event()

    def slow_source():
        yield records[0]
        if not got_first.wait(20):  # a stream that waited for a full batch would never get here in time
            raise RuntimeError("no answer before the input ended")
        yield from records[1:]

    stream = predictor.predict_stream(slow_source(), linger_s=0.01)
    first = next(stream)
    got_first.set()
    assert [first.id, *(p.id for p in stream)] == ["r0", "r1", "r2"]
