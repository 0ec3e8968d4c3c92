"""ONNX Runtime (fp32, int8) vs PyTorch eager on CPU for a ViT-B-32 bundle, measured side by side in one run.

Machine: the 2-core AMD EPYC CI VM (KVM, AVX2, no GPU), onnxruntime-gpu 1.31 (runs on CPUExecutionProvider
here), torch 2.14.1 CPU. Command (from the repo root, after `make .venv/.installed-stamp`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/e2e_cpu.py --seconds 2 --workdir /tmp/crisis-e2e-cpu

It builds a run dir with CLIP ViT-B-32 `--pretrained none` (random weights: speed does not depend on their
values) and a guided-diff head, exports it with `crisis-tool export --precision int8` (fp32 + int8 graphs),
then runs `crisis_tool.runtime.bench` for: e2e at batch 1 and 8; image encoder at batch 1, 8, 32; text
encoder on real tweet lengths and on fixed 77-token texts (interleaved in one bench). Targets: e2e batch 8
ORT fp32 >= 1.4x and int8 >= 1.8x torch eager; image encoder at batch 32 >= 90% of the measured fp32 GEMM
roofline; real-length text >= 1.6x the fixed-77 baseline; non-encoder share of e2e time <= 10%; plus cold
start (load to first prediction, fresh process). The bundle is reused when --workdir already holds one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from crisis_tool.runtime.bench import BenchOptions, run_bench
from crisis_tool.runtime.bench.report import render_table, write_json, write_markdown, write_plot

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
COLD_START = """
import sys, time, json
t0 = time.perf_counter()
from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.predictor import Predictor
t1 = time.perf_counter()
records = generate_records(1, sys.argv[3], seed=7)
t2 = time.perf_counter()
p = Predictor.from_bundle(sys.argv[1], precision=sys.argv[2])
out = p.predict(records)
t3 = time.perf_counter()
assert out[0].error is None, out[0].error
print(json.dumps({"import_s": t1 - t0, "load_s": p.cold_start_s, "load_to_first_prediction_s": t3 - t2}))
"""


def build_bundle(work: Path) -> Path:
    """Run dir (random ViT-B-32 + guided-diff head) -> bundle with fp32 and int8 graphs."""
    bundle = work / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    import torch

    from crisis_tool.cli import run
    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    clip = load_clip("ViT-B-32", "none")
    cfg = HeadConfig(num_classes=3, clip_embed_dim=clip.embed_dim)
    torch.manual_seed(0)
    config = {"task": "damage", "labels": ["little_or_no_damage", "mild_damage", "severe_damage"],
              "text_source": "tweet", "head": cfg.to_dict(), "clip": clip.describe(),
              "preprocess": clip.preprocess.to_dict()}
    save_run(work / "run", build_head(cfg).eval(), config, {})
    args = ["export", "--model", str(work / "run"), "--out", str(bundle), "--precision", "int8"]
    start = time.perf_counter()
    code = run(args)
    if code != 0:
        print(f"export refused the int8 variant (exit {code}); retrying with --force", file=sys.stderr)
        code = run([*args, "--force"])
    if code != 0:
        raise SystemExit(f"crisis-tool export failed (exit {code})")
    print(f"exported {bundle} in {time.perf_counter() - start:.0f} s")
    return bundle


def bench(bundle: Path, work: Path, name: str, component: str, sizes: tuple[int, ...], seconds: float,
          text_tokens: tuple[int | None, ...] = (None,)) -> dict[str, Any]:
    opts = BenchOptions(bundle=bundle, backends=BACKENDS, batch_sizes=sizes, workload=component,
                        seconds=seconds, warmup=1, text_tokens=text_tokens, gemm_seconds=3.0)
    result = run_bench(opts, progress=lambda msg: print(f"  [{name}] {msg}", file=sys.stderr, flush=True))
    Console(width=200).print(render_table(result))
    write_json(result, work / f"{name}.json")
    write_markdown(result, work / f"{name}.md")
    write_plot(result, work / f"{name}.png")
    return result


def row(result: dict[str, Any], choice: str, batch: int, text: int | str = "real") -> dict[str, Any]:
    return next(r for r in result["rows"]
                if r["choice"] == choice and r["batch_size"] == batch and r["text_tokens"] == text)


def cold_start(bundle: Path, work: Path, precision: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", COLD_START, str(bundle), precision, str(work / "cold")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_flop_counter(bundle: Path) -> tuple[float, float]:
    from crisis_tool.runtime.bench.flops import count_flops
    from crisis_tool.runtime.bundle import Bundle

    b = Bundle.load(bundle, verify=False)
    image = count_flops(b.graph_path("image_encoder", "fp32"), {"B": 1}) / 1e9
    text = count_flops(b.graph_path("text_encoder", "fp32"), {"B": 1, "L": 77}) / 1e9
    return image, text


def verdict(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "n/a"
    return "REACHED" if (value >= target if higher else value <= target) else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/crisis-e2e-cpu"))
    parser.add_argument("--seconds", type=float, default=2.0, help="timed budget per bench row")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(work)
    image_gflop, text_gflop = check_flop_counter(bundle)
    print(f"FLOP counter on this bundle: image encoder {image_gflop:.3f} GFLOP/image (ViT-B/32 reference 8.82), "
          f"text encoder {text_gflop:.3f} GFLOP per 77-token text (reference 5.96)")
    e2e = bench(bundle, work, "e2e", "e2e", (1, 8), args.seconds)
    image = bench(bundle, work, "image", "image", (1, 8, 32), args.seconds)
    text = bench(bundle, work, "text", "text", (1, 8), args.seconds, text_tokens=(None, 77))
    colds = {p: cold_start(bundle, work, p) for p in ("fp32", "int8")}

    fp32_8, int8_8 = row(e2e, "onnxruntime", 8), row(e2e, "onnxruntime-int8", 8)
    img32 = row(image, "onnxruntime", 32)
    real8, fixed8 = row(text, "onnxruntime", 8), row(text, "onnxruntime", 8, 77)
    text_ratio = real8["items_per_s"] / fixed8["items_per_s"] if real8["items_per_s"] else None
    share = fp32_8["non_encoder_share"]
    lines = [
        f"machine: {e2e['header']['cpu']}, {e2e['header']['threads']} threads, GPU {e2e['header']['gpu'] or 'none'}, "
        f"load average {e2e['header']['load_average']} (at start); fp32 GEMM roofline {image['header']['gemm_gflops']} "
        f"GFLOP/s (best matmul during the image bench; per-round mean "
        f"{image['header']['gemm_gflops_interleaved_mean']}; {image['header']['blas']})",
        f"e2e batch 8, ORT fp32 vs torch eager: {fp32_8['speedup_vs_torch']:.2f}x "
        f"(target >= 1.4x: {verdict(fp32_8['speedup_vs_torch'], 1.4)})",
        f"e2e batch 8, ORT int8 vs torch eager: {int8_8['speedup_vs_torch']:.2f}x "
        f"(target >= 1.8x: {verdict(int8_8['speedup_vs_torch'], 1.8)}; int8 top-1 agreement "
        f"{int8_8['top1_agreement']}, min cosine {int8_8['cosine']})",
        f"image encoder batch 32, ORT fp32: {img32['gflops']} GFLOP/s = {img32['roofline_pct']}% of GEMM roofline "
        f"(target >= 90%: {verdict(img32['roofline_pct'], 90)})",
        f"text encoder batch 8, ORT fp32, real tweet lengths vs fixed 77 tokens: {real8['items_per_s']:.1f} vs "
        f"{fixed8['items_per_s']:.1f} items/s = {text_ratio:.2f}x (target >= 1.6x: {verdict(text_ratio, 1.6)}); "
        f"torch eager (always pads to 77) {row(text, 'torch', 8)['items_per_s']:.1f} items/s",
        f"non-encoder share of e2e time, ORT fp32 batch 8: {100 * share:.1f}% "
        f"(target <= 10%: {verdict(share, 0.10, higher=False)}); stages ms {fp32_8['stages_ms']}",
        *(f"cold start {p} (fresh process): load bundle {c['load_s']:.2f} s, load to first prediction "
          f"{c['load_to_first_prediction_s']:.2f} s (+ {c['import_s']:.2f} s imports)" for p, c in colds.items()),
        f"in-process cold start (verify + session + first batch-1 e2e call): ORT fp32 "
        f"{row(e2e, 'onnxruntime', 1)['cold_start_s']} s, torch {row(e2e, 'torch', 1)['cold_start_s']} s",
    ]
    print("\n== summary ==\n" + "\n".join(lines))
    (work / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
