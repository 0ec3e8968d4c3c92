"""OpenVINO f32 / bf16 / int8 vs onnxruntime fp32 on the image encoder of a ViT-B-32 bundle, side by side.

Command (from the repo root, with `pip install -e '.[torch,openvino]'`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/openvino_cpu.py --rounds 5 --workdir /tmp/crisis-openvino-cpu

It builds (or reuses) the random-weight ViT-B-32 bundle with fp32 + int8 graphs exactly as `e2e_cpu.py` does,
preprocesses the same synthetic photos once, then times one `encode_image` call per engine per round, the
engines interleaved within each round so that load from other processes hits them alike. Reported per engine and
batch: median seconds per call, images/s, the ratio to onnxruntime fp32 measured in the same run, and the
minimum cosine of its embeddings to onnxruntime fp32's on the same images. Absolute times move with the load
of a shared machine; the ratios are what to read. The CPU flags that decide the answer are printed first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crisis_tool.runtime.backends import create_backend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.preprocess import PreprocessConfig, preprocess_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_cpu import build_bundle  # noqa: E402 - the sibling script builds the ViT-B-32 bundle

# label -> (registry backend, precision, extra options)
ENGINES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime fp32": ("onnxruntime", "fp32", {}),
    "onnxruntime int8": ("onnxruntime", "int8", {}),
    "openvino f32": ("openvino", "fp32", {}),
    "openvino bf16": ("openvino", "bf16", {}),
    "openvino int8": ("openvino", "int8", {}),
    "openvino int8 (bf16 rest)": ("openvino", "int8", {"inference_precision": "bf16"}),
}
BASELINE = "onnxruntime fp32"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")


def cpu_description() -> tuple[str, list[str]]:
    """(CPU model, the flags of FLAGS it has) from /proc/cpuinfo (Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown", []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return model, [f for f in FLAGS if f in flags]


def photos(bundle: Bundle, n: int, seed: int = 0) -> np.ndarray:
    """n preprocessed synthetic photos (smooth gradients plus noise, 640x480), float32 [n,3,H,W]."""
    rng = np.random.default_rng(seed)
    cfg = PreprocessConfig.from_dict(bundle.preprocess_config)
    yy, xx = np.mgrid[0:480, 0:640] / 640.0
    out = []
    for _ in range(n):
        base = np.stack([np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)], axis=-1)
        base = base * np.cos(yy * rng.uniform(1, 5))[..., None]
        pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        out.append(preprocess_image(Image.fromarray(pixels), cfg))
    return np.stack(out).astype(np.float32)


def load(bundle: Bundle, threads: int | None) -> dict[str, Any]:
    """label -> backend, or -> the one-line reason it is unavailable here."""
    engines: dict[str, Any] = {}
    for label, (name, precision, options) in ENGINES.items():
        start = time.perf_counter()
        if threads:
            options = {**options, "threads": threads}
        try:
            engines[label] = create_backend(name, bundle, precision=precision, **options)
        except Exception as exc:  # noqa: BLE001 - an unavailable engine is a row, not a crash
            engines[label] = f"unavailable: {exc}"
            continue
        print(f"loaded {label}: {engines[label].describe()} in {time.perf_counter() - start:.1f} s", flush=True)
    return engines


def measure(engines: dict[str, Any], images: np.ndarray, batch: int, rounds: int) -> list[dict[str, Any]]:
    """Interleaved rounds of one call per engine; rows with median time, ratio and cosine to the baseline."""
    x = images[:batch]
    live = {label: e for label, e in engines.items() if not isinstance(e, str)}
    outputs = {label: e.encode_image(x) for label, e in live.items()}  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {label: [] for label in live}
    for _ in range(rounds):
        for label, engine in live.items():
            start = time.perf_counter()
            engine.encode_image(x)
            times[label].append(time.perf_counter() - start)
    ref = outputs[BASELINE]
    base_s = statistics.median(times[BASELINE])
    rows = []
    for label, engine in engines.items():
        if isinstance(engine, str):
            rows.append({"engine": label, "batch": batch, "status": engine})
            continue
        out = outputs[label]
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        median_s = statistics.median(times[label])
        rows.append({"engine": label, "batch": batch, "status": "ok", "provider": engine.describe(),
                     "median_s": median_s, "images_per_s": batch / median_s, "vs_ort_fp32": base_s / median_s,
                     "min_cosine": float(cos.min()), "times_s": times[label]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/crisis-openvino-cpu"))
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per engine and batch (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: all cores)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    model, flags = cpu_description()
    versions = {name: _version(name) for name in ("openvino", "onnxruntime")}
    print(f"CPU: {model}; flags: {', '.join(flags) or 'none of ' + ', '.join(FLAGS)}; versions: {versions}")
    bundle = Bundle.load(build_bundle(args.workdir))
    engines = load(bundle, args.threads)
    images = photos(bundle, max(batches))
    rows = [row for batch in batches for row in measure(engines, images, batch, args.rounds)]
    print(f"\n{'engine':28} {'batch':>5} {'median s':>9} {'img/s':>7} {'vs ORT fp32':>11} {'min cosine':>10}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['engine']:28} {r['batch']:>5} {r['status']}")
            continue
        print(f"{r['engine']:28} {r['batch']:>5} {r['median_s']:>9.3f} {r['images_per_s']:>7.1f} "
              f"{r['vs_ort_fp32']:>10.2f}x {r['min_cosine']:>10.6f}")
    result = {"cpu": model, "flags": flags, "versions": versions, "rounds": args.rounds, "rows": rows}
    (args.workdir / "openvino_cpu.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.workdir / 'openvino_cpu.json'}")


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()
