"""Helpers for batched prediction: a thread-safe LRU of embeddings and a bounded record queue."""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


class EmbeddingCache:
    """Thread-safe LRU of embeddings keyed by content hash."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
class RecordQueue:
    """Pulls records from an iterable in a daemon thread into a bounded queue; `take` forms batches."""

    _END = object()

    def __init__(self, records: Iterable[Any], maxsize: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._feed, args=(records,), daemon=True, name="crisis-reader")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self, records: Iterable[Any]) -> None:
        try:
            for item in records:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            self._put(_Raised(exc))
            return
        self._put(self._END)

    def take(self, limit: int, block: bool, linger_s: float) -> list[Any] | None:
        """Up to `limit` records; [] when none is ready and not `block`; None at the end."""
        if self._ended:
            return None
        batch: list[Any] = []
        deadline: float | None = None
        while len(batch) < limit:
            try:
                if not batch:
                    item = self._queue.get() if block else self._queue.get_nowait()
                    deadline = time.monotonic() + linger_s
                else:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[operator]
            except queue.Empty:
                break
            if item is self._END:
                self._ended = True
                break
            if isinstance(item, _Raised):
                self._ended = True
                raise item.exc
            batch.append(item)
        return batch if batch or not self._ended else None

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class _Raised:
    exc: BaseException
