"""A real two-node Ray cluster on loopback: `ray start --head` and a second `ray start --address` worker node
with its own resources, each its own processes. `crisis-tool serve --address` runs on it with a replica on each
node, both answer (node ids read back from Ray by each replica), and stopping it leaves no Serve actor behind.
`crisis-tool label --address` runs on it, work lands on both nodes, and killing the worker node mid-`label`
loses no record and repeats none (that test runs last: it ends the worker node).

Everything listens on 127.0.0.1 only: Ray's "local only" switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) makes
every node's address 127.0.0.1, and the worker's `ray start` runs with that switch seen as on by its one
"multi-node needs clusters" guard only (see `WORKER_START`). Token authentication is on, with a token file
of this test. Everything the test started is killed in `finally`, found by its private temp folder and the
worker's resource name, never by a broad `ray stop` (other Ray instances on the machine are left alone).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import b64, free_port, png_bytes

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
pytestmark = pytest.mark.skipif(RAY is None, reason="the `ray` command is not installed (pip install "
                                "'crisis-tool[serve]')")

WORKER_RESOURCE = "worker_node"
WORKER_START = """
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as scripts
scripts.ray_constants = types.SimpleNamespace(**{**vars(constants), "ENABLE_RAY_CLUSTER": True})
sys.argv = ["ray", *sys.argv[1:]]
scripts.main()
"""
RECORDS_PER_FILE, FILES = 300, 4


def our_processes(temp_dir: str) -> list[int]:
    """Pids of the processes this test's cluster runs (their command line names its temp folder or resource)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline or f'"{WORKER_RESOURCE}"' in cmdline and "raylet" in cmdline:
            pids.append(int(proc.name))
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def worker_raylet(temp_dir: str) -> int:
    """The pid of the worker node's raylet (its command line carries the worker's resource)."""
    for pid in our_processes(temp_dir):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if "raylet/raylet" in cmdline and WORKER_RESOURCE in cmdline:
            return pid
    raise AssertionError("the worker node's raylet is not running")


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """Head (3 CPUs) and worker node (3 CPUs, resource worker_node=2) on 127.0.0.1; yields the CLI env."""
    temp_dir = tempfile.mkdtemp(prefix="ct2n-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "CRISIS_TOOL_PROGRESS_SECONDS": "2"}
    address = f"127.0.0.1:{free_port()}"
    try:
        subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1],
                        "--num-cpus", "3", "--include-dashboard", "false", "--temp-dir", temp_dir,
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([sys.executable, "-c", WORKER_START, "start", "--address", address, "--num-cpus", "3",
                        "--resources", json.dumps({WORKER_RESOURCE: 2}), "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        yield {**env, "CT_ADDRESS": address, "CT_TEMP_DIR": temp_dir}
    finally:
        kill_all(our_processes(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_nodes(env: dict[str, str]) -> dict[str, bool]:
    """Node id -> has the worker resource, read from Ray by a separate driver."""
    code = (f"import json, ray; ray.init(address={env['CT_ADDRESS']!r}, logging_level='ERROR'); "
            f"print(json.dumps({{n['NodeID']: {WORKER_RESOURCE!r} in n['Resources'] for n in ray.nodes() "
            "if n['Alive']}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve_actors(env: dict[str, str]) -> list[str]:
    """Names of the live named actors in Serve's namespace (controller, proxies, replicas), read from Ray."""
    code = (f"import json, ray; ray.init(address={env['CT_ADDRESS']!r}, logging_level='ERROR'); "
            "print(json.dumps([a['name'] for a in ray.util.list_named_actors(all_namespaces=True) "
            "if a['namespace'] == 'serve']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def get_json(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_serve_runs_a_replica_on_each_node_and_stops_cleanly(cluster: dict[str, str], tiny_bundle: Path,
                                                             tmp_path: Path) -> None:
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.records import Record
    from crisis_tool.runtime.writers import prediction_to_dict

    nodes = cluster_nodes(cluster)
    assert len(nodes) == 2 and not serve_actors(cluster)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    # 2 CPUs per replica: a node (3 CPUs) holds one, so Ray places one replica on each node; the one proxy
    # listens on the head (on loopback both nodes would want the same port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crisis_tool.cli", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
         "--address", cluster["CT_ADDRESS"], "--replicas", "2", "--cpus-per-replica", "2", "--threads", "1",
         "--proxy-location", "HeadOnly", "--drain-s", "2"], env=cluster, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve --address did not become ready"
            try:
                if get_json(f"{url}/readyz")["status"] == "ready":
                    break
            except OSError:
                time.sleep(1)
        records = [{"id": f"r{i}", "text": f"roads flooded {i}", "image_b64": b64(png_bytes(i))} for i in range(48)]
        answers: dict[int, Any] = {}

        def client(k: int) -> None:
            for i in range(k, len(records), 6):
                answers[i] = get_json(f"{url}/v1/predict", records[i])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        batched: dict[str, float] = {}  # records each replica's model classified, by its node
        for _ in range(200):
            stats = get_json(f"{url}/v1/stats")
            batched[stats["node_id"]] = stats["batched_records"]
            if len(batched) == 2:
                break
        assert set(batched) == set(nodes) and all(count > 0 for count in batched.values()), batched
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    with Predictor.from_bundle(tiny_bundle, threads=1) as predictor:
        alone = [prediction_to_dict(predictor.predict([Record(r["id"], r["text"], png_bytes(i))])[0])
                 for i, r in enumerate(records)]
    assert sorted(answers) == list(range(len(records)))
    for i, want in enumerate(alone):
        assert (answers[i]["id"], answers[i]["label"], answers[i]["error"]) == (want["id"], want["label"], None)
        assert answers[i]["probs"] == pytest.approx(want["probs"], abs=1e-5)
    assert serve_actors(cluster) == []  # controller, proxy and replicas: all stopped


def make_inputs(root: Path) -> list[str]:
    from PIL import Image

    root.mkdir()
    for i in range(6):
        Image.new("RGB", (36 + i, 30), (40 * i, 120, 200)).save(root / f"img{i}.png")
    ids = []
    for f in range(FILES):
        lines = []
        for i in range(RECORDS_PER_FILE):
            ids.append(f"f{f}r{i}")
            image = str(root / f"img{i % 6}.png")
            lines.append(json.dumps({"id": ids[-1], "text": f"bridge down {i}", "image": image}))
        (root / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
    return ids


def label_command(bundle: Path, inputs: Path, out: Path, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "crisis_tool.cli", "label", "--bundle", str(bundle), "--input", str(inputs),
            "--output", str(out), "--address", env["CT_ADDRESS"], "--concurrency", "2", "--cpus-per-actor", "2",
            "--batch-size", "8", "--threads", "1"]


def answers_written(out: Path) -> bool:
    """True once a partial output holds an answer (a partial may be renamed away while we look)."""
    for path in out.glob("*.partial"):
        try:
            if path.stat().st_size:
                return True
        except FileNotFoundError:
            return True
    return False


def output_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for f in range(FILES)
            for line in (out / f"part{f}.predictions.jsonl").read_text().splitlines()]


def test_label_runs_on_both_nodes_and_survives_losing_one(cluster: dict[str, str], tiny_bundle: Path,
                                                          tmp_path: Path) -> None:
    nodes = cluster_nodes(cluster)
    assert len(nodes) == 2 and sorted(nodes.values()) == [False, True]
    ids = make_inputs(tmp_path / "in")

    first = subprocess.run(label_command(tiny_bundle, tmp_path / "in", tmp_path / "out1", cluster), env=cluster,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert output_ids(tmp_path / "out1") == ids
    per_node = dict(item.split("=") for item in
                    first.stderr.split("answers per Ray node: ")[1].splitlines()[0].split(", "))
    assert set(per_node) == set(nodes) and sum(map(int, per_node.values())) == len(ids)  # both nodes worked
    assert "core_worker" not in first.stderr and "INFO" not in first.stderr  # quiet Ray by default

    out = tmp_path / "out2"
    run = subprocess.Popen(label_command(tiny_bundle, tmp_path / "in", out, cluster), env=cluster,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not answers_written(out):
            assert run.poll() is None and time.monotonic() < deadline, "label ended before the node was killed"
            time.sleep(0.05)
        kill_all([worker_raylet(cluster["CT_TEMP_DIR"])])  # the worker node dies, its actor and tasks with it
        _, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    assert output_ids(out) == ids  # every record exactly once, in input order
    assert f"{FILES} files written" in stderr and f"{len(ids)} records, 0 errors" in stderr
    assert not list(out.glob("*.partial*"))
    assert len(cluster_nodes(cluster)) == 1  # the worker node really is gone
