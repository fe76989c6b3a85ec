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


def _where_paced_calls_run(fn_seconds: list[float], nbytes: int | None = 100, busy: bool = True) -> list[str]:
    """For each call (taking the given seconds), whether run_paced ran it on the loop's thread or in a lane. Busy:
    the time is spent working, as a model does; else asleep, as a thread preempted or waiting for the GIL is."""
    from pyserving.core.handoff import Pace

    where: list[str] = []

    def model(seconds: float, loop_thread: int) -> None:
        where.append("loop" if threading.get_ident() == loop_thread else "lane")
        if not busy:
            time.sleep(seconds)
            return
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    async def main() -> None:
        with ThreadPoolExecutor(2) as executor:
            calls, pace = ModelCalls(executor), Pace()
            for seconds in fn_seconds:
                await calls.run_paced(pace, nbytes, model, seconds, threading.get_ident())

    run(main())
    return where


def test_a_fast_model_runs_small_requests_on_the_loop_after_one_window() -> None:
    from pyserving.core.handoff import PACE_WINDOW

    where = _where_paced_calls_run([0.0] * (PACE_WINDOW + 5))
    assert where == ["lane"] * PACE_WINDOW + ["loop"] * 5


def test_a_slow_model_and_a_big_request_stay_in_lanes() -> None:
    from pyserving.core.handoff import FAST_CALL_S, INLINE_MAX_BYTES, PACE_WINDOW

    assert set(_where_paced_calls_run([FAST_CALL_S * 3] * (PACE_WINDOW * 2 + 3))) == {"lane"}
    assert set(_where_paced_calls_run([0.0] * (PACE_WINDOW * 2), nbytes=INLINE_MAX_BYTES + 1)) == {"lane"}
    # nbytes None: the size says nothing of the work (string tensors), never inline
    assert set(_where_paced_calls_run([0.0] * (PACE_WINDOW * 2), nbytes=None)) == {"lane"}  # type: ignore[arg-type]


def test_slow_busy_inline_calls_send_the_model_back_to_the_lanes() -> None:
    from pyserving.core.handoff import PACE_WINDOW, SLOW_INLINE_S

    slow = SLOW_INLINE_S * 3
    # A window to learn. A slow call alone keeps it inline (its CPU time is not read: that costs a syscall), and
    # has the next window's CPU time read; two slow and busy calls in that window send it to the lanes.
    calls = [0.0] * PACE_WINDOW + [0.0, slow] + [0.0] * PACE_WINDOW + [slow, 0.0, slow, slow]
    calls += [0.0] * (2 * PACE_WINDOW + 1) + [slow, slow, slow] + [0.0] * (4 * PACE_WINDOW + 1)
    where = _where_paced_calls_run(calls)
    # two fresh windows in lanes (it was demoted once); inline again until three slow calls; then four windows
    assert where == (["lane"] * PACE_WINDOW + ["loop"] * (PACE_WINDOW + 6) + ["lane"] * (2 * PACE_WINDOW)
                     + ["loop"] * 4 + ["lane"] * (4 * PACE_WINDOW) + ["loop"])


def test_inline_calls_slow_only_by_the_wall_clock_keep_the_model_inline() -> None:
    """A fast model's inline call that takes long without working (its thread preempted by the OS, or waiting for
    the GIL) says nothing about the model: on a busy machine that happens in bursts."""
    from pyserving.core.handoff import PACE_WINDOW, SLOW_INLINE_S

    where = _where_paced_calls_run([0.0] * PACE_WINDOW + [SLOW_INLINE_S * 3] * 8 + [0.0] * 4, busy=False)
    assert where == ["lane"] * PACE_WINDOW + ["loop"] * 12


def test_a_long_fast_stretch_earns_back_the_trust_a_demotion_cost() -> None:
    """On a busy machine a fast model's call is now and then slow and busy (its thread's CPU inflated by what shares
    the cores): a burst of them demotes it. Without a way back the windows asked doubled to 64 (1024 calls in lanes
    after each demotion), and the small model spent most of its time in lanes on 2 cores; a long stretch of fast
    inline calls halves what the next demotion asks."""
    from pyserving.core.handoff import PACE_WINDOW, SLOW_INLINE_S, TRUST_BACK_CALLS

    slow = SLOW_INLINE_S * 3
    calls = ([0.0] * PACE_WINDOW + [slow] * 3 + [0.0] * (2 * PACE_WINDOW) + [0.0] * TRUST_BACK_CALLS
             + [slow] * 3 + [0.0] * (2 * PACE_WINDOW + 1))
    where = _where_paced_calls_run(calls)
    # demoted twice, and each time two windows in lanes: without the stretch between, the second would ask four
    assert where == (["lane"] * PACE_WINDOW + ["loop"] * 3 + ["lane"] * (2 * PACE_WINDOW)
                     + ["loop"] * (TRUST_BACK_CALLS + 3) + ["lane"] * (2 * PACE_WINDOW) + ["loop"])


def test_the_cpu_clock_is_read_only_after_a_slow_call() -> None:
    """Reading a thread's CPU clock is a syscall: a fast model's inline calls read it only in the window after a
    call slow by the wall clock."""
    from pyserving.core.handoff import PACE_WINDOW, SLOW_INLINE_S, Pace

    pace = Pace()
    for _ in range(PACE_WINDOW):
        pace.lane_call(0.0)
    assert pace.fast and not pace.watching
    for _ in range(100):
        pace.inline_call(1e-5, None)
    assert not pace.watching
    pace.inline_call(SLOW_INLINE_S * 2, None)
    watched = []
    for _ in range(PACE_WINDOW):
        watched.append(pace.watching)
        pace.inline_call(1e-5, 1e-5)
    assert watched == [True] * PACE_WINDOW
    assert not pace.watching and pace.fast
