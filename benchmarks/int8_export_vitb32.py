"""int8 export of a ViT-B-32 run (random weights) calibrated and gated on a synthetic split, plus the TensorRT
Q/DQ text graph on real tweets (issue 11's "Done when").

Command (from the repo root, after `make .venv/.installed-stamp`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8_export_vitb32.py --workdir /tmp/crisis-int8-vitb32

Steps:
1. a run dir: CLIP ViT-B-32 `--pretrained none` (random weights) with a 3-class head, as `benchmarks/e2e_cpu.py`;
2. a synthetic CrisisMMD split: `crisis-tool make-demo-data --n-train N`;
3. `crisis-tool export --precision int8 --calib-data DEMO --task damage --split train --calib-n N` (the CLI, in a
   subprocess, timed); then, per graph from the bundle's manifest: the precision chosen, the calibration source,
   n, cosine, top-1 with its 95% interval, and every int8 candidate's gate result and time;
4. the TensorRT Q/DQ text graph as `crisis-tool export --from-bundle B --format trt --precision int8
   --calib-data ...` first makes it before the builder (every MatMul/Gemm weight node quantized, calibrated on the
   first 128 of the same records) with its int8 gate in onnxruntime (`--full-gating` also runs the whole gated
   path, `engine_parity.engine_source`, whose node ranking takes long on a full-size model), run on real
   tweets: settingA `tweet_text` of the real CrisisMMD TSVs (read here at run time, never stored in the repo),
   composed by `record_text` and tokenized by the runtime tokenizer with each batch trimmed to its longest tweet,
   as predict does. Its cosine to the fp32 text graph, per tweet. For comparison, the same Q/DQ recipe
   calibrated on other real tweets (a disjoint sample).

Nothing here needs a GPU or TensorRT. The run dir, demo data and bundle are reused when --workdir holds them.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "crisismmd_real"
CLI = [str(Path(sys.executable).with_name("crisis-tool"))]


def make_run(work: Path) -> Path:
    """Run dir with random ViT-B-32 and a 3-class head (as benchmarks/e2e_cpu.py)."""
    from crisis_tool.run_dir import WEIGHTS_NAME

    run_dir = work / "run"
    if (run_dir / WEIGHTS_NAME).is_file():
        return run_dir
    from e2e_cpu import save_random_run  # the sibling script: the same random run as the e2e benchmark

    save_random_run(run_dir)
    return run_dir


def run_cli(args: list[str]) -> tuple[float, str]:
    """Run `crisis-tool ARGS` in a subprocess; (seconds, stderr). Exits on failure."""
    start = time.perf_counter()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(done.stdout[-6000:])
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"crisis-tool {args[0]} failed (exit {done.returncode})")
    return seconds, done.stderr


def export(work: Path, run_dir: Path, demo: Path, n: int) -> tuple[Path, list[str], float | None]:
    bundle = work / "bundle"
    args = ["export", "--model", str(run_dir), "--out", str(bundle), "--precision", "int8", "--calib-data",
            str(demo), "--task", "damage", "--split", "train", "--calib-n", str(n)]
    if (bundle / "manifest.json").is_file():
        return bundle, args, None
    seconds, err = run_cli(args)
    if err.strip():
        print("export stderr:\n" + err.strip())
    return bundle, args, seconds


def _interval(entry: dict[str, Any]) -> str:
    if "top1_agreement" not in entry:
        return "-"
    lo, hi = entry["top1_interval"]
    return f"{entry['top1_agreement']:.4f} [{lo:.4f}, {hi:.4f}]"


def report_manifest(bundle: Path) -> dict[str, Any]:
    """Per graph of the int8 variant: chosen, calibration, n, cosine, top-1 [95% CI], candidates and times."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(f"manifest calibration: {manifest.get('calibration')}")
    print(f"validated: {manifest['validated']}")
    report = manifest["parity"]["int8"]
    print(f"{'graph':<14} {'chosen':<24} {'n':>4} {'min cosine':>10} {'top-1 [95% CI]':>26}  calibration")
    for graph, entry in report.items():
        print(f"{graph:<14} {entry.get('chosen', '-'):<24} {entry['n']:>4} {entry['min_cosine']:>10.6f} "
              f"{_interval(entry):>26}  {entry.get('calibration')}")
    print("int8 candidates (gate in onnxruntime CPU; best of 3 interleaved runs at one gate batch):")
    for graph, entry in report.items():
        if "candidates" not in entry:
            continue
        print(f"  {graph}: fp32 {entry['fp32_seconds'] * 1e3:.3g} ms; why: {entry.get('why')}")
        for name, c in entry["candidates"].items():
            timing = f"{c['seconds'] * 1e3:.3g} ms" if "seconds" in c else "not timed (failed its gate)"
            key = "top1_agreement" if "top1_agreement" in c else "min_cosine"
            print(f"    {name:<24} {'pass' if c.get('passed') else 'FAIL'} {key} {c.get(key, float('nan')):.6f}"
                  f"  {timing}")
    for attempt in report["end_to_end"].get("fallback", []):
        print(f"  end-to-end attempt fp32={attempt['fp32'] or 'none'}: top1 {attempt.get('top1_agreement')} "
              f"{'pass' if attempt.get('passed') else 'fail'}")
    return manifest


