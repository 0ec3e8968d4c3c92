"""`serve.batcher.RecordBatcher` (no Ray): a batch is formed when the model is free and takes every record that
waited meanwhile; failures reach every request of their batch; cancelled requests are dropped."""

from __future__ import annotations

import asyncio

import pytest

from crisis_tool.runtime.serve.batcher import RecordBatcher


def test_records_arriving_while_the_model_runs_form_one_batch() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        release, sizes = asyncio.Event(), []

        async def run(items: list[int]) -> list[int]:
            sizes.append(len(items))
            if len(sizes) == 1:
                await release.wait()  # the model is busy with the first batch
            return [2 * i for i in items]

        batcher: RecordBatcher[int, int] = RecordBatcher(run, max_batch_size=4, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        while not sizes:
            await asyncio.sleep(0)
        later = []
        for i in range(1, 10):  # staggered arrivals while the model runs
            later.append(asyncio.ensure_future(batcher.submit(i)))
            for _ in range(3):
                await asyncio.sleep(0)
        release.set()
        return [await first, *await asyncio.gather(*later)], sizes

    answers, sizes = asyncio.run(scenario())
    assert answers == [2 * i for i in range(10)]
    assert sizes == [1, 4, 4, 1]  # not nine batches of one


def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    async def scenario() -> tuple[list[object], int]:
        async def run(items: list[int]) -> list[int]:
            if 0 in items:
                raise ValueError("model failed")
            return items

        batcher: RecordBatcher[int, int] = RecordBatcher(run, max_batch_size=8, wait_s=0.01)
        first = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
        return first, await batcher.submit(5)

    first, after = asyncio.run(scenario())
    assert all(isinstance(e, ValueError) for e in first) and after == 5


def test_a_cancelled_request_is_left_out() -> None:
    async def scenario() -> list[list[int]]:
        release, seen = asyncio.Event(), []

        async def run(items: list[int]) -> list[int]:
            seen.append(items)
            if len(seen) == 1:
                await release.wait()
            return items

        batcher: RecordBatcher[int, int] = RecordBatcher(run, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        while not seen:
            await asyncio.sleep(0)
        gone, kept = asyncio.ensure_future(batcher.submit(1)), asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        assert await first == 0 and await kept == 2
        with pytest.raises(asyncio.CancelledError):
            await gone
        return seen

    assert asyncio.run(scenario()) == [[0], [2]]
