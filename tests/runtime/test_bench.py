"""`crisis-tool bench` on the exported crisis-tiny bundle, its outputs, inputs and the ONNX FLOP counter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.bench import BenchOptions, run_bench
from crisis_tool.runtime.bench.inputs import TWEET_TOKEN_LENGTHS, generate_records, sample_text_lengths

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROW_KEYS = {"backend", "precision", "provider", "batch_size", "status", "p50_ms", "p90_ms", "p99_ms",
            "items_per_s", "speedup_vs_torch", "max_abs_diff", "cosine", "top1_agreement", "model_mb"}


@pytest.fixture(scope="module")
def cli_run(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    pytest.importorskip("torch")
    from crisis_tool.cli import run

    out = tmp_path_factory.mktemp("bench")
    code = run(["bench", "--bundle", str(tiny_bundle), "--backends", "torch,onnxruntime,onnxruntime-int8,tensorrt",
                "--batch-sizes", "1,4", "--seconds", "0.3", "--warmup", "1", "--threads", "2", "--no-gemm",
                "--json", str(out / "b.json"), "--markdown", str(out / "b.md"), "--plot", str(out / "b.png")])
    return code, out


def test_bench_cli_rows_and_json(cli_run: tuple[int, Path], tiny_bundle: Path) -> None:
    code, out = cli_run
    assert code == 0
    result = json.loads((out / "b.json").read_text())
    header, rows = result["header"], result["rows"]
    assert {"cpu", "threads", "gpu", "versions", "blas", "gemm_gflops"} <= set(header)
    assert header["threads"] == 2 and header["parity_reference"] == "torch"
    assert [(r["choice"], r["batch_size"]) for r in rows] == [
        (c, b) for c in ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt") for b in (1, 4)]
    for r in rows:
        assert ROW_KEYS <= set(r)
    by = {(r["choice"], r["batch_size"]): r for r in rows}
    for b in (1, 4):
        assert by["tensorrt", b]["status"].startswith("unavailable: ")
        assert by["tensorrt", b]["items_per_s"] is None
        has_int8 = "int8" in json.loads((tiny_bundle / "manifest.json").read_text())["graphs"]
        assert by["onnxruntime-int8", b]["status"].startswith("ok" if has_int8 else "unavailable: ")
        ort, ref = by["onnxruntime", b], by["torch", b]
        for r in (ort, ref):
            assert r["status"] == "ok" and r["reps"] >= 3
            assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
            assert r["max_abs_diff"] is not None and r["cosine"] is not None and r["top1_agreement"] is not None
            assert set(r["stages_ms"]) >= {"decode_preprocess", "tokenize", "image_encoder", "text_encoder", "head"}
        assert ort["provider"] == "CPUExecutionProvider" and ref["provider"].startswith("torch")
        # torch and onnxruntime fp32 run the same model: close, but not bit-identical (0.0 would mean the row
        # was compared with itself)
        assert 0.0 < ort["max_abs_diff"] < 1e-3 and ort["cosine"] > 0.9999 and ort["top1_agreement"] == 1.0
        graphs = ("image_encoder.onnx", "text_encoder.onnx", "head_damage.onnx")
        expected_mb = sum((tiny_bundle / g).stat().st_size for g in graphs) / 1e6
        assert ort["model_mb"] == pytest.approx(expected_mb, abs=1e-3)


def test_bench_markdown_and_plot(cli_run: tuple[int, Path]) -> None:
    from PIL import Image

    _, out = cli_run
    md = (out / "b.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert table[0].startswith("| backend | prec | provider | batch | text | status |")
    assert set(table[1]) <= {"|", "-", ":"} and len(table) == 2 + 8
    assert any("unavailable" in line and "tensorrt" in line for line in table)
    assert any(line.startswith("- CPU: ") for line in md)
    png = (out / "b.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "b.png") as img:
        assert img.width >= 400 and img.height >= 300


def test_text_component_real_lengths_and_fixed_77(tiny_bundle: Path) -> None:
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime",), batch_sizes=(2,), workload="text",
                        seconds=0.2, warmup=1, gemm_seconds=0.2, text_tokens=(None, 77))
    result = run_bench(opts)
    real, fixed = result["rows"]
    assert (real["text_tokens"], fixed["text_tokens"]) == ("real", 77)
    assert result["header"]["flops_note"] is None
    assert result["header"]["engine_peaks"]["onnxruntime"]["gflops"] > 0
    for r in (real, fixed):
        # > 0 only: the share of a peak measured at another moment can pass 100% on a loaded machine
        assert r["status"] == "ok" and r["gflop_per_item"] > 0 and r["roofline_pct"] > 0
        assert r["speedup_vs_torch"] is None
    # crisis-tiny text tower (width 64, 2 layers): 2 * (77 * 2 * 12 * 64^2 + 2 * 2 * 77^2 * 64) FLOPs at 77 tokens
    assert fixed["gflop_per_item"] == pytest.approx(2 * (77 * 2 * 12 * 64**2 + 2 * 2 * 77**2 * 64) / 1e9, rel=1e-3)
    assert real["gflop_per_item"] < fixed["gflop_per_item"] / 2


def test_bad_arguments_are_usage_errors(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crisis_tool.cli import run

    assert run(["bench", "--bundle", str(tiny_bundle), "--backends", "cuda-magic"]) == 2
    assert run(["bench", "--bundle", str(tiny_bundle), "--batch-sizes", "1,x"]) == 2
    assert run(["bench", "--bundle", str(tiny_bundle), "--component", "vision"]) == 2
    assert run(["bench", "--bundle", str(tiny_bundle), "--text-tokens", "real,99"]) == 2
    assert run(["bench", "--bundle", str(tiny_bundle / "nope")]) == 2
    assert run(["bench", "--bundle", str(tiny_bundle), "--decode", "exact,blurry"]) == 2
    assert run(["bench", "--bundle", str(tiny_bundle), "--max-drop", "0.01"]) == 2  # no labelled records
    assert run(["bench", "--bundle", str(tiny_bundle), "--data", str(tiny_bundle), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 8 and "Traceback" not in err
    assert "--max-drop needs labelled records" in err and "no test split for task damage" in err


@pytest.mark.parametrize("argv", [
    ["--seconds", "nan"], ["--seconds", "inf"], ["--seconds", "0"], ["--seconds", "-1"],
    ["--batch-sizes", "100000"], ["--batch-sizes", "1,0"], ["--warmup", "100000"], ["--threads", "0"],
    ["--max-drop", "nan"], ["--max-drop", "-0.1"],
])
def test_absurd_bounds_are_refused_before_any_work(tiny_bundle: Path, tmp_path: Path, argv: list[str],
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from crisis_tool.cli import run
    from crisis_tool.runtime.bench import run as bench_run

    monkeypatch.setattr(bench_run, "run_bench", lambda *a, **k: pytest.fail("bench started"))
    monkeypatch.setattr(bench_run.bench_inputs, "make_jpeg", lambda *a, **k: pytest.fail("inputs generated"))
    out = tmp_path / "b.json"
    assert run(["bench", "--bundle", str(tiny_bundle), "--json", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and argv[0] in err[0]
    assert not out.exists()


def test_generated_texts_have_the_sampled_token_lengths(tmp_path: Path) -> None:
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    tokenizer = pytest.importorskip("open_clip.tokenizer")
    tok = ClipTokenizer(tokenizer.default_bpe())
    lengths = sample_text_lengths(4000, np.random.default_rng(1))
    assert 16 <= np.median(lengths) <= 20 and 25 <= np.percentile(lengths, 90) <= 29
    assert set(np.unique(lengths)) <= set(TWEET_TOKEN_LENGTHS)
    records = generate_records(12, tmp_path, seed=3)
    expected = sample_text_lengths(12, np.random.default_rng(3))
    ids = tok([r.text for r in records])
    assert list((ids != 0).sum(axis=1)) == list(expected)
    assert len({Path(r.image).stat().st_size for r in records}) > 1
    fixed = generate_records(3, tmp_path / "fixed", seed=4, text_tokens=77)
    assert ((tok([r.text for r in fixed]) != 0).sum(axis=1) == 77).all()


def _save(nodes: list, inputs: list, outputs: list, inits: list, path: Path) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_flop_counter_exact_on_handmade_graphs(tmp_path: Path) -> None:
    from crisis_tool.runtime.bench.flops import count_flops

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 24)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.standard_normal((24, 10)).astype(np.float32), "g")
    k = numpy_helper.from_array(rng.standard_normal((8, 3, 4, 4)).astype(np.float32), "k")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    # x[B,L,16] @ w[16,24] -> h; attention-style h @ h^T (two activations) -> s[B,L,L]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "ht"], ["y"])]
    path = _save(nodes, [x], [y], [w], tmp_path / "mm.onnx")
    b, n = 3, 5
    assert count_flops(path, {"B": b, "L": n}) == 2 * b * n * 16 * 24 + 2 * b * n * n * 24
    # Gemm [B,24] x [24,10] and a 4x4 stride-4 Conv on [B,3,8,8]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 24])
    gemm = _save([helper.make_node("Gemm", ["z", "g"], ["y"])], [z], [y], [g], tmp_path / "gemm.onnx")
    assert count_flops(gemm, {"B": 7}) == 2 * 7 * 24 * 10
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["B", 3, 8, 8])
    conv = _save([helper.make_node("Conv", ["img", "k"], ["y"], strides=[4, 4])], [img], [y], [k],
                 tmp_path / "conv.onnx")
    assert count_flops(conv, {"B": 2}) == 2 * (2 * 8 * 2 * 2) * (3 * 4 * 4)


def test_bench_modules_import_without_torch_or_onnx() -> None:
    import subprocess
    import sys

    code = ("import sys, crisis_tool.runtime.bench, crisis_tool.runtime.bench.report, crisis_tool.commands.bench_cmd;"
            "print(sorted(m for m in ('torch', 'onnx', 'open_clip', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bench_on_records_file(tiny_bundle: Path, tmp_path: Path) -> None:
    records = generate_records(3, tmp_path / "img", seed=5)
    jsonl = tmp_path / "img" / "records.jsonl"  # relative images resolve next to the file
    lines = [json.dumps({"id": r.id, "text": r.text, "image": Path(r.image).name}) for r in records]
    jsonl.write_text("\n".join([*lines, '{"id": "broken", "text": "x", "image": "missing.jpg"}']) + "\n")
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime",), batch_sizes=(2,), workload="e2e", seconds=0.1,
                        warmup=1, measure_gemm=False, records=jsonl)
    result = run_bench(opts)
    (row,) = result["rows"]
    assert result["header"]["inputs"].endswith("records.jsonl") and "engine_peaks" not in result["header"]
    assert row["status"] == "ok" and row["stages_ms"]["image_encoder"] > 0 and row["roofline_pct"] is None
