"""Connections that hold no request in progress, bounded in time and in number (`serve`, both servers).

uvicorn closes a kept-alive connection left idle after an answer, but not one that never completes a request
head: a client that connects and sends nothing, or trickles a few header bytes and stalls, holds a file
descriptor for ever. Enough of them and the process cannot accept anyone (EMFILE). Here a connection that
waits for a request head (a new one, or the next on a kept-alive connection) is closed after `timeout_s`, and
when `most` of them wait at once the oldest is closed to admit a new one, so a crowd of silent connections
never locks the door for a client that sends its request in one go. A connection whose head has arrived is
the body guard's (`http_guard`) and then the model's. `serve --no-ray` gives uvicorn this protocol;
`proxy_guard` installs it in Ray Serve's proxies. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MOST_WAITING = 1024  # connections waiting for a request head, at most (fewer when descriptors are scarce)
DESCRIPTORS_KEPT = 256  # descriptors left to requests in progress, the model and the process


@dataclass
class WaitingConnections:
    """Connections waiting for a request head: closed after `timeout_s`; beyond `most`, the oldest first."""

    timeout_s: float
    most: int
    closed_total: int = 0  # connections closed here (deadline or eviction) since start
    _waiting: OrderedDict[int, tuple[asyncio.BaseTransport, asyncio.TimerHandle]] = field(
        default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._waiting)

    def waiting(self, key: int, transport: asyncio.BaseTransport) -> None:
        """`key`'s connection now waits for a request head (its deadline starts now)."""
        self.busy(key)
        while len(self._waiting) >= self.most:
            self._close(next(iter(self._waiting)))
        timer = asyncio.get_running_loop().call_later(self.timeout_s, self._close, key)
        self._waiting[key] = (transport, timer)

    def busy(self, key: int) -> None:
        """`key`'s connection has a request head (or is gone): no longer bounded here."""
        entry = self._waiting.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def _close(self, key: int) -> None:
        entry = self._waiting.pop(key, None)
        if entry is not None:
            entry[1].cancel()
            self.closed_total += 1
            entry[0].close()


def most_waiting(soft_limit: int | None = None) -> int:
    """MOST_WAITING, or fewer so that waiting connections leave DESCRIPTORS_KEPT of the process's limit."""
    if soft_limit is None:
        try:
            import resource  # POSIX only
        except ImportError:
            return MOST_WAITING
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            return MOST_WAITING
    if soft_limit < 0:  # RLIM_INFINITY, passed in
        return MOST_WAITING
    return max(8, min(MOST_WAITING, (soft_limit - DESCRIPTORS_KEPT) // 2))


def guarded_protocol(waiting: WaitingConnections) -> type:
    """uvicorn's h11 protocol, telling `waiting` when a connection waits for a request head and when not."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            waiting.waiting(id(self), transport)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_request():
                waiting.busy(id(self))

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._in_request():
                waiting.waiting(id(self), self.transport)

        def connection_lost(self, exc: Exception | None) -> None:
            waiting.busy(id(self))
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

    return GuardedH11Protocol
