"""Batch invariance: fp32 passes at 1e-6; a batch-coupled backend, onnxruntime's dynamic int8 (one activation
scale per batch) and a Predictor on top of a coupled backend fail; static Q/DQ int8 passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.backends import create_backend
from crisis_tool.runtime.batch_invariance import (
    TOLERANCES,
    MixedInputs,
    check_batch_invariance,
    mixed_inputs,
    mixed_records,
)
from crisis_tool.runtime.bundle import Bundle

DIMS = {"H": 8, "W": 8, "D": 6, "C": 3, "L": 16}


class RowBackend:
    """Every row on its own: pooled pixels and token counts through fixed weights; `coupled` subtracts the batch
    mean of the image embeddings (what a per-batch statistic does)."""

    name = "rows"
    precision = "fp32"
    dims = DIMS

    def __init__(self, coupled: float = 0.0) -> None:
        self.coupled = coupled
        self.w = np.random.default_rng(0).normal(size=(2 * DIMS["D"], DIMS["C"])).astype(np.float32)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        pooled = pixels.reshape(len(pixels), 3, -1).mean(axis=2)
        out = np.tile(pooled, (1, 2)).astype(np.float32)
        return out - self.coupled * out.mean(axis=0, keepdims=True)

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        return np.repeat((ids != 0).sum(axis=1, keepdims=True) / 10.0, DIMS["D"], axis=1).astype(np.float32)

    def run_head(self, image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = np.concatenate([image, text], axis=1) @ self.w
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits, e / e.sum(axis=1, keepdims=True)


class PadSensitiveBackend(RowBackend):
    """Reads the padding: the text embedding depends on the batch's width (a leak the trimming must expose)."""

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        return np.full((len(ids), DIMS["D"]), ids.shape[1] / 10.0, dtype=np.float32)


def test_mixed_inputs_hold_noise_long_texts_and_duplicates():
    mixed = mixed_inputs(DIMS, n=32)
    lengths = (mixed.input_ids != 0).sum(axis=1)
    assert lengths.min() == 3 and lengths.max() == DIMS["L"]  # one token and a full context
    assert np.array_equal(mixed.pixel_values[24:], mixed.pixel_values[:8])  # the last quarter duplicates
    assert np.array_equal(mixed.input_ids[24:], mixed.input_ids[:8])
    assert mixed.pixel_values[0].std() > 1.0  # uniform noise


def test_row_independent_backend_passes_exactly():
    report = check_batch_invariance(RowBackend())
    assert report.passed and report.max_diff <= 1e-6 and report.batch_size == 32 and report.n_records == 32
    assert report.tolerance == TOLERANCES["fp32"] == 1e-6


@pytest.mark.parametrize("coupling", [1e-3, 1.0])
def test_batch_coupled_backend_fails(coupling):
    report = check_batch_invariance(RowBackend(coupled=coupling))
    assert not report.passed and report.max_diff > 1e-6
    assert "NOT batch-invariant" in report.describe() and f"record {report.worst_record}" in report.describe()


def test_padding_leak_is_caught_by_trimming():
    assert not check_batch_invariance(PadSensitiveBackend()).passed


def test_run_fn_target_measures_relative_output():
    feeds = {"x": np.random.default_rng(1).normal(size=(32, 5)).astype(np.float32) * 1000}
    assert check_batch_invariance(lambda f: f["x"] * 2, feeds, precision="int8").max_diff == 0
    coupled = check_batch_invariance(lambda f: f["x"] - f["x"].mean(axis=0), feeds, precision="int8")
    assert not coupled.passed and coupled.measure == "output rel"
    with pytest.raises(TypeError):
        check_batch_invariance(lambda f: f, [1, 2])


def _fp32_graph(bundle: Path, graph: str) -> Path:
    return Bundle.load(bundle).graph_path(graph, "fp32")


def _session_fn(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def test_onnxruntime_fp32_bundle_is_invariant_at_1e6(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    backend = create_backend("onnxruntime", bundle, precision="fp32", providers=["CPUExecutionProvider"])
    report = check_batch_invariance(backend, mixed_inputs(bundle.dims))
    assert report.passed and report.tolerance == 1e-6, report.describe()


def test_dynamic_int8_fails_and_static_int8_passes(tiny_bundle, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from crisis_tool.export.precision import quantize_int8
    from crisis_tool.export.qdq import qdq_graph

    src = _fp32_graph(tiny_bundle, "image_encoder")
    mixed = mixed_inputs(Bundle.load(tiny_bundle).dims)
    feeds = {"pixel_values": mixed.pixel_values}
    dynamic = quantize_int8(src, tmp_path / "dynamic.onnx", "QInt8-per-channel")
    calibration = [{"pixel_values": mixed.pixel_values[i : i + 4]} for i in range(0, 16, 4)]
    static = qdq_graph(src, tmp_path / "static.onnx", calibration, flavour="cpu")
    coupled = check_batch_invariance(_session_fn(dynamic), feeds, precision="int8")
    invariant = check_batch_invariance(_session_fn(static), feeds, precision="int8")
    assert not coupled.passed, coupled.describe()
    assert invariant.passed and invariant.max_diff <= 1e-6, invariant.describe()


def test_predictor_target_compares_every_record_without_caches(tiny_bundle):
    from crisis_tool.runtime.predictor import Predictor

    records = mixed_records(12, image_size=48)
    with Predictor.from_bundle(tiny_bundle, backend="onnxruntime", providers=["CPUExecutionProvider"]) as predictor:
        report = check_batch_invariance(predictor, records, batch_size=12)
        assert report.passed and report.n_records == 12, report.describe()
        real = predictor.backend
        predictor.backend = _Coupled(real)
        try:
            assert not check_batch_invariance(predictor, records, batch_size=12).passed
        finally:
            predictor.backend = real


class _Coupled:
    """Wraps a backend and couples its image embeddings across the batch."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.precision = inner.precision

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_image(self, pixels):
        out = self.inner.encode_image(pixels)
        return out + 0.5 * out.mean(axis=0, keepdims=True)


def test_report_dict_and_explicit_inputs():
    mixed = mixed_inputs(DIMS, n=8)
    report = check_batch_invariance(RowBackend(), MixedInputs(mixed.pixel_values, mixed.input_ids), batch_size=8,
                                    tolerance=0.5, name="row-backend")
    data = report.to_dict()
    assert data["passed"] is True and data["target"] == "row-backend" and data["tolerance"] == 0.5
