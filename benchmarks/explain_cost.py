"""What `export --explain` costs at prediction time: the same run exported with and without it, in one run.

Command (from the repo root, `pip install -e '.[torch]'`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain_cost.py --workdir /tmp/crisis-explain

It builds the ViT-B-32 three-head run of `multitask_vs_single.py` (random weights: the compute is the real
model's), exports it twice (fp32; once plain, once `--explain`, whose head graphs also output the modality
share and, these being Differential Attention heads, the weight of every word, from the text encoder's token
outputs), and predicts the same generated posts with both bundles, interleaved round by round, cache-free, at
e2e `--batch`. It prints posts/s of each, their ratio, and that labels and probabilities agree (explain adds
outputs, it changes no answer). A bundle exported without `--explain` runs graphs with no extra output, so "off"
costs nothing by construction; this measures what "on" costs. `--clip-model crisis-tiny --rounds 3` checks the
script end to end in a minute (its numbers mean nothing).
"""

from __future__ import annotations

import importlib.util
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.manifest import MANIFEST_NAME
from crisis_tool.runtime.predictor import Predictor


def _multitask_module() -> Any:
    """benchmarks/multitask_vs_single.py (its three-head run and options; benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("multitask_vs_single", Path(__file__).with_name(
        "multitask_vs_single.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    multitask = _multitask_module()
    args, work = multitask.interleaved_args(__doc__, "/tmp/crisis-explain")

    from crisis_tool.cli import run

    run_dir = work / "run"
    if not (run_dir / "config.json").is_file():
        multitask.save_three_head_run(run_dir, args.clip_model)
    bundles = {"plain": work / "bundle-plain", "explain": work / "bundle-explain"}
    for name, path in bundles.items():
        if not (path / MANIFEST_NAME).is_file():
            extra = ["--explain"] if name == "explain" else []
            if run(["export", "--model", str(run_dir), "--out", str(path), "--force", *extra]) != 0:
                raise SystemExit(f"export of the {name} bundle failed")

    records_dir = work / "records"
    records_dir.mkdir(exist_ok=True)
    batches = [generate_records(args.batch, records_dir, seed=200 + r) for r in range(args.rounds + 1)]
    load = dict(backend=args.backend, batch_size=args.batch, cache_size=0)
    predictors = {name: Predictor.from_bundle(path, **load) for name, path in bundles.items()}
    for predictor in predictors.values():  # warm-up on the extra batch
        predictor.predict(batches[-1])
    times: dict[str, list[float]] = {name: [] for name in predictors}
    max_diff, labels_agree, shares, words = 0.0, True, 0, 0
    for records in batches[:-1]:
        answers = {}
        for name, predictor in predictors.items():
            start = time.perf_counter()
            answers[name] = predictor.predict(records)
            times[name].append(time.perf_counter() - start)
        for plain, explained in zip(answers["plain"], answers["explain"], strict=True):
            for task, answer in plain.tasks.items():
                other = explained.tasks[task]
                labels_agree &= answer.label == other.label
                max_diff = max(max_diff, *(abs(answer.probs[k] - other.probs[k]) for k in answer.probs))
                shares += other.explain is not None
                words += bool(other.explain and other.explain.get("words"))
    for predictor in predictors.values():
        predictor.close()

    rate = {name: args.batch / float(np.median(t)) for name, t in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {args.clip_model} random weights, three heads, "
          f"{args.backend} fp32, e2e batch {args.batch}, {args.rounds} interleaved rounds (median)")
    print(f"{'bundle':<10} {'posts/s':>9}")
    for name in predictors:
        print(f"{name:<10} {rate[name]:>9.2f}")
    print(f"explain / plain: {rate['explain'] / rate['plain']:.3f}x; labels agree: {labels_agree}; "
          f"max |probability difference|: {max_diff:.1e}")
    print(f"answers with a modality share: {shares}; with top words: {words}")


if __name__ == "__main__":
    main()
