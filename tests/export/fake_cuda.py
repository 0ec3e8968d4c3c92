"""An honest stand-in for cuda-python's runtime bindings: asynchronous work really is asynchronous.

"Device" memory is host memory (numpy blocks addressed by their pointer), so the code under test moves real
bytes. cudaMemcpyAsync and kernels enqueued on a stream do nothing until cudaStreamSynchronize (or
cudaDeviceSynchronize): a missing synchronisation leaves outputs unwritten. A host buffer handed to an async
copy must stay alive and unchanged until then: at synchronisation, freed memory is reclaimed and overwritten
(as the allocator would), and a source whose bytes changed since the copy was enqueued raises
`HostBufferReleased`. The event timer is fixed (0.25 ms per interval): timings are not what is tested.
Keep test arrays small (well under 128 KiB): a freed large block is unmapped, and reading it would crash.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import types
from collections.abc import Callable
from typing import Any

import numpy as np

H2D, D2H = 1, 2
EVENT_MS = 0.25


class HostBufferReleased(AssertionError):
    """An async copy's host source was freed or overwritten before the stream was synchronised."""


class FakeCuda:
    """The fake device: memory blocks, per-stream queues of pending work, and a log of what ran."""

    def __init__(self, name: bytes = b"NVIDIA H200", cc: tuple[int, int] = (9, 0), devices: int = 1) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.queues: dict[int, list[tuple[str, int, Callable[[], None]]]] = {}  # (label, host bytes, work)
        self.copies: list[str] = []  # "h2d" / "d2h" in the order they really ran
        self.kernels = 0
        self.syncs = 0
        self._streams = 0
        self.name, self.cc, self.devices = name, cc, devices
        self.cudart = self._bindings()

    # ------------------------------------------------------------------ memory
    def view(self, ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)

    def _malloc(self, n: int) -> tuple[int, int]:
        block = np.zeros(n, dtype=np.uint8)
        self.blocks[block.ctypes.data] = block
        return 0, block.ctypes.data

    def _free(self, ptr: int) -> tuple[int]:
        self.blocks.pop(ptr, None)
        return (0,)

    # ------------------------------------------------------------------ streams
    def enqueue(self, stream: int, label: str, work: Callable[[], None], nbytes: int = 0) -> None:
        """Work that runs when `stream` is synchronised (kernels use this too)."""
        self.queues.setdefault(stream, []).append((label, nbytes, work))

    def _memcpy_async(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
        if kind == H2D:
            digest = hashlib.sha256(ctypes.string_at(src, n)).digest()

            def copy() -> None:
                if hashlib.sha256(ctypes.string_at(src, n)).digest() != digest:
                    raise HostBufferReleased(f"host buffer of an async copy ({n} bytes) was freed or changed "
                                             "before the stream was synchronised")
                ctypes.memmove(dst, src, n)
                self.copies.append("h2d")
        else:
            def copy() -> None:
                ctypes.memmove(dst, src, n)
                self.copies.append("d2h")
        self.enqueue(stream, "h2d" if kind == H2D else "d2h", copy, n)
        return (0,)

    def _reclaim(self, pending: list[tuple[str, int, Callable[[], None]]]) -> list[np.ndarray]:
        """What the allocator does with freed memory meanwhile: hand it out again and overwrite it."""
        gc.collect()
        sizes = {n for label, n, _ in pending if label == "h2d"}
        return [np.full(size, 0xA5, dtype=np.uint8) for size in sizes for _ in range(8)]

    def _synchronize(self, stream: int) -> tuple[int]:
        pending = self.queues.pop(stream, [])
        self.syncs += 1
        squatters = self._reclaim(pending)
        for _, _, work in pending:
            work()
        del squatters
        return (0,)

    def _device_synchronize(self) -> tuple[int]:
        for stream in list(self.queues):
            self._synchronize(stream)
        return (0,)

    def _stream_create(self) -> tuple[int, int]:
        self._streams += 1
        return 0, self._streams

    def _stream_destroy(self, stream: int) -> tuple[int]:
        self.queues.pop(stream, None)
        return (0,)

    def _bindings(self) -> types.SimpleNamespace:
        prop = types.SimpleNamespace(name=self.name, major=self.cc[0], minor=self.cc[1])
        return types.SimpleNamespace(
            cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=H2D, cudaMemcpyDeviceToHost=D2H),
            cudaMalloc=self._malloc, cudaFree=self._free, cudaMemcpyAsync=self._memcpy_async,
            cudaStreamCreate=self._stream_create, cudaStreamSynchronize=self._synchronize,
            cudaStreamDestroy=self._stream_destroy, cudaDeviceSynchronize=self._device_synchronize,
            cudaEventCreate=lambda: (0, object()), cudaEventRecord=lambda e, s: (0,),
            cudaEventElapsedTime=lambda a, b: (0, EVENT_MS), cudaEventDestroy=lambda e: (0,),
            cudaSetDevice=lambda d: (0,), cudaGetDeviceCount=lambda: (0, self.devices),
            cudaGetDeviceProperties=lambda d: (0, prop), cudaGetErrorName=lambda e: (0, b"cudaErrorUnknown"),
        )
