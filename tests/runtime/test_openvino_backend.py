"""The OpenVINO backend on a tiny bundle: parity with onnxruntime per precision, dynamic shapes, devices, registry."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from crisis_tool.runtime.backends import (  # noqa: E402 - after the importorskip
    REGISTRY,
    backend_class,
    backend_names,
    backend_unavailable_reason,
    backend_variants,
    create_backend,
)
from crisis_tool.runtime.backends.openvino_backend import PRECISION_MODES, OpenVinoBackend, has_bf16  # noqa: E402
from crisis_tool.runtime.bundle import Bundle  # noqa: E402
from crisis_tool.runtime.errors import MissingDependencyError, UsageError  # noqa: E402
from crisis_tool.runtime.model_spec import END_TO_END, IMAGE_ENCODER, IMAGE_GRAPH, TEXT_ENCODER, TEXT_GRAPH  # noqa: E402
from crisis_tool.runtime.tokenizer import ClipTokenizer  # noqa: E402

TEXTS = ["Bridge washed out on Route 9", "no damage here", "storm", "Flooded streets downtown, cars under water",
         "#hurricane power lines down", "rescue teams at the school", "ok", "roof torn off the church"] * 2
N = len(TEXTS)
ENCODER_GATES = {IMAGE_ENCODER: IMAGE_GRAPH, TEXT_ENCODER: TEXT_GRAPH}


@pytest.fixture(scope="module")
def bundle(tiny_int8_bundle: Path) -> Bundle:
    """The shared tiny bundle with fp32 + int8 graphs."""
    return Bundle.load(tiny_int8_bundle)


@pytest.fixture(scope="module")
def inputs(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """N images (normalised-pixel-like noise) and N real tokenized texts, trimmed to their longest."""
    dims = bundle.dims
    pixels = np.random.default_rng(0).standard_normal((N, 3, dims["H"], dims["W"])).astype(np.float32)
    ids = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root).tokenize(TEXTS)
    return pixels, ids


def run_all(backend, pixels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, text = backend.encode_image(pixels), backend.encode_text(ids)
    logits, _ = backend.run_head(image, text)
    return image, text, logits


@pytest.fixture(scope="module")
def reference(bundle: Bundle, inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """onnxruntime fp32 on the same inputs."""
    backend = create_backend("onnxruntime", bundle, precision="fp32")
    try:
        return run_all(backend, *inputs)
    finally:
        backend.close()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def assert_within_reduced_gate(got, reference, precision: str) -> None:
    for graph, out, ref in zip((IMAGE_ENCODER, TEXT_ENCODER), got[:2], reference[:2], strict=True):
        assert cosines(out, ref).min() >= ENCODER_GATES[graph].tolerance(precision).min_cosine, graph
    assert top1(got[2], reference[2]) >= END_TO_END[precision].min_top1


def test_fp32_matches_onnxruntime_within_the_fp32_gate(bundle: Bundle, inputs, reference) -> None:
    backend = create_backend("openvino", bundle, precision="fp32")
    got = run_all(backend, *inputs)
    assert backend.inference_precision == "f32"
    for graph, out, ref in zip((IMAGE_ENCODER, TEXT_ENCODER), got[:2], reference[:2], strict=True):
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert cosines(out, ref).min() >= ENCODER_GATES[graph].tolerance("fp32").min_cosine, graph
    gate = END_TO_END["fp32"]
    assert np.abs(got[2] - reference[2]).max() <= gate.max_abs
    assert top1(got[2], reference[2]) >= gate.min_top1
    assert {p.name for p in backend.files()} == {"image_encoder.onnx", "text_encoder.onnx", "head_informative.onnx"}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    return set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())


def test_bf16_capability_matches_the_cpu_flags() -> None:
    flags = _cpu_flags()
    assert has_bf16(ov.Core(), "CPU") == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_bf16_within_the_reduced_precision_gate(bundle: Bundle, inputs, reference) -> None:
    if not has_bf16(ov.Core(), "CPU"):
        with pytest.raises(MissingDependencyError, match="no bf16 on this CPU"):
            create_backend("openvino", bundle, precision="bf16")
        pytest.skip("this CPU has no bf16 (OpenVINO reports no BF16 capability); refusal checked instead")
    backend = create_backend("openvino", bundle, precision="bf16")
    assert backend.inference_precision == "bf16"  # read back from the compiled graph
    assert backend.graph_precision == "fp32"
    assert_within_reduced_gate(run_all(backend, *inputs), reference, "fp16")


def test_bf16_refused_where_the_device_lacks_it(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    from crisis_tool.runtime.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "has_bf16", lambda core, device: False)
    with pytest.raises(MissingDependencyError, match="no bf16 on this CPU"):
        create_backend("openvino", bundle, precision="bf16")


def test_int8_graphs_run_within_the_int8_gate(bundle: Bundle, inputs, reference) -> None:
    backend = create_backend("openvino", bundle, precision="int8")
    expected = {graph: bundle.graph_path_or_fp32(graph, "int8") for graph in bundle.spec.graph_names}
    assert backend.files() == sorted(expected.values())
    assert expected[IMAGE_ENCODER].name != "image_encoder.onnx"  # the bundle's int8 image graph, not fp32
    assert_within_reduced_gate(run_all(backend, *inputs), reference, "int8")


def test_dynamic_batch_and_text_length(bundle: Bundle, inputs) -> None:
    backend = create_backend("openvino", bundle, precision="fp32")
    onnxruntime = create_backend("onnxruntime", bundle, precision="fp32")
    pixels, ids = inputs
    tokenizer = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root)
    full = tokenizer.tokenize(TEXTS[:3], trim=False)
    for batch in (full, ids[:5], ids[:1], tokenizer.tokenize(["storm"])):
        out = backend.encode_text(batch)
        assert out.shape == (len(batch), bundle.dims["D"])
        np.testing.assert_allclose(out, onnxruntime.encode_text(batch), atol=1e-4)
    assert full.shape[1] == bundle.dims["L"] and ids.shape[1] < bundle.dims["L"]
    np.testing.assert_allclose(backend.encode_image(pixels[:1]), backend.encode_image(pixels)[:1], atol=1e-5)


def test_concurrent_calls_give_the_sequential_answers(bundle: Bundle, inputs) -> None:
    backend = create_backend("openvino", bundle, precision="fp32")
    pixels, ids = inputs
    expected = [backend.encode_image(pixels[i : i + 2]) for i in range(0, N, 2)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results[k] = backend.encode_image(pixels[2 * k : 2 * k + 2])
                backend.encode_text(ids[k : k + 1])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(expected))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, want in enumerate(expected):
        np.testing.assert_allclose(results[k], want, atol=1e-6)


def test_device_really_used_is_read_back(bundle: Bundle) -> None:
    core = ov.Core()
    cpu = create_backend("openvino", bundle, precision="fp32", device="cpu")
    assert cpu.device == "CPU" and cpu.provider == "CPU"
    auto = create_backend("openvino", bundle, precision="fp32", device="AUTO")
    assert auto.device == "AUTO"
    assert auto.execution_devices and set(auto.execution_devices) <= set(core.available_devices)
    assert auto.provider == ",".join(auto.execution_devices)
    assert "AUTO" not in auto.describe() and auto.provider in auto.describe()


def test_unknown_and_missing_devices_are_one_line_errors(bundle: Bundle) -> None:
    with pytest.raises(UsageError, match=r"unknown OpenVINO device 'TPU' \(choose from CPU, GPU, NPU, AUTO\)"):
        create_backend("openvino", bundle, device="TPU")
    available = ov.Core().available_devices
    missing = next((d for d in ("NPU", "GPU") if not any(a.startswith(d) for a in available)), None)
    if missing is None:
        pytest.skip("this machine has both a GPU and an NPU for OpenVINO")
    with pytest.raises(MissingDependencyError, match=f"device {missing} is not available") as info:
        create_backend("openvino", bundle, device=missing)
    assert "\n" not in str(info.value)


def test_bad_options_and_precisions_are_usage_errors(bundle: Bundle, tiny_bundle: Path) -> None:
    with pytest.raises(UsageError, match="does not take --providers"):
        create_backend("openvino", bundle, providers=["CPUExecutionProvider"])
    with pytest.raises(UsageError, match="openvino precision 'int4'"):
        create_backend("openvino", bundle, precision="int4")
    with pytest.raises(UsageError, match="no int8 graphs"):
        create_backend("openvino", Bundle.load(tiny_bundle), precision="int8")


def test_registry_and_missing_package(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "openvino" in backend_names()
    assert backend_class("openvino") is OpenVinoBackend
    assert REGISTRY["openvino"].precisions == tuple(PRECISION_MODES)  # bench's rows: openvino, openvino-bf16, ...
    assert backend_variants()["openvino-bf16"] == ("openvino", "bf16")
    assert backend_unavailable_reason("openvino") is None
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    reason = backend_unavailable_reason("openvino")
    assert reason is not None and "pip install 'crisis-tool[openvino]'" in reason
    with pytest.raises(MissingDependencyError, match=r"crisis-tool\[openvino\]"):
        create_backend("openvino", bundle)
