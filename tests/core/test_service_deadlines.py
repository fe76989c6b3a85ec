"""The service's shared deadline timer (REST gives every request the same timeout): each call expires at its own
deadline, finished calls never expire and are not kept, and a call with another timeout is left to its own timer."""

from __future__ import annotations

import asyncio
from typing import Any

from pyserving.core.service import _Deadlines, _Expired


async def outcome(call: asyncio.Future[Any], within_s: float) -> str:
    try:
        await asyncio.wait_for(asyncio.shield(call), within_s)
    except _Expired:
        return "expired"
    except TimeoutError:
        return "pending"
    return "answered"


def test_calls_sharing_a_timeout_expire_each_at_its_own_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines()
        first, second, answered = (loop.create_future() for _ in range(3))
        started = loop.time()
        entries = [deadlines.add(loop, 0.2, first)]
        await asyncio.sleep(0.1)
        entries.append(deadlines.add(loop, 0.2, answered))
        entries.append(deadlines.add(loop, 0.2, second))
        answered.set_result("rows")
        entries[1][1] = None  # what _await_model does once its call is over
        assert await outcome(first, 1) == "expired"
        assert 0.19 <= loop.time() - started < 0.29
        assert not second.done()  # 0.1 s later than the first
        assert await outcome(second, 1) == "expired"
        assert 0.29 <= loop.time() - started < 0.5
        assert answered.result() == "rows"

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_shorter_timeout_after_a_longer_one_is_not_late() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines()
        long_call, short_call = loop.create_future(), loop.create_future()
        entry = deadlines.add(loop, 60, long_call)  # a gRPC client's 60 s deadline, answered at once
        long_call.set_result("rows")
        entry[1] = None  # type: ignore[index]
        assert deadlines.add(loop, 0.1, short_call) is not None
        assert await outcome(short_call, 2) == "expired"

    asyncio.run(asyncio.wait_for(main(), 10))


def test_another_timeout_while_calls_wait_gets_its_own_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines()
        waiting, other = loop.create_future(), loop.create_future()
        assert deadlines.add(loop, 30, waiting) is not None
        assert deadlines.add(loop, 0.5, other) is None
        waiting.cancel()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_finished_calls_leave_the_queue() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines()
        for _ in range(1000):
            call = loop.create_future()
            entry = deadlines.add(loop, 30, call)
            call.set_result(None)
            entry[1] = None  # type: ignore[index]
        assert len(deadlines._entries) == 1  # only the last, until the next call or the timer

    asyncio.run(asyncio.wait_for(main(), 10))