def read_real_tweets(root: Path) -> list[str]:
    """Every distinct settingA tweet_text (quoting off: tweets hold bare quotes)."""
    texts: set[str] = set()
    for path in sorted((root / "settingA").glob("*.tsv")):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            column = next(reader).index("tweet_text")
            texts.update(row[column] for row in reader if len(row) > column)
    return sorted(texts)


def token_batches(tokenizer: Any, texts: list[str], batch: int = 32) -> list[np.ndarray]:
    from crisis_tool.runtime.record_text import record_text

    composed = [record_text(t, None, "tweet").text for t in texts]
    return [tokenizer.tokenize(composed[i:i + batch], trim=True).astype(np.int64)
            for i in range(0, len(composed), batch)]


def cosines(graph: Path, reference: Path, batches: list[np.ndarray]) -> np.ndarray:
    from crisis_tool.export.validate import open_session

    got_s, ref_s = open_session(graph), open_session(reference)
    out = []
    for ids in batches:
        got = got_s.run(None, {"input_ids": ids})[0].astype(np.float64)
        ref = ref_s.run(None, {"input_ids": ids})[0].astype(np.float64)
        out.append(np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)))
    return np.concatenate(out)


def describe(cos: np.ndarray) -> str:
    return (f"n={cos.size} min {cos.min():.6f}, 1st pct {np.percentile(cos, 1):.6f}, median {np.median(cos):.6f}, "
            f"share >= 0.999: {np.mean(cos >= 0.999):.4f}")


