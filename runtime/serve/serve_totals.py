"""Plain totals of one serving process (requests, records, errors, model batches); no Ray.

`metrics.ServeMetrics` adds Ray's Prometheus metrics on top for the Ray Serve replicas; the single-process
server (`local_server`) keeps these totals only. Both are what `GET /v1/stats` returns.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class ReplicaStats:
    """Totals of one replica (or the single-process server) since it started."""

    requests: int = 0
    records: int = 0
    record_errors: int = 0
    batches: int = 0
    batched_records: int = 0  # records that went through the model's batches

    @property
    def mean_batch(self) -> float:
        return self.batched_records / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "mean_batch": self.mean_batch}


class ServeTotals:
    """Thread-safe updates of a `ReplicaStats`."""

    def __init__(self) -> None:
        self.stats = ReplicaStats()
        self._lock = threading.Lock()

    def request(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered (`route`, `status` and `seconds` are for subclasses' metrics)."""
        with self._lock:
            self.stats.requests += 1

    def batch(self, size: int, errors: int) -> None:
        """One model batch of `size` records, `errors` of them answered with an error."""
        with self._lock:
            self.stats.batches += 1
            self.stats.batched_records += size
            self.stats.records += size
            self.stats.record_errors += errors

    def rejected_records(self, errors: int) -> None:
        """Records refused before batching (a `RecordError` from the request): counted as records and errors."""
        with self._lock:
            self.stats.records += errors
            self.stats.record_errors += errors
