"""bench --decode exact,fast: one row set per mode, and the fast rows' embedding cosine against exact decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.bench import BenchOptions, run_bench
from crisis_tool.runtime.bench.inputs import generate_records


def test_decode_rows_and_cosine_of_fast_against_exact(tiny_bundle: Path, tmp_path: Path) -> None:
    from crisis_tool.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from crisis_tool.runtime.bundle import Bundle
    from crisis_tool.runtime.preprocess import PreprocessConfig, load_preprocessed

    # 7 JPEGs, 480x360 to 1600x1200: fast decodes those whose sides stay >= 2 x 224 at 1/2 scale reduced
    records = generate_records(7, tmp_path, seed=2)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"id": r.id, "text": r.text, "image": r.image}) + "\n" for r in records))
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime",), batch_sizes=(2,), workload="e2e", seconds=0.1,
                        warmup=1, measure_gemm=False, records=path, decode=("exact", "fast"))
    result = run_bench(opts)
    exact, fast = result["rows"]
    assert (exact["decode"], fast["decode"]) == ("exact", "fast")
    assert exact.get("decode_cosine") is None and exact["status"] == fast["status"] == "ok"
    # independently: embeddings of the same 7 images, decoded both ways, by a fresh backend
    bundle = Bundle.load(tiny_bundle)
    cfg = PreprocessConfig.from_dict(bundle.preprocess_config)
    backend = OnnxRuntimeBackend(bundle, "fp32", ["CPUExecutionProvider"])
    fast_pixels = np.stack([load_preprocessed(r.image, cfg, decode="fast") for r in records])
    exact_pixels = np.stack([load_preprocessed(r.image, cfg, decode="exact") for r in records])
    assert np.abs(fast_pixels - exact_pixels).max() > 0.01  # at least one image really decodes differently
    a = backend.encode_image(fast_pixels).astype(np.float64)
    b = backend.encode_image(exact_pixels).astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # compare the distance from 1 (about 1e-6 here), so that "no difference" (1.0) fails
    assert 1 - fast["decode_cosine"] == pytest.approx(1 - float(cos.min()), rel=0.05)
    assert 0.99 < fast["decode_cosine"]
    speed = result["header"]["decode_speed"]
    # the reported ratio is the two reported times' ratio (how fast is benchmarks/decode_speed.py's job)
    assert speed["images"] == 7 and speed["exact_ms_per_image"] > 0 and speed["fast_ms_per_image"] > 0
    assert speed["fast_speedup"] == pytest.approx(speed["exact_ms_per_image"] / speed["fast_ms_per_image"],
                                                  rel=0.01)


def test_decode_column_hidden_when_only_exact(tiny_bundle: Path) -> None:
    from crisis_tool.runtime.bench.report import markdown

    opts = BenchOptions(tiny_bundle, backends=("onnxruntime",), batch_sizes=(1,), workload="image", seconds=0.1,
                        warmup=1, measure_gemm=False)
    header = markdown(run_bench(opts)).splitlines()
    table = [line for line in header if line.startswith("|")]
    assert "| decode |" not in table[0] and "| acc |" not in table[0] and "| % peak |" in table[0]


def test_timed_e2e_rows_decode_in_their_own_mode(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crisis_tool.runtime import predictor as predictor_module

    seen: list[str] = []
    real = predictor_module.decode_and_preprocess

    def spy(source, cfg, limits, decode="exact"):  # noqa: ANN001, ANN202 - a stand-in with the same call
        seen.append(decode)
        return real(source, cfg, limits, decode)

    monkeypatch.setattr(predictor_module, "decode_and_preprocess", spy)
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime",), batch_sizes=(2,), workload="e2e", seconds=0.1,
                        warmup=1, measure_gemm=False, decode=("fast",))
    (row,) = run_bench(opts)["rows"]
    assert row["decode"] == "fast" and row["status"] == "ok"
    assert seen and set(seen) == {"fast"}
