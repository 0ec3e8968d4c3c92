"""`crisis-tool label` (Ray Data, one local machine) vs `crisis-tool predict` on the same files, one run.

Machine: the 2-core CI VM (no GPU), onnxruntime on CPU, Ray 2.60. Command (from the repo root):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/label_throughput.py --bundle BUNDLE --records 1000 --files 4

Records: `--records` generated photo-like JPEGs (all distinct) with texts of real tweet lengths, split into
`--files` JSONL files. `predict` runs once per file (in-process CLI, default options); `label` runs once over
all files (in-process CLI, starting and stopping its local Ray, `--concurrency` actors). Printed: wall time
and records/s of both and their ratio, i.e. Ray's overhead (start-up included) on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from crisis_tool.cli import run
from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.serve.cluster import LOCAL_ONLY_ENV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault(LOCAL_ONLY_ENV, "0")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        records = generate_records(args.records, work / "images", seed=5)
        inputs = []
        per_file = -(-len(records) // args.files)
        for f in range(args.files):
            path = work / f"part{f}.jsonl"
            chunk = records[f * per_file : (f + 1) * per_file]
            path.write_text("".join(json.dumps({"id": r.id, "text": r.text, "image": r.image}) + "\n" for r in chunk))
            inputs.append(path)

        (work / "predict").mkdir()
        start = time.perf_counter()
        for path in inputs:
            run(["predict", "--bundle", str(args.bundle), "--input", str(path),
                 "--output", str(work / "predict" / f"{path.stem}.jsonl")])
        predict_s = time.perf_counter() - start

        start = time.perf_counter()
        run(["label", "--bundle", str(args.bundle), "--input", str(work / "part*.jsonl"),
             "--output", str(work / "labels"), "--concurrency", str(args.concurrency)])
        label_s = time.perf_counter() - start

        same = all(
            [json.loads(a)["label"] for a in (work / "predict" / f"{p.stem}.jsonl").read_text().splitlines()]
            == [json.loads(b)["label"] for b in (work / "labels" / f"{p.stem}.predictions.jsonl").read_text()
                .splitlines()]
            for p in inputs)
    n = len(records)
    print(f"records: {n} distinct in {args.files} files; bundle {args.bundle}; {os.cpu_count()} CPUs")
    print(f"predict: {predict_s:.1f} s, {n / predict_s:.1f} records/s")
    print(f"label ({args.concurrency} actor(s), Ray start included): {label_s:.1f} s, {n / label_s:.1f} records/s")
    print(f"label / predict throughput: {predict_s / label_s:.2f}x; same labels as predict: {same}")


if __name__ == "__main__":
    main()