def trt_text_graph(work: Path, bundle: Path, demo: Path, n: int, tweets: int, seed: int, full: bool
                   ) -> dict[str, Any]:
    """The TensorRT Q/DQ text graph on real tweets, vs the fp32 text graph.

    Always: the first graph `--format trt` tries (every weight node quantized, calibrated on the first 128 gate
    records), with its int8 gate in onnxruntime. With `full`: the whole gated path (`engine_source`), which, when
    that graph fails the gate, ranks every weight node by quantizing it alone (one calibration each) and leaves
    the worst in float until the graph passes: long on a full-size model.
    """
    from crisis_tool.export.calibration import CalibrationSpec, calibration_feeds
    from crisis_tool.export.engine_parity import engine_gate_cases, engine_source
    from crisis_tool.export.qdq import name_nodes, qdq_graph, residual_writers, scale_problems, weight_nodes
    from crisis_tool.export.validate import check_graph
    from crisis_tool.runtime.manifest import Manifest
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    manifest = Manifest.load(bundle)
    fp32 = bundle / manifest.graphs["fp32"]["text_encoder"].file
    tok = ClipTokenizer(bundle / manifest.tokenizer.vocab_file, context_length=manifest.tokenizer.context_length)
    scratch = work / "trt_qdq"
    scratch.mkdir(exist_ok=True)
    spec = CalibrationSpec(data=demo, task="damage", split="train", limit=n)
    data, cases = engine_gate_cases(bundle, manifest, spec, manifest.max_batch)

    texts = read_real_tweets(REAL_ROOT)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(texts), size=min(2 * tweets, len(texts)), replace=False)
    evaluate = [texts[i] for i in picked[:tweets]]
    calibrate = [texts[i] for i in picked[tweets:]]
    batches = token_batches(tok, evaluate)
    lengths = np.concatenate([(ids != 0).sum(1) for ids in batches])
    print(f"real tweets: {len(texts)} distinct settingA tweet_text; evaluated on {len(evaluate)} (seed {seed}), "
          f"tokens per tweet mean {lengths.mean():.1f}, max {lengths.max()} (batches of 32, trimmed)")

    import onnx

    start = time.perf_counter()
    first = qdq_graph(fp32, scratch / "text_encoder.qdq.first.onnx", calibration_feeds("text_encoder", cases),
                      flavour="tensorrt")
    gate = check_graph("text_encoder", first, cases, "int8")
    nodes = len(weight_nodes(onnx.load(str(first), load_external_data=False)))
    print(f"TensorRT Q/DQ text graph, first try (calibration {data.source}, {min(data.n, 128)} records; made and "
          f"gated in {time.perf_counter() - start:.0f} s): int8 gate in onnxruntime on n={gate['n']}: min cosine "
          f"{gate['min_cosine']:.6f} ({'pass' if gate['passed'] else 'FAIL'}); non-finite scales: "
          f"{len(scale_problems(first))}")
    results: dict[str, Any] = {"first_gate": gate, "calibration": data.source, "n": data.n, "nodes": nodes}
    cos = cosines(first, fp32, batches)
    print(f"  first try vs fp32, real tweets: {describe(cos)}")
    results["first_real"] = describe(cos)
    model = onnx.load(str(fp32), load_external_data=False)
    name_nodes(model)
    writers = residual_writers(model)
    kept = [n for n in weight_nodes(model) if n not in writers]
    start = time.perf_counter()
    second = qdq_graph(fp32, scratch / "text_encoder.qdq.writers-float.onnx", calibration_feeds("text_encoder", cases),
                       flavour="tensorrt", nodes=kept)
    gate2 = check_graph("text_encoder", second, cases, "int8")
    print(f"second try, the {len(writers)} residual-stream writers left in float ({len(kept)} weight nodes "
          f"quantized; {time.perf_counter() - start:.0f} s): int8 gate on n={gate2['n']}: min cosine "
          f"{gate2['min_cosine']:.6f} ({'pass' if gate2['passed'] else 'FAIL'})")
    cos = cosines(second, fp32, batches)
    print(f"  second try vs fp32, real tweets: {describe(cos)}")
    results["second_gate"], results["second_real"] = gate2, describe(cos)
    if calibrate:
        own2 = qdq_graph(fp32, scratch / "text_encoder.qdq.writers-float.real-calibrated.onnx",
                         [{"input_ids": ids} for ids in token_batches(tok, calibrate[:128])], flavour="tensorrt",
                         nodes=kept)
        cos = cosines(own2, fp32, batches)
        print(f"  second try calibrated on {min(len(calibrate), 128)} other real tweets instead: {describe(cos)}")
        results["second_real_calibrated"] = describe(cos)
    if full:
        start = time.perf_counter()
        source, built_as, report = engine_source("text_encoder", fp32, scratch, "int8", cases, data.source)
        gated = report["qdq_onnxruntime"]
        print(f"gated path ({time.perf_counter() - start:.0f} s): built as {built_as}, {gated['quantized_nodes']} "
              f"weight nodes quantized, {len(gated['excluded'])} left float, gate {gated.get('min_cosine')}")
        if built_as == "int8":
            cos = cosines(source, fp32, batches)
            print(f"  gated Q/DQ text graph vs fp32, real tweets: {describe(cos)}")
            results["gated_real"] = describe(cos)
    if calibrate:
        own = qdq_graph(fp32, scratch / "text_encoder.qdq.real-calibrated.onnx",
                        [{"input_ids": ids} for ids in token_batches(tok, calibrate[:128])], flavour="tensorrt")
        cos = cosines(own, fp32, batches)
        print(f"  the same recipe calibrated on {min(len(calibrate), 128)} other real tweets instead: "
              f"{describe(cos)}")
        results["real_calibrated"] = describe(cos)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/crisis-int8-vitb32"))
    parser.add_argument("--calib-n", type=int, default=512, help="records of the synthetic split (gates + calib)")
    parser.add_argument("--tweets", type=int, default=512, help="real tweets to evaluate the Q/DQ text graph on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-gating", action="store_true",
                        help="also run the whole gated Q/DQ path (node ranking when the first try fails: long)")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    run_dir = make_run(work)
    demo = work / "demo"
    if not any(demo.glob("**/*.tsv")):
        run_cli(["make-demo-data", "--out", str(demo), "--n-train", str(args.calib_n), "--n-dev", "4",
                 "--n-test", "4"])
    bundle, command, seconds = export(work, run_dir, demo, args.calib_n)
    print("command: crisis-tool " + " ".join(command))
    if seconds is not None:
        print(f"export took {seconds:.0f} s")
    report_manifest(bundle)
    trt_text_graph(work, bundle, demo, args.calib_n, args.tweets, args.seed, args.full_gating)


if __name__ == "__main__":
    main()
