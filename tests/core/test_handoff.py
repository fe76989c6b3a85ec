"""ModelCalls: model calls handed to worker threads in lanes, answers delivered back to the loop in bulk."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pyserving.core.handoff import LANE_CALLS, ModelCalls


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_every_call_gets_its_own_answer_or_exception() -> None:
    def work(i: int) -> int:
        if i % 7 == 3:
            raise ValueError(f"bad {i}")
        return i * i

    async def main() -> None:
        with ThreadPoolExecutor(4) as executor:
            calls = ModelCalls(executor)
            results = await asyncio.gather(*(calls.run(work, i) for i in range(500)), return_exceptions=True)
        for i, result in enumerate(results):
            if i % 7 == 3:
                assert isinstance(result, ValueError) and str(result) == f"bad {i}"
            else:
                assert result == i * i

    run(main())


def test_no_more_calls_at_once_than_lanes() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        with lock:
            running -= 1

    async def main() -> None:
        with ThreadPoolExecutor(8) as executor:
            calls = ModelCalls(executor, lanes=3)
            await asyncio.gather(*(calls.run(work) for _ in range(60)))

    run(main())
    assert 1 <= most <= 3


def test_a_call_cancelled_before_its_turn_is_not_run() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocker() -> None:
        started.set()
        release.wait(10)

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            calls = ModelCalls(executor, lanes=1)
            first = calls.run(blocker)
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
            second = calls.run(ran.append, "second")
            second.cancel()
            third = calls.run(ran.append, "third")
            release.set()
            await first
            await third
            assert second.cancelled()

    run(main())
    assert ran == ["third"]


def test_other_executor_work_gets_a_turn_while_calls_keep_coming() -> None:
    """A lane yields its thread after LANE_CALLS calls: work queued behind it on the executor runs before the
    model call queue is empty."""
    order: list[str] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            calls = ModelCalls(executor, lanes=1)
            futures = [calls.run(order.append, f"call{i}") for i in range(LANE_CALLS * 3)]
            other = asyncio.get_running_loop().run_in_executor(executor, order.append, "other")
            await asyncio.gather(other, *futures)

    run(main())
    assert order.index("other") <= LANE_CALLS + 1
    assert sorted(x for x in order if x != "other") == sorted(f"call{i}" for i in range(LANE_CALLS * 3))


def test_a_shut_down_executor_refuses_calls_as_run_in_executor_does() -> None:
    async def main() -> None:
        executor = ThreadPoolExecutor(1)
        executor.shutdown()
        with pytest.raises(RuntimeError):
            ModelCalls(executor).run(print)

    run(main())
