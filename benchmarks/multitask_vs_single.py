"""Three answers from one bundle vs three one-head bundles, on the same posts, in one run (issue 18).

Command (from the repo root, `pip install -e '.[torch]'`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/multitask_vs_single.py --workdir /tmp/crisis-multitask

It builds a ViT-B-32 run with random weights (`--pretrained none`: the compute is the real model's) and three
guided-diff heads (informative, humanitarian, damage), exports it once as a three-head fp32 bundle, and makes
the three one-head bundles from it (the same encoder graphs and one head each, re-hashed: what exporting three
one-task runs writes, without three more exports). Then, on the same generated posts (real tweet lengths,
JPEGs of tweet sizes), e2e at `--batch` (default 8), interleaved round by round, each Predictor cache-free so
every post really runs:

* `three-head`: one Predictor on the three-head bundle (the encoders run once per post, then three heads);
* `three one-head`: the three one-head Predictors, one after the other, on the same batch (three answers);
* `one one-head`: the informative one-head Predictor alone (one answer).

Targets: three-head posts/s >= 2.7x the three one-head bundles' and >= 0.9x one one-head bundle's.
`--clip-model crisis-tiny --rounds 3` checks the script end to end in a minute (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, canonical_digest, sha256_file
from crisis_tool.runtime.predictor import Predictor

TASKS = {"informative": ["not_informative", "informative"],
         "humanitarian": ["affected_individuals", "infrastructure_and_utility_damage", "not_humanitarian",
                          "other_relevant_information", "rescue_volunteering_or_donation_effort", "vehicle_damage"],
         "damage": ["little_or_no_damage", "mild_damage", "severe_damage"]}


def save_three_head_run(run_dir: Path, clip_model: str) -> Path:
    """A run dir with three random guided-diff heads on a random-weight CLIP."""
    import torch

    from crisis_tool.clip_loader import load_clip
    from crisis_tool.models.heads import HeadConfig, build_head
    from crisis_tool.run_dir import save_run

    clip = load_clip(clip_model, "none")
    torch.manual_seed(0)
    heads, entries = {}, []
    for task, labels in TASKS.items():
        cfg = HeadConfig(num_classes=len(labels), clip_embed_dim=clip.embed_dim)
        heads[task] = build_head(cfg).eval()
        entries.append({"task": task, "labels": labels, "head": cfg.to_dict()})
    config = {"heads": entries, "text_source": "tweet", "clip": clip.describe(),
              "preprocess": clip.preprocess.to_dict()}
    save_run(run_dir, heads, config, {})
    return run_dir


def one_head_bundle(three: Path, task: str, out: Path) -> Path:
    """The three-head bundle reduced to one head (files, manifest spec, run config), re-hashed."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(three, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    config = json.loads((out / "model_config.json").read_text())
    drop = [h for h in manifest["spec"]["heads"] if h["task"] != task]
    for head in drop:
        for path in out.glob(f"{head['graph']}.*"):
            path.unlink()
        (out / head["weights"]).unlink(missing_ok=True)
    manifest["spec"]["heads"] = [h for h in manifest["spec"]["heads"] if h["task"] == task]
    config["heads"] = [h for h in config["heads"] if h["task"] == task]
    for precision in manifest["graphs"]:
        manifest["graphs"][precision] = {g: e for g, e in manifest["graphs"][precision].items()
                                         if g not in {h["graph"] for h in drop}}
    (out / "model_config.json").write_text(json.dumps(config, indent=2) + "\n")
    manifest["files"] = {rel: {"sha256": sha256_file(out / rel), "size": (out / rel).stat().st_size}
                         for rel in manifest["files"] if (out / rel).exists()}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / MANIFEST_DIGEST_NAME).write_text(canonical_digest(manifest) + "\n")
    return out


def interleaved_args(doc: str, workdir: str) -> tuple[argparse.Namespace, Path]:
    """The options of an interleaved three-head comparison (this one and `explain_cost.py`) and its work folder
    (`--workdir`/`--clip-model`, created)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--backend", default="onnxruntime")
    args = parser.parse_args()
    work = args.workdir / args.clip_model
    work.mkdir(parents=True, exist_ok=True)
    return args, work


def main() -> None:
    args, work = interleaved_args(__doc__, "/tmp/crisis-multitask")

    from crisis_tool.cli import run

    three = work / "bundle-three"
    if not (three / MANIFEST_NAME).is_file():
        run_dir = save_three_head_run(work / "run", args.clip_model)
        if run(["export", "--model", str(run_dir), "--out", str(three), "--force"]) != 0:
            raise SystemExit("export failed")
    singles = {task: one_head_bundle(three, task, work / f"bundle-{task}") for task in TASKS}

    records_dir = work / "records"
    records_dir.mkdir(exist_ok=True)
    batches = [generate_records(args.batch, records_dir, seed=100 + r) for r in range(args.rounds + 1)]
    load = dict(backend=args.backend, batch_size=args.batch, cache_size=0)
    three_p = Predictor.from_bundle(three, **load)
    single_p = {task: Predictor.from_bundle(path, **load) for task, path in singles.items()}
    for predictor in (three_p, *single_p.values()):  # warm-up on the extra batch
        predictor.predict(batches[-1])
    times = {"three-head": [], "three one-head": [], "one one-head": []}
    answers_agree = True
    for records in batches[:-1]:  # interleaved, round by round
        start = time.perf_counter()
        joint = three_p.predict(records)
        times["three-head"].append(time.perf_counter() - start)
        start = time.perf_counter()
        separate = {task: p.predict(records) for task, p in single_p.items()}
        times["three one-head"].append(time.perf_counter() - start)
        start = time.perf_counter()
        single_p["informative"].predict(records)
        times["one one-head"].append(time.perf_counter() - start)
        for task, preds in separate.items():
            answers_agree &= all(a.tasks[task].label == b.label for a, b in zip(joint, preds, strict=True))
    for predictor in (three_p, *single_p.values()):
        predictor.close()

    rate = {name: args.batch / float(np.median(t)) for name, t in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {args.clip_model} random weights, "
          f"{args.backend} fp32, e2e batch {args.batch}, {args.rounds} interleaved rounds (median)")
    print(f"{'row':<16} {'posts/s':>9} {'answers/post':>13}")
    for name, answers in (("three-head", 3), ("three one-head", 3), ("one one-head", 1)):
        print(f"{name:<16} {rate[name]:>9.2f} {answers:>13}")
    vs_three = rate["three-head"] / rate["three one-head"]
    vs_one = rate["three-head"] / rate["one one-head"]
    print(f"three-head / three one-head bundles: {vs_three:.2f}x (target >= 2.7x) "
          f"{'PASS' if vs_three >= 2.7 else 'FAIL'}")
    print(f"three-head / one one-head bundle:    {vs_one:.2f}x (target >= 0.9x) {'PASS' if vs_one >= 0.9 else 'FAIL'}")
    print(f"every head's label equals its one-head bundle's: {answers_agree}")


if __name__ == "__main__":
    main()
