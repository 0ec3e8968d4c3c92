"""Prometheus metrics of the serve replicas, through Ray's metrics agent (`ray.util.metrics`).

Ray exports them with a `ray_` prefix on each node's metrics port (`ray start --metrics-export-port`), next to
Ray Serve's own `ray_serve_*` metrics:

* `crisis_serve_requests` (counter; tags route, status): HTTP requests answered by a replica.
* `crisis_serve_request_latency_s` (histogram; tag route): time from request to answer inside the replica.
* `crisis_serve_batch_size` (histogram): records per model batch (`batcher.RecordBatcher`).
* `crisis_serve_records` (counter): records classified (including failed ones).
* `crisis_serve_record_errors` (counter): records answered with a per-record error.

The replica also keeps plain totals (`serve_totals.ReplicaStats`), which `PredictorServer.stats()` returns.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

from crisis_tool.runtime.serve.serve_totals import ReplicaStats, ServeTotals

__all__ = ["BATCH_BOUNDS", "LATENCY_BOUNDS_S", "ReplicaStats", "ServeMetrics"]

LATENCY_BOUNDS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_BOUNDS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]


class ServeMetrics(ServeTotals):
    """The replica's Ray metrics and its own totals, updated together."""

    def __init__(self) -> None:
        super().__init__()
        self._requests = Counter("crisis_serve_requests", "HTTP requests answered", tag_keys=("route", "status"))
        self._latency = Histogram("crisis_serve_request_latency_s", "Request latency inside the replica (s)",
                                  boundaries=LATENCY_BOUNDS_S, tag_keys=("route",))
        self._batch = Histogram("crisis_serve_batch_size", "Records per model batch", boundaries=BATCH_BOUNDS)
        self._records = Counter("crisis_serve_records", "Records classified, failed ones included")
        self._errors = Counter("crisis_serve_record_errors", "Records answered with a per-record error")

    def request(self, route: str, status: int, seconds: float) -> None:
        self._requests.inc(1, tags={"route": route, "status": str(status)})
        self._latency.observe(seconds, tags={"route": route})
        super().request(route, status, seconds)

    def batch(self, size: int, errors: int) -> None:
        self._batch.observe(size)
        self._records.inc(size)
        if errors:
            self._errors.inc(errors)
        super().batch(size, errors)

    def rejected_records(self, errors: int) -> None:
        if errors:
            self._records.inc(errors)
            self._errors.inc(errors)
            super().rejected_records(errors)
