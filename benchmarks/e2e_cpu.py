"""int8 and the fastest CPU engine vs onnxruntime fp32, and onnxruntime vs PyTorch eager, for a ViT-B-32 bundle.

Machine: whichever runs it, named in the output: CPU model, the flags that decide int8 and bf16 speed (VNNI,
AVX512_BF16, AMX), threads, load average and package versions are printed first. Command (from the repo root,
with `pip install -e '.[torch,openvino]'`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/e2e_cpu.py --seconds 3 --workdir /tmp/crisis-e2e-cpu

It builds a run dir with CLIP ViT-B-32 `--pretrained none` (random weights: speed does not depend on their
values) and a guided-diff head, exports it with `crisis-tool export --precision int8` (fp32 + int8 graphs; several
minutes, so a bundle already in --workdir is reused), then runs `crisis_tool.runtime.bench` (every ratio below is
between rows of one bench run, interleaved round by round):

* e2e at batch 1 and 8 (torch, onnxruntime fp32, onnxruntime int8): the int8 bundle / the fp32 bundle at batch 8
  (target >= 1.5x), with top-1 agreement and min embedding cosine of int8 vs fp32 on --parity-records generated
  records (targets >= 99% and >= 0.999); onnxruntime fp32 and int8 / PyTorch eager (targets >= 1.4x, >= 1.8x);
  the non-encoder share of e2e time (target <= 10%);
* image encoder at batch 8 and 32 on every registered CPU engine (onnxruntime fp32/int8, openvino f32/bf16/int8;
  one that cannot run here is a row saying why): the fastest / onnxruntime fp32 (target >= 2x) with its cosine to
  onnxruntime fp32 (target >= 0.999);
* text encoder at batch 8 on real tweet lengths vs fixed 77-token texts (target >= 1.6x);
* per row, "% of this engine's peak" (each engine's own MatMul probe; see benchmarks/README.md);
* cold start: load to first prediction in a fresh process, fp32 and int8.

`--clip-model crisis-tiny --seconds 0.5` checks the script end to end in a minute (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from crisis_tool.runtime.backends import backend_variants, create_backend
from crisis_tool.runtime.bench import BenchOptions, run_bench
from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.bench.report import render_table, write_json, write_markdown, write_plot
from crisis_tool.runtime.bench.workloads import parity_outputs, prepare_batches
from crisis_tool.runtime.bundle import Bundle

E2E_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
IMAGE_BACKENDS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8")
BASELINE = "onnxruntime"  # onnxruntime fp32: the parity reference of the image bench (torch is left out there)
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


def save_random_run(run_dir: Path, clip_model: str = "ViT-B-32") -> Path:
    """A run dir with random `clip_model` encoders and a seeded 3-class guided-diff head (damage labels)."""
    import torch

    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    clip = load_clip(clip_model, "none")
    cfg = HeadConfig(num_classes=3, clip_embed_dim=clip.embed_dim)
    torch.manual_seed(0)
    config = {"task": "damage", "labels": ["little_or_no_damage", "mild_damage", "severe_damage"],
              "text_source": "tweet", "head": cfg.to_dict(), "clip": clip.describe(),
              "preprocess": clip.preprocess.to_dict()}
    save_run(run_dir, build_head(cfg).eval(), config, {})
    return run_dir


def build_bundle(work: Path, clip_model: str = "ViT-B-32") -> Path:
    """Run dir (random `clip_model` + guided-diff head) -> bundle with fp32 and int8 graphs; reused if present."""
    bundle = work / "bundle"
    if (bundle / "manifest.json").is_file():
        found = Bundle.load(bundle, verify=False).run_config().get("clip", {}).get("model_name")
        if found != clip_model:
            raise SystemExit(f"{bundle} holds a {found} bundle, not {clip_model}: use another --workdir")
        print(f"reusing {bundle} ({clip_model})")
        return bundle
    from crisis_tool.cli import run

    save_random_run(work / "run", clip_model)
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


def bench(bundle: Path, work: Path, name: str, workload: str, backends: tuple[str, ...], sizes: tuple[int, ...],
          seconds: float, text_tokens: tuple[int | None, ...] = (None,)) -> dict[str, Any]:
    """One bench run (rows interleaved round by round); the table is printed and kept as JSON/Markdown/PNG."""
    opts = BenchOptions(bundle=bundle, backends=backends, batch_sizes=sizes, workload=workload, seconds=seconds,
                        warmup=1, text_tokens=text_tokens)
    result = run_bench(opts, progress=lambda msg: print(f"  [{name}] {msg}", file=sys.stderr, flush=True))
    Console(width=400).print(render_table(result, wide=True))  # every column, as in the Markdown file
    write_json(result, work / f"{name}.json")
    write_markdown(result, work / f"{name}.md")
    write_plot(result, work / f"{name}.png")
    return result


def row(result: dict[str, Any], choice: str, batch: int, text: int | str = "real") -> dict[str, Any]:
    return next(r for r in result["rows"]
                if r["choice"] == choice and r["batch_size"] == batch and r["text_tokens"] == text)


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """items/s of row a over row b (same run), or None when either did not run."""
    if a["status"] != "ok" or b["status"] != "ok" or not a["items_per_s"] or not b["items_per_s"]:
        return None
    return a["items_per_s"] / b["items_per_s"]


def int8_parity(bundle_path: Path, work: Path, n: int) -> dict[str, float]:
    """onnxruntime int8 vs fp32 on `n` generated records (the e2e path of the bench): top-1 agreement of the
    logits, min cosine of the image and of the text embeddings."""
    bundle = Bundle.load(bundle_path)
    records = generate_records(n, work / "parity_images", seed=11)
    batches = prepare_batches(bundle, [records[i:i + 32] for i in range(0, n, 32)], "e2e")
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for precision in ("fp32", "int8"):
        backend = create_backend("onnxruntime", bundle, precision=precision)
        try:
            per_batch = [parity_outputs("e2e", backend, b) for b in batches]
        finally:
            backend.close()
        outputs[precision] = {k: np.concatenate([o[k] for o in per_batch]) for k in per_batch[0]}
    fp32, int8 = outputs["fp32"], outputs["int8"]

    def min_cosine(key: str) -> float:
        a, b = fp32[key].astype(np.float64), int8[key].astype(np.float64)
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    return {"records": n, "top1_agreement": float((fp32["logits"].argmax(1) == int8["logits"].argmax(1)).mean()),
            "image_cosine": min_cosine("image_embeds"), "text_cosine": min_cosine("text_embeds")}


def cold_start(bundle: Path, work: Path, precision: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", COLD_START, str(bundle), precision, str(work / "cold")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def flop_counts(bundle: Path) -> tuple[float, float]:
    """GFLOP per image and per 77-token text, counted from the fp32 graphs."""
    from crisis_tool.runtime.bench.flops import count_flops

    b = Bundle.load(bundle, verify=False)
    image = count_flops(b.graph_path("image_encoder", "fp32"), {"B": 1}) / 1e9
    text = count_flops(b.graph_path("text_encoder", "fp32"), {"B": 1, "L": 77}) / 1e9
    return image, text


def verdict(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "n/a"
    return "REACHED" if (value >= target if higher else value <= target) else "MISSED"


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def peak_lines(name: str, result: dict[str, Any]) -> list[str]:
    """Per row: items/s and % of its own engine's peak (the peak from the same run's probes)."""
    peaks = result["header"].get("engine_peaks") or {}
    lines = [f"{name}: % of this engine's peak (MatMul probe in the same session type and precision)"]
    for r in result["rows"]:
        peak = peaks.get(r["choice"], {})
        where = f"of {peak['gflops']} GFLOP/s" if "gflops" in peak else f"({peak.get('note', 'no probe')})"
        text = "" if r["workload"] != "text" else f", text {r['text_tokens']}"
        if r["status"] != "ok":
            lines.append(f"  {r['choice']:18} batch {r['batch_size']:>2}{text}: {r['status']}")
            continue
        lines.append(f"  {r['choice']:18} batch {r['batch_size']:>2}{text}: {r['items_per_s']:8.2f} items/s on "
                     f"{r['provider']}, {fmt(r['gflops'], '.1f')} GFLOP/s = {fmt(r['roofline_pct'], '.1f', '%')} "
                     f"{where}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/crisis-e2e-cpu"))
    parser.add_argument("--seconds", type=float, default=2.0, help="timed budget per bench row")
    parser.add_argument("--clip-model", default="ViT-B-32", help="CLIP architecture (crisis-tiny: a quick check)")
    parser.add_argument("--parity-records", type=int, default=256, help="records for int8 vs fp32 top-1/cosine")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from openvino_cpu import cpu_description  # the sibling script (it imports this one: imported here, late)

    model, flags = cpu_description()
    print(f"CPU: {model}; flags: {', '.join(flags) or 'none of the listed ones'}")
    bundle = build_bundle(work, args.clip_model)
    image_gflop, text_gflop = flop_counts(bundle)
    reference = " (ViT-B/32 reference 8.82 and 5.96)" if args.clip_model == "ViT-B-32" else ""
    print(f"FLOP counter on this bundle: image encoder {image_gflop:.3f} GFLOP/image, text encoder "
          f"{text_gflop:.3f} GFLOP per 77-token text{reference}")
    variants = backend_variants()
    image_backends = tuple(b for b in IMAGE_BACKENDS if b in variants)
    e2e = bench(bundle, work, "e2e", "e2e", E2E_BACKENDS, (1, 8), args.seconds)
    image = bench(bundle, work, "image", "image", image_backends, (8, 32), args.seconds)
    text = bench(bundle, work, "text", "text", E2E_BACKENDS, (8,), args.seconds, text_tokens=(None, 77))
    parity = int8_parity(bundle, work, args.parity_records)
    colds = {p: cold_start(bundle, work, p) for p in ("fp32", "int8")}

    fp32_8, int8_8, torch_8 = row(e2e, "onnxruntime", 8), row(e2e, "onnxruntime-int8", 8), row(e2e, "torch", 8)
    int8_ratio = ratio(int8_8, fp32_8)
    min_cos = min(parity["image_cosine"], parity["text_cosine"])
    header = e2e["header"]
    lines = [
        f"machine: {header['cpu']} (flags: {', '.join(flags) or '-'}), {header['threads']} threads, GPU "
        f"{header['gpu'] or 'none'}, load average {header['load_average']} (at start); versions {header['versions']}",
        f"e2e batch 8, int8 bundle / fp32 bundle (onnxruntime): {fmt(int8_ratio, '.2f', 'x')} "
        f"(target >= 1.5x: {verdict(int8_ratio, 1.5)})",
        f"  int8 vs fp32 on {parity['records']} records: top-1 agreement {100 * parity['top1_agreement']:.1f}% "
        f"(target >= 99%: {verdict(parity['top1_agreement'], 0.99)}), min cosine {min_cos:.5f} (image "
        f"{parity['image_cosine']:.5f}, text {parity['text_cosine']:.5f}; target >= 0.999: {verdict(min_cos, 0.999)})",
        f"e2e batch 8, onnxruntime fp32 / PyTorch eager: {fmt(ratio(fp32_8, torch_8), '.2f', 'x')} "
        f"(target >= 1.4x: {verdict(ratio(fp32_8, torch_8), 1.4)})",
        f"e2e batch 8, onnxruntime int8 / PyTorch eager: {fmt(ratio(int8_8, torch_8), '.2f', 'x')} "
        f"(target >= 1.8x: {verdict(ratio(int8_8, torch_8), 1.8)})",
    ]
    for batch in (8, 32):
        base = row(image, BASELINE, batch)
        ok = [r for r in image["rows"] if r["batch_size"] == batch and r["status"] == "ok"]
        best = max(ok, key=lambda r: r["items_per_s"]) if ok else None
        speed = ratio(best, base) if best else None
        cos = best["cosine"] if best else None  # vs onnxruntime fp32 on the same images (1.0 for itself)
        lines.append(
            f"image encoder batch {batch}, fastest CPU engine {best['choice'] if best else 'n/a'} "
            f"({best['provider'] if best else '-'}) / onnxruntime fp32: {fmt(speed, '.2f', 'x')} (target >= 2x: "
            f"{verdict(speed, 2.0)}), cosine {fmt(cos, '.5f')} (target >= 0.999: {verdict(cos, 0.999)})")
    img32 = row(image, BASELINE, 32)
    real8, fixed8 = row(text, BASELINE, 8), row(text, BASELINE, 8, 77)
    text_ratio = ratio(real8, fixed8)
    share = fp32_8["non_encoder_share"]
    share_pct = None if share is None else 100 * share
    lines += [
        f"image encoder batch 32, onnxruntime fp32: {fmt(img32['roofline_pct'], '.1f', '%')} of its engine's peak "
        f"(target >= 90%: {verdict(img32['roofline_pct'], 90)})",
        f"text encoder batch 8, onnxruntime fp32, real tweet lengths / fixed 77 tokens: {fmt(text_ratio, '.2f', 'x')} "
        f"(target >= 1.6x: {verdict(text_ratio, 1.6)}); torch eager (always pads to 77) "
        f"{fmt(row(text, 'torch', 8)['items_per_s'], '.1f')} items/s",
        f"non-encoder share of e2e time, onnxruntime fp32 batch 8: {fmt(share_pct, '.1f', '%')} "
        f"(target <= 10%: {verdict(share, 0.10, higher=False)}); stages ms {fp32_8['stages_ms']}",
        *(f"cold start {p} (fresh process): load bundle {c['load_s']:.2f} s, load to first prediction "
          f"{c['load_to_first_prediction_s']:.2f} s (+ {c['import_s']:.2f} s imports)" for p, c in colds.items()),
        f"in-process cold start (verify + session + first batch-1 e2e call): onnxruntime fp32 "
        f"{row(e2e, 'onnxruntime', 1)['cold_start_s']} s, int8 {row(e2e, 'onnxruntime-int8', 1)['cold_start_s']} s, "
        f"torch {row(e2e, 'torch', 1)['cold_start_s']} s",
        *peak_lines("e2e", e2e), *peak_lines("image encoder", image), *peak_lines("text encoder", text),
    ]
    print("\n== summary ==\n" + "\n".join(lines))
    (work / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "summary.json").write_text(json.dumps({"int8_parity": parity, "cold_start": colds}, indent=2) + "\n",
                                       encoding="utf-8")


if __name__ == "__main__":
    main()
