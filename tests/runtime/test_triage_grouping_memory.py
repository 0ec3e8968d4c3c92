"""100k records are grouped in one streaming pass with flat memory (crisis_tool.runtime.triage.grouping).

The child process caps its address space (RLIMIT_AS) at what it had after imports and a warm-up plus
`STATED_BYTES_PER_RECORD` x 100k records, and must finish within `TIMEOUT_S`. Measured on the development
machine: the address space grows about 176 bytes per record (89k of the 100k records bring a new key), and a
lookup compares about 5% of the stored hashes. A grouper that kept 1 KiB per record (a thumbnail, the text)
runs out of memory under the same cap (a MemoryError, or a child killed by its failed allocation),
which the second test checks, so the cap is tight enough to mean something.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

RECORDS = 100_000
STATED_BYTES_PER_RECORD = 640  # ~3.6x the measured 176 bytes: room for allocator and dict-resize slack
TIMEOUT_S = 300  # measured 26 s on 2 loaded cores; a Python scan of every stored hash takes hours

_CHILD = r"""
import collections, json, random, resource, sys, time

from crisis_tool.runtime.triage.grouping import NearDuplicateGrouper


def vm_bytes():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))


def records(n, rng):
    recent = collections.deque(maxlen=1000)  # the generator's own memory stays bounded
    for i in range(n):
        r = rng.random()
        image = None
        if r < 0.6 or not recent:
            image = rng.getrandbits(64)
        elif r < 0.75:
            image = rng.choice(recent)[0]
        elif r < 0.9:
            image = rng.choice(recent)[0]
            if image is not None:
                for bit in rng.sample(range(64), rng.randint(1, 12)):
                    image ^= 1 << bit
        r = rng.random()
        text = f"post {i} about the flood" if r < 0.6 or not recent else rng.choice(recent)[1] if r < 0.9 else None
        recent.append((image, text))
        yield f"post-{i:07d}", image, text


n, budget, leak = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
warm = NearDuplicateGrouper()
for rid, image, text in records(2000, random.Random(1)):
    warm.add(rid, image, text)
del warm
base = vm_bytes()
if budget:
    resource.setrlimit(resource.RLIMIT_AS, (base + budget, base + budget))
grouper, kept, duplicates, t0 = NearDuplicateGrouper(), [], 0, time.time()
try:
    for rid, image, text in records(n, random.Random(0)):
        duplicates += grouper.add(rid, image, text).duplicate_of is not None
        if leak:
            kept.append(bytes(leak))
except MemoryError:
    print(json.dumps({"memory_error_at": len(grouper)}), flush=True)
    sys.exit(3)
print(json.dumps({"records": len(grouper), "remembered": grouper.remembered, "duplicates": duplicates,
                  "compared": grouper.compared, "grown_bytes": vm_bytes() - base, "seconds": time.time() - t0}))
"""


def _run(leak: int) -> subprocess.CompletedProcess[str]:
    budget = STATED_BYTES_PER_RECORD * RECORDS
    try:
        return subprocess.run([sys.executable, "-c", _CHILD, str(RECORDS), str(budget), str(leak)],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"grouping {RECORDS} records took more than {TIMEOUT_S} s")


def test_100k_records_group_in_one_pass_under_a_memory_cap() -> None:
    proc = _run(leak=0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["records"] == RECORDS
    assert 0.3 * RECORDS < result["duplicates"] < 0.7 * RECORDS  # the stream really has duplicates to find
    assert result["compared"] < 0.1 * RECORDS * RECORDS / 2  # far from comparing each pair


def test_the_cap_stops_a_grouper_that_keeps_a_kibibyte_per_record() -> None:
    proc = _run(leak=1024)
    # MemoryError (exit 3), or a child killed by its failed allocation (numpy can die with SIGSEGV there)
    assert proc.returncode == 3 or proc.returncode < 0, proc.stdout + proc.stderr
    assert '"records"' not in proc.stdout
