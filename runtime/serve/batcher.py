"""Records of concurrent requests gathered into model batches, formed when the model is free.

Ray Serve's `@serve.batch` forms a batch as soon as records arrive (its first record plus what comes within
`batch_wait_timeout_s`) and queues it for the model behind a semaphore, so while the model runs, records that
arrive a few milliseconds apart are cut into many batches of 1 or 2 that wait in line: under load the mean
batch stayed near 2 with 8 clients. Here the next batch is formed only when the previous one is done, and it
takes every record that waited meanwhile (up to `max_batch_size`); a record that finds the model idle waits
at most `wait_s` for company, as before. No Ray here: one instance per replica, on its event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class RecordBatcher(Generic[T, R]):
    """`await submit(item)` gives `run([...items])`'s answer for `item`; one batch runs at a time."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_batch_size: int, wait_s: float) -> None:
        self.run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._batches())
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    async def _batches(self) -> None:
        assert self._arrived is not None
        arrived = self._arrived
        while True:
            while not self._waiting:
                arrived.clear()
                await arrived.wait()
            if len(self._waiting) < self.max_batch_size and self.wait_s > 0:
                await self._fill(arrived)
            batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch_size))]
            batch = [(item, future) for item, future in batch if not future.done()]  # a cancelled request
            if batch:
                await self._run(batch)

    async def _fill(self, arrived: asyncio.Event) -> None:
        """Wait at most `wait_s` for the batch to fill."""
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(self._waiting) < self.max_batch_size:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            answers = await self.run([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"the batch function answered {len(answers)} items for {len(batch)}")
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, the loop goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
