"""Test helpers for the review page: a small queue with generated images (and a real photo when present),
and the app served on 127.0.0.1 in a uvicorn thread or as a `crisis-tool review` subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos"
TWO_HEADS = {"informative": ("not_informative", "informative"),
             "damage": ("little_or_no_damage", "mild_damage", "severe_damage")}
DAMAGE_ONLY = {"damage": TWO_HEADS["damage"]}
TEXTS = [
    "Bridge on Route 9 collapsed after the flood, cars stuck on both sides #flood",
    "Thoughts and prayers to everyone affected by the storm tonight",
    "Volunteers needed at the shelter on 5th street, bring blankets and water",
    "Roof torn off the school gym, no one hurt according to officials",
    "Power lines down near the river, avoid the area",
    "Great sunset tonight after the rain",
    "Same photo again: bridge on Route 9 collapsed #flood",
]


def _probs(labels: Sequence[str], label: str, conf: float) -> dict[str, float]:
    rest = (1.0 - conf) / (len(labels) - 1)
    return {lab: round(conf if lab == label else rest, 6) for lab in labels}


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` small JPEGs: coloured generated pictures, the first one a resized real photo when present."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"post{i}.jpg"
        photo = PHOTOS / "rocket.jpg"
        if i == 0 and photo.is_file():
            with Image.open(photo) as img:
                img.convert("RGB").resize((480, 320)).save(path, quality=85)
        else:
            img = Image.new("RGB", (400, 300), (40 + 30 * i, 90, 160 - 15 * i))
            draw = ImageDraw.Draw(img)
            draw.rectangle((40 + 10 * i, 60, 260, 220), fill=(230, 200 - 20 * i, 60))
            draw.ellipse((220, 40 + 8 * i, 360, 180), fill=(250, 250, 250))
            img.save(path, quality=85)
        out.append(path)
    return out


def make_queue(folder: Path, heads: Mapping[str, Sequence[str]] = TWO_HEADS, count: int = 6,
               group_members: bool = True) -> Path:
    """A review queue JSONL of `count` posts (least confident first), images beside it (relative paths).

    Post i's head t predicts label (i + k) % len(labels) with confidence 0.35 + 0.08 i + 0.01 k; post 0 has two
    near-duplicates ("dup0a" with an image, "dup0b" without).
    """
    images = make_images(folder / "images", count + 1)
    lines = []
    for i in range(count):
        tasks = {}
        for k, (task, labels) in enumerate(heads.items()):
            label = labels[(i + k) % len(labels)]
            conf = round(0.35 + 0.08 * i + 0.01 * k, 4)
            tasks[task] = {"label": label, "confidence": conf, "probs": _probs(labels, label, conf),
                           "needs_review": True}
        line: dict[str, Any] = {"id": f"p{i}", "tasks": tasks, "needs_review": True, "group": f"p{i}",
                                "duplicate_of": None, "error": None, "image": f"images/{images[i].name}",
                                "text": TEXTS[i % len(TEXTS)]}
        if i == 0 and group_members:
            line["group_members"] = [{"id": "dup0a", "text": TEXTS[6], "image": f"images/{images[count].name}"},
                                     {"id": "dup0b", "text": TEXTS[6]}]
        lines.append(json.dumps(line))
    queue = folder / "queue.jsonl"
    queue.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return queue


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# --------------------------------------------------------------------------- serving
def state_for(queue: Path, corrections: Path, heads: Mapping[str, Sequence[str]] = TWO_HEADS,
              reviewer: str | None = None) -> Any:
    from crisis_tool.review.app import ReviewState
    from crisis_tool.review.queue import load_queue
    from crisis_tool.review.store import CorrectionStore

    return ReviewState(load_queue(queue, heads), CorrectionStore(corrections, reviewer=reviewer), heads)


@contextlib.contextmanager
def served(app: Any, timeout: float = 20.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port> in a uvicorn thread; yields the base URL; stops within `timeout`."""
    import uvicorn

    from crisis_tool.review.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the review server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


class ReviewProcess:
    """`crisis-tool review ... --port 0` as a subprocess; `url` is read from its first stderr line."""

    def __init__(self, args: Sequence[str], timeout: float = 120.0) -> None:
        cmd = [sys.executable, "-c", "import sys; from crisis_tool.cli import run; sys.exit(run(sys.argv[1:]))",
               "review", *args, "--port", "0"]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        assert self.proc.stderr is not None
        found: list[str] = []
        seen: list[str] = []

        def reader() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                seen.append(line)
                match = re.search(r"review page: (http://\S+?)/", line)
                if match and not found:
                    found.append(match.group(1))

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found:
                return found[0]
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"crisis-tool review exited {self.proc.returncode}: {''.join(seen)[-800:]}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("crisis-tool review did not print its URL in time")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def get_json(url: str, headers: Mapping[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def post_json(url: str, body: Any, headers: Mapping[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **dict(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())
