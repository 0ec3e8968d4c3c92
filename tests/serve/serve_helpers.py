"""Helpers of the Ray tests (not fixtures): free ports, generated PNGs, base64."""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

RAY_MISSING = "Ray is not installed (pip install 'crisis-tool[serve]')"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(index: int) -> bytes:
    """A small PNG whose colour and size depend on `index`."""
    buffer = io.BytesIO()
    Image.new("RGB", (40 + index % 23, 32 + index % 7), (37 * index % 256, 255 - 11 * index % 256, 90)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PARTIAL_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"  # then nothing


def hold_stalled_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections to `port`: every other one silent, the others a partial request head."""
    held = []
    for k in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if k % 2:
            sock.sendall(PARTIAL_HEAD)
        held.append(sock)
    return held


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the other end has closed `sock` (EOF or reset); False while it is open and silent."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


README = Path(__file__).resolve().parents[2] / "README.md"
README_SECTION = "## Serve and scale out (Ray)"


def readme_client() -> Callable[..., Any]:
    """The `predict` function of the README's Python client, run as written there."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(README_SECTION):]
    end = section.find("\n## ", len(README_SECTION))
    section = section if end == -1 else section[:end]
    code = section[section.index("```python\n") + len("```python\n"):]
    namespace: dict[str, Any] = {}
    exec(code[: code.index("```")], namespace)  # noqa: S102 - our own documentation
    return namespace["predict"]


def jpeg_declaring(width: int, height: int, seed: int = 0) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to declare `width` x `height` pixels: a few
    hundred bytes that would cost a full-size decode."""
    import struct

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (seed % 256, 80, 160)).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)  # FFC0, length(2), precision(1), height, width
    return bytes(data)
