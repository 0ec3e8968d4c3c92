"""Reading request bodies without letting slow or stalled uploads take the server down.

A body must arrive within `deadline_s` (else 408). While bodies arrive, each client (by address) may have at
most `per_client` of them in flight: one more is refused at once with 429. All clients together may have
`total` in flight: a new upload then cuts the oldest one (408), so a crowd of stalled connections never
locks the door for a client that sends its request in one go. The body is capped at `limit` bytes (413,
declared or streamed), and the bodies held at once at `HeldBodies.limit` (503 + Retry-After beyond it).
Nothing here imports Ray: the same guard runs in a Ray Serve replica and in a plain ASGI server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from crisis_tool.runtime.serve.predict_request import RequestRejected


@dataclass
class _Upload:
    client: str
    task: asyncio.Task | None = None
    cut: bool = False


@dataclass
class UploadGuard:
    """Bounds on bodies in flight (see the module docstring); one per replica or process."""

    deadline_s: float = 10.0
    per_client: int = 64
    total: int = 256
    _uploads: OrderedDict[int, _Upload] = field(default_factory=OrderedDict)
    _per_client: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)
    cut_total: int = 0  # uploads cut (deadline or eviction) since start
    refused_total: int = 0  # uploads refused (per-client limit) since start

    @property
    def in_flight(self) -> int:
        return len(self._uploads)

    async def read(self, chunks: AsyncIterator[bytes], client: str, declared: str | None, limit: int) -> bytes:
        """The whole body of one request, or RequestRejected (400, 408, 413, 429) with a one-line reason."""
        check_declared_length(declared, limit)
        if self._per_client.get(client, 0) >= self.per_client:
            self.refused_total += 1
            raise RequestRejected(429, f"client {client} already has {self.per_client} request bodies arriving; "
                                  "retry when they are done")
        while len(self._uploads) >= self.total:
            self._evict_oldest()
        key = next(self._ids)
        upload = _Upload(client)
        self._uploads[key] = upload
        self._per_client[client] = self._per_client.get(client, 0) + 1
        upload.task = asyncio.ensure_future(collect(chunks, limit))
        try:
            return await asyncio.wait_for(upload.task, timeout=self.deadline_s)
        except asyncio.TimeoutError:
            self.cut_total += 1
            raise RequestRejected(408, f"the request body did not arrive within {self.deadline_s:g} s") from None
        except asyncio.CancelledError:
            if upload.cut:
                raise RequestRejected(408, f"cut: {self.total} request bodies were arriving at once and this "
                                      "one was the oldest") from None
            raise
        finally:
            self._uploads.pop(key, None)
            left = self._per_client.get(client, 1) - 1
            if left:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)

    def _evict_oldest(self) -> None:
        _, oldest = self._uploads.popitem(last=False)
        oldest.cut = True
        self.cut_total += 1
        if oldest.task is not None:
            oldest.task.cancel()


@dataclass
class HeldBodies:
    """Bytes of request bodies held at once (from before a body is read until its answer is sent), at most
    `limit`: a burst of large, valid requests is refused with 503 (and retried) instead of filling memory.

    A request is counted at its Content-Length, or at the body limit when it declares none (chunked). One
    request is always admitted when nothing is held, so the largest allowed body is never refused for good.
    """

    limit: int
    held: int = 0
    refused_total: int = 0  # requests refused since start

    def reserve(self, declared: str | None, body_limit: int) -> int:
        """The bytes this request holds (release them when it is answered); RequestRejected(503) when over."""
        size = min(int(declared), body_limit) if declared is not None and declared.isdigit() else body_limit
        if self.held and self.held + size > self.limit:
            self.refused_total += 1
            raise RequestRejected(503, f"the server holds {self.held / 2**20:.1f} MiB of requests, its limit is "
                                  f"{self.limit / 2**20:.1f} MiB; retry shortly")
        self.held += size
        return size

    def release(self, size: int) -> None:
        self.held -= size


def check_declared_length(declared: str | None, limit: int) -> None:
    """RequestRejected for a malformed Content-Length (400) or one above `limit` (413)."""
    if declared is None:
        return
    if not declared.isdigit():
        raise RequestRejected(400, "bad Content-Length header")
    if int(declared) > limit:
        raise RequestRejected(413, f"body of {declared} bytes; the limit is {limit}")


async def collect(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Join `chunks`, refusing with 413 as soon as they pass `limit` bytes."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestRejected(413, f"body over {limit} bytes; the limit is {limit}")
        parts.append(chunk)
    return b"".join(parts)
