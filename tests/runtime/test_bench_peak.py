"""The honest roofline: MatMul models built without `onnx`, engine peak probes, "% of peak" per row, and
backends known to differ by a known amount (parity) or a known time ratio (speedup)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.backends import REGISTRY, Backend, register_backend
from crisis_tool.runtime.backends.onnx_matmul import matmul_model
from crisis_tool.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from crisis_tool.runtime.backends.peak_probe import PROBE_SIZE, PeakProbe
from crisis_tool.runtime.bench import BenchOptions, run_bench
from crisis_tool.runtime.bench.engine_peak import OVER_PEAK, PROBE_BURST, EnginePeak, EnginePeaks
from crisis_tool.runtime.bench.rows import BackendUnderTest, Row


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8", "qdq"])
def test_matmul_model_is_valid_onnx_and_computes_a_matmul(kind: str) -> None:
    import onnxruntime as ort

    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    data, a = matmul_model(24, 16, 8, kind)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    y = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    assert y.shape == (24, 8)
    if kind == "int8":  # integer GEMM: exact while u8 x s8 pair sums fit int16 (CPUs without VNNI saturate them)
        half = a // 2
        y = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"A": half})[0]
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, half.astype(np.int64) @ inits["B"].astype(np.int64))
    elif kind == "qdq":
        b = inits["Bq"].astype(np.float32) * inits["sb"]
        assert np.corrcoef(y.ravel(), (a @ b).ravel())[0, 1] > 0.99  # a quantized A, so close, not exact
    else:
        np.testing.assert_allclose(y.astype(np.float32), (a.astype(np.float32) @ inits["B"].astype(np.float32)),
                                   rtol=2e-2 if kind == "fp16" else 1e-4, atol=2e-2 if kind == "fp16" else 1e-4)


def _result(gflops: float | None) -> dict:
    return {"gflops": gflops, "status": "ok"}


def test_roofline_is_row_rate_over_the_engine_best_probe_and_flags_above_100() -> None:
    subject = BackendUnderTest("fake", "fake", "fp32")
    peaks = EnginePeaks([])
    # best probe: 2 GFLOP in 20 ms = 100 GFLOP/s; the slower 40 ms probe does not count
    peaks.peaks["fake"] = EnginePeak("fake", PeakProbe(lambda: None, 2e9, "fake"), best_s=0.02, times=[0.04, 0.02])
    rows = [Row(subject, 1), Row(subject, 8), Row(subject, 32)]
    results = [_result(50.0), _result(None), _result(150.0)]
    warnings = peaks.apply(results, rows)
    assert [r["roofline_pct"] for r in results] == [50.0, None, 150.0]
    assert results[0]["roofline_flag"] is None and results[2]["roofline_flag"] == OVER_PEAK
    assert warnings == [f"fake batch 32: 150.0% {OVER_PEAK}"]
    assert peaks.header() == {"fake": {"gflops": 100.0, "probe": "fake", "probes": 2}}


def test_onnxruntime_probe_runs_the_row_precision_with_the_row_threads(tiny_bundle: Path) -> None:
    from crisis_tool.runtime.bundle import Bundle

    bundle = Bundle.load(tiny_bundle)
    backend = OnnxRuntimeBackend(bundle, "fp32", ["CPUExecutionProvider"], threads=1)
    probe = backend.peak_probe()
    assert probe is not None and probe.flops == 2 * PROBE_SIZE**3
    assert f"MatMul fp32 {PROBE_SIZE}^3, 1 threads" in probe.what
    probe.run()
    if bundle.has_graphs("int8"):
        probe8 = OnnxRuntimeBackend(bundle, "int8", ["CPUExecutionProvider"], threads=1).peak_probe()
        assert probe8 is not None and "MatMulInteger u8s8" in probe8.what


def test_rows_never_exceed_their_engine_peak(tiny_bundle: Path) -> None:
    pytest.importorskip("onnx")  # FLOP counting
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime", "onnxruntime-int8"), batch_sizes=(1, 8),
                        workload="image", seconds=0.3, warmup=1)
    result = run_bench(opts)
    peaks = result["header"]["engine_peaks"]
    assert peaks["onnxruntime"]["gflops"] > 0
    assert peaks["onnxruntime"]["probes"] >= (3 + 3) * PROBE_BURST  # bursts: warm + per round
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert ok and all(0 < r["roofline_pct"] <= 100 and r["roofline_flag"] is None for r in ok)
    assert not result["header"]["roofline_warnings"]


class ShiftedImageBackend(OnnxRuntimeBackend):
    """onnxruntime with every image-embedding element moved by exactly +0.25."""

    name = "shifted"
    SHIFT = 0.25

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        return super().encode_image(pixel_values) + np.float32(self.SHIFT)


def test_parity_reports_a_known_difference(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "shifted", REGISTRY["onnxruntime"])
    register_backend("shifted", ShiftedImageBackend, precisions=("fp32",))
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime", "shifted"), batch_sizes=(3,), workload="image",
                        seconds=0.1, warmup=1, measure_gemm=False, seed=11)
    ref, shifted = run_bench(opts)["rows"]
    assert ref["max_abs_diff"] == 0.0 and shifted["max_abs_diff"] == pytest.approx(0.25, abs=1e-5)
    assert ref["cosine"] == pytest.approx(1.0) and 0.0 < shifted["cosine"] < 0.9999


class SleepingBackend(Backend):
    """An image encoder that takes `DELAY` seconds per call: a known speed."""

    name = "sleeping"
    DELAY = 0.01

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        time.sleep(self.DELAY)
        return pixel_values.reshape(len(pixel_values), -1)[:, :4].astype(np.float32)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return np.zeros((len(input_ids), 4), np.float32)

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        return image_embeds[:, :3], image_embeds[:, :3]


class SlowTorchStandIn(SleepingBackend):
    name = "torch"
    DELAY = 0.03


def test_speedup_is_the_measured_time_ratio(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "torch", REGISTRY["torch"])
    monkeypatch.setitem(REGISTRY, "sleeping", REGISTRY["onnxruntime"])
    register_backend("torch", SlowTorchStandIn, precisions=("fp32",))
    register_backend("sleeping", SleepingBackend, precisions=("fp32",))
    opts = BenchOptions(tiny_bundle, backends=("torch", "sleeping"), batch_sizes=(2,), workload="image",
                        seconds=0.4, warmup=1, measure_gemm=False)
    torch_row, fast = run_bench(opts)["rows"]
    assert torch_row["speedup_vs_torch"] == pytest.approx(1.0)
    # the column is the ratio of the two rows' measured rates (no wall-clock bound: timing is the bench's job)
    assert fast["speedup_vs_torch"] == pytest.approx(fast["items_per_s"] / torch_row["items_per_s"])
    assert fast["max_abs_diff"] == 0.0  # same outputs: the stand-ins compute the same thing
