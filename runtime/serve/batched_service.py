"""A ServiceCore whose records, from all concurrent requests, are gathered into model batches.

Shared by the Ray Serve replica (`deployment.PredictorServer`, which adds Ray's metrics, the drain flag and
health checks) and the single-process server (`local_server`). No Ray here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.batcher import RecordBatcher
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.serve_totals import ServeTotals
from crisis_tool.runtime.serve.service import ServiceCore
from crisis_tool.runtime.serve.task_view import failed_prediction


class BatchedService(ServiceCore):
    """Records batched across requests (`batcher.RecordBatcher`); totals in `metrics`."""

    def __init__(self, predictor_options: PredictorOptions, serve_options: ServeOptions,
                 metrics: ServeTotals | None = None) -> None:
        super().__init__(predictor_options, serve_options)
        self.metrics = metrics if metrics is not None else ServeTotals()
        self.batcher: RecordBatcher[Record, Any] = RecordBatcher(self._predict_batch, serve_options.batch_size,
                                                                 serve_options.batch_wait_ms / 1000.0)

    def stats(self) -> dict[str, Any]:
        """Totals (requests, records, record errors, batches, mean batch) and the upload guard's."""
        return {**self.metrics.stats.to_dict(), **self.guard_stats()}

    async def predict_records(self, items: list[Record | RecordError]) -> list[Any]:
        return list(await asyncio.gather(*(self._answer(item) for item in items)))

    async def _answer(self, item: Record | RecordError) -> Any:
        if isinstance(item, RecordError):
            self.metrics.rejected_records(1)
            return failed_prediction(item.id, item.error)
        return await self.batcher.submit(item)

    async def _predict_batch(self, records: list[Record]) -> list[Any]:
        predictions = await asyncio.to_thread(self.predictor.predict, records)
        self.metrics.batch(len(predictions), sum(p.error is not None for p in predictions))
        self.trimmer.maybe_trim()
        return predictions
