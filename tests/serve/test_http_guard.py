"""`UploadGuard`: body deadline, per-client refusal, the oldest upload cut at the total limit, size caps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from crisis_tool.runtime.serve.http_guard import UploadGuard
from crisis_tool.runtime.serve.predict_request import RequestRejected


async def chunks(*parts: bytes, stall: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if stall is not None:
        await stall.wait()  # a client that stops sending


def run(coro):  # noqa: ANN001, ANN201 - a test helper
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_whole_body_and_size_caps() -> None:
    guard = UploadGuard(deadline_s=5)
    assert run(guard.read(chunks(b"ab", b"cd"), "c", "4", limit=4)) == b"abcd"
    for declared, parts, status, message in [
        ("5", (b"abcde",), 413, "body of 5 bytes; the limit is 4"),
        (None, (b"abc", b"de"), 413, "body over 4 bytes"),
        ("x1", (b"a",), 400, "bad Content-Length"),
    ]:
        with pytest.raises(RequestRejected) as info:
            run(guard.read(chunks(*parts), "c", declared, limit=4))
        assert (info.value.status, message in info.value.message) == (status, True)
    assert guard.in_flight == 0


def test_stalled_body_is_cut_at_the_deadline() -> None:
    guard = UploadGuard(deadline_s=0.2)
    with pytest.raises(RequestRejected) as info:
        run(guard.read(chunks(b"[", stall=asyncio.Event()), "c", None, limit=100))
    assert info.value.status == 408 and "within 0.2 s" in info.value.message
    assert (guard.cut_total, guard.in_flight) == (1, 0)


def test_per_client_limit_refuses_the_next_and_total_limit_cuts_the_oldest() -> None:
    async def scenario() -> list[object]:
        guard = UploadGuard(deadline_s=30, per_client=2, total=3)
        stall = asyncio.Event()
        results: list[object] = []

        async def upload(client: str, *parts: bytes, stalled: bool = True) -> None:
            try:
                results.append((client, await guard.read(chunks(*parts, stall=stall if stalled else None),
                                                         client, None, 100)))
            except RequestRejected as exc:
                results.append((client, exc.status, exc.message))

        first = asyncio.ensure_future(upload("a", b"1"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(upload("a", b"2"))
        await asyncio.sleep(0.01)
        await upload("a", b"3")  # a third from the same client: refused at once
        third = asyncio.ensure_future(upload("b", b"4"))
        await asyncio.sleep(0.01)
        await upload("c", b"whole", stalled=False)  # total reached: the oldest ("a" #1) is cut, "c" is served
        await first
        stall.set()
        await asyncio.gather(second, third)
        return results + [(guard.in_flight, guard.cut_total, guard.refused_total)]

    *answers, totals = run(scenario())
    assert answers[0][:2] == ("a", 429) and "already has 2" in answers[0][2]
    assert sorted(answers[1:3], key=str) == [("a", 408, "cut: 3 request bodies were arriving at once and this one "
                                              "was the oldest"), ("c", b"whole")]
    assert sorted(answers[3:]) == [("a", b"2"), ("b", b"4")]
    assert totals == (0, 1, 1)
