"""Cold and warm start: load a bundle and answer one post in a fresh process, with an empty compile cache, then
again with the cache the first run filled.

`measure_start(bundle, backend)` -> {"cold_s", "warm_s", "cold_load_s", "warm_load_s", "import_s", ...}: each
figure is a fresh interpreter (imports counted apart), the bundle verified, the backend built (auto: its probe
and choice too on the cold run, its cached choice on the warm run), one generated record predicted. The cache
lives in a temporary folder (`CRISIS_TOOL_CACHE_DIR`), so the user's own cache is neither used nor touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.predictor import Predictor
t1 = time.perf_counter()
records = generate_records(1, sys.argv[3], seed=7)
t2 = time.perf_counter()
kwargs = {"precision": sys.argv[2]} if sys.argv[2] != "-" else {}
p = Predictor.from_bundle(sys.argv[1], backend=sys.argv[4], **kwargs)
t3 = time.perf_counter()
out = p.predict(records)
t4 = time.perf_counter()
assert out[0].error is None, out[0].error
print(json.dumps({"import_s": t1 - t0, "load_s": t3 - t2, "first_s": t4 - t2, "backend": p.backend.describe()}))
"""


def _run_child(bundle: Path, backend: str, precision: str | None, cache: Path, workdir: Path,
               timeout: float) -> dict[str, Any]:
    env = {**os.environ, "CRISIS_TOOL_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), precision or "-", str(workdir), backend],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"start-time child failed ({backend}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_start(bundle: str | Path, backend: str = "auto", precision: str | None = None,
                  timeout: float = 600.0) -> dict[str, Any]:
    """Cold (empty cache) then warm (the cache it filled) start to the first answer, each in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="crisis-start-") as scratch:
        root = Path(scratch)
        cold = _run_child(Path(bundle), backend, precision, root / "cache", root, timeout)
        warm = _run_child(Path(bundle), backend, precision, root / "cache", root, timeout)
    return {"backend": backend, "chosen": warm["backend"], "cold_s": round(cold["first_s"], 3),
            "warm_s": round(warm["first_s"], 3), "cold_load_s": round(cold["load_s"], 3),
            "warm_load_s": round(warm["load_s"], 3), "import_s": round(warm["import_s"], 3)}
