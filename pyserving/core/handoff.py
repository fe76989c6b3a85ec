"""Blocking model calls handed from the event loop to worker threads, cheaper per call than `run_in_executor`.

`loop.run_in_executor` pays, per call, a `concurrent.futures.Future`, an asyncio Future chained to it with two
callbacks, a `SimpleQueue.put` that wakes an idle worker thread (a futex wake and a GIL hand-over), and a
`call_soon_threadsafe` that writes to the loop's self-pipe. For a model that answers in tens of microseconds that
hand-off costs more than the model (cProfile of the small dense model's server at concurrency 32: the queue put
was the loop's most expensive single call, GIL hand-over included).

`ModelCalls` keeps its own queue of calls and runs them on the same executor's threads in "lanes": a lane is one
executor task that runs queued calls back to back until the queue is empty. Under load, a call joins the queue
and wakes nobody: a running lane picks it up. Answers go back in bulk: a lane appends to the loop's outbox and
schedules one delivery callback for as many answers as arrive before the loop runs it. With one call in flight it
costs what `run_in_executor` costs.

Fairness with the executor's other work (batches of batching models share it): a lane gives its thread back after
`LANE_CALLS` calls, queueing a fresh lane behind whatever else the executor has waiting.

Calls too quick to be worth a thread (`Pace`): a model that answers a small request in a few tens of microseconds
(a small dense model, TensorFlow running its ops in the caller's thread) costs less run on the event loop than
handed over, even with lanes: the wake-ups are what grpc.aio pays for most (measured, small model, one process,
gRPC at c=32: 1010 -> 720 us of server CPU per request). `run_paced` runs such calls inline. What earns it: the
fastest of the last `PACE_WINDOW` calls through a lane took under `FAST_CALL_S` (the fastest, because GIL waits and
wake-ups only ever add), and the request is small (`INLINE_MAX_BYTES`). An inline call over `SLOW_INLINE_S` by the
wall clock has the next `PACE_WINDOW` calls' CPU time measured; two of those slow by the wall clock and busy as
long in the loop's thread (CPU time), within `PACE_WINDOW` inline calls, send the model back to the lanes until new
windows show it fast again, twice as many after each demotion: a model that is sometimes slow holds the loop for
three slow calls, and then ever more rarely; `TRUST_BACK_CALLS` inline calls without a slow one halve what the next
demotion asks. The CPU time is read only then because each reading is a syscall (~10 µs of CPU under load). It is
needed at all because a thread preempted by the OS, or waiting for the GIL after the model released it, reads slow
by the wall clock now and then however fast the model is, in bursts; and on a busy machine even its CPU time swells
(logged on 2 cores under load, the small model, 40-50 µs at its fastest: slow calls of 1-4.7 ms by the wall clock
and 200-730 µs of CPU every 0.1-0.5 s; with half of `SLOW_INLINE_S` as the CPU bar and windows that only doubled,
the model spent most of its time in lanes, at ~50 µs more of the model process's CPU per request). A model whose
ops run on other threads still shows in the caller's CPU time, which runs a share of the work. Only runtimes whose
cost follows the input's shape opt in (`inline_when_fast`: TensorFlow, ONNX Runtime, torch; not Python models,
whose code may do anything, nor TFLite, whose interpreters are handed out under a lock); string inputs never run
inline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

log = logging.getLogger("pyserving.handoff")

LANE_CALLS = 16
"""Calls a lane runs before it yields its executor thread to other queued work."""
DEFAULT_LANES = 4
FAST_CALL_S = 100e-6
"""A model whose fastest recent call took less than this runs small requests on the event loop."""
SLOW_INLINE_S = 4 * FAST_CALL_S
"""Two inline calls slower than this (and busy for as long), within `PACE_WINDOW` inline calls, send their model
back to the lanes."""
INLINE_MAX_BYTES = 64 << 10
"""Requests with more input bytes than this always go to a lane."""
PACE_WINDOW = 16
MAX_BACKOFF_WINDOWS = 64
"""After its k-th demotion a model must look fast for 2**k windows (at most this many) before it is inlined again:
one whose cost depends on what is sent cannot hold the loop often."""
TRUST_BACK_CALLS = 16 * PACE_WINDOW
"""Inline calls without a slow one that halve the windows the next demotion will ask for."""


class Pace:
    """How fast one model's small calls are (one per loaded version): decides whether `run_paced` runs them
    inline. Only calls that could run inline are measured. Written from lanes and the loop without a lock: a lost
    update only delays a decision by a window."""

    __slots__ = ("fastest", "_window_min", "_count", "_fast_windows", "_needed", "_inline", "_slow_at", "_trusted_at",
                 "_watch")

    def __init__(self) -> None:
        self.fastest = math.inf
        """The fastest call of the last full window through a lane (inf: not known yet, or just demoted)."""
        self._window_min = math.inf
        self._count = 0
        self._fast_windows = 0
        self._needed = 1
        """Fast windows in a row before inlining (doubles at each demotion)."""
        self._inline = 0
        """Inline calls since the last demotion."""
        self._slow_at = -PACE_WINDOW
        """`_inline` at the last slow inline call."""
        self._trusted_at = 0
        """`_inline` when `_needed` was last halved."""
        self._watch = 0
        """Inline calls left whose CPU time is measured."""

    def lane_call(self, seconds: float) -> None:
        if seconds < self._window_min:
            self._window_min = seconds
        self._count += 1
        if self._count >= PACE_WINDOW:
            fastest, self._window_min, self._count = self._window_min, math.inf, 0
            self._fast_windows = self._fast_windows + 1 if fastest < FAST_CALL_S else 0
            self.fastest = fastest if self._fast_windows >= self._needed else math.inf

    @property
    def fast(self) -> bool:
        return self.fastest < FAST_CALL_S

    @property
    def watching(self) -> bool:
        """Whether the next inline call's CPU time is wanted. Only after a call slow by the wall clock: reading a
        thread's CPU clock is a syscall, measured at ~10 µs of CPU and ~45 µs of wall time each on 2 busy cores
        (two per call were a tenth of the model process's CPU per request for the small model)."""
        return self._watch > 0

    def inline_call(self, seconds: float, cpu_seconds: float | None) -> None:
        """An inline call took `seconds` by the wall clock, `cpu_seconds` of its (the loop's) thread (None: not
        measured, as when not `watching`)."""
        self._inline += 1
        if self._watch:
            self._watch -= 1
        if seconds > SLOW_INLINE_S:
            if cpu_seconds is None:  # slow by the wall clock: watch the CPU time of the calls that follow
                self._watch = PACE_WINDOW
                return
            if cpu_seconds > SLOW_INLINE_S:  # slow and busy: the model's doing, or the machine's
                self._watch = PACE_WINDOW
                if self._inline - self._slow_at > PACE_WINDOW:  # the first in a while
                    self._slow_at = self._inline
                    return
                # back to the lanes, measured afresh, and trusted later next time
                self.fastest, self._window_min, self._count, self._fast_windows = math.inf, math.inf, 0, 0
                self._needed = min(self._needed * 2, MAX_BACKOFF_WINDOWS)
                self._inline, self._slow_at, self._trusted_at, self._watch = 0, -PACE_WINDOW, 0, 0
                return
        if self._needed > 1 and self._inline - self._trusted_at >= TRUST_BACK_CALLS:
            self._needed //= 2  # a long stretch without a slow call: the next demotion costs less
            self._trusted_at = self._inline


class Answer(Protocol):
    """Where a call's answer goes: an asyncio.Future, or anything that takes an answer the same way."""

    def done(self) -> bool: ...

    def set_result(self, value: Any, /) -> None: ...

    def set_exception(self, exc: BaseException, /) -> None: ...


class _Outbox:
    """Answers on their way back to one event loop, delivered by as few loop wake-ups as possible."""

    __slots__ = ("loop", "answers", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.answers: deque[tuple[Answer, BaseException | None, Any]] = deque()
        self.scheduled = False

    def post(self, future: Answer, error: BaseException | None, value: Any) -> None:
        """From a worker thread. The answer is queued before the flag is read, and the loop clears the flag before
        it drains: an answer is never left behind (at worst a delivery finds nothing to do)."""
        self.answers.append((future, error, value))
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.deliver)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def deliver(self) -> None:
        self.scheduled = False
        answers = self.answers
        while answers:
            future, error, value = answers.popleft()
            if future.done():  # cancelled meanwhile (client gone, deadline): the answer is nobody's
                continue
            try:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
            except Exception:  # one answer's taker failing must not strand the answers queued behind it
                log.exception("Delivering a model call's answer failed")


class ModelCalls:
    """Run `fn(*args)` on `executor`'s threads, at most `lanes` at once, and await the answer on the loop."""

    def __init__(self, executor: Executor, lanes: int | None = None) -> None:
        self._executor = executor
        # A ThreadPoolExecutor's size is what --num_worker_threads asked for: as many model calls at once as before.
        self._max_lanes = max(1, lanes or getattr(executor, "_max_workers", DEFAULT_LANES))
        self._lanes = 0
        self._lock = threading.Lock()
        self._queue: deque[tuple[_Outbox, Answer, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._outboxes: dict[asyncio.AbstractEventLoop, _Outbox] = {}

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """On the event loop: queue the call; the future holds its answer (or its exception). A future cancelled
        (or given an exception) before a lane reaches the call skips the call."""
        future = asyncio.get_running_loop().create_future()
        self.start(future, fn, *args)
        return future

    def run_paced(self, pace: Pace, nbytes: int | None, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """`run`, but inline on the loop when `pace` says the model is fast and the request (`nbytes` of input,
        None: unknown, never inline) is small; a small request's time feeds `pace` either way."""
        future = asyncio.get_running_loop().create_future()
        self.start_paced(future, pace, nbytes, fn, *args)
        return future

    def start_paced(self, target: Answer, pace: Pace, nbytes: int | None, fn: Callable[..., Any], *args: Any) -> None:
        """`start`, paced as `run_paced` is. Inline, `target` has its answer before this returns."""
        small = nbytes is not None and nbytes <= INLINE_MAX_BYTES
        if small and pace.fast:
            watch = pace.watching
            started = time.perf_counter()
            cpu_started = time.thread_time() if watch else 0.0
            error: BaseException | None = None
            try:
                value = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - the caller's await re-raises it
                error, value = exc, None
            # only the call is timed: what the answer wakes (a batch completes all its callers) is not the model's
            pace.inline_call(time.perf_counter() - started, time.thread_time() - cpu_started if watch else None)
            if error is not None:
                target.set_exception(error)
                del error  # its traceback holds this frame: no cycle left for the collector
            else:
                target.set_result(value)
        elif small:
            self.start(target, _timed, pace, fn, *args)
        else:
            self.start(target, fn, *args)

    def start(self, target: Answer, fn: Callable[..., Any], *args: Any) -> None:
        """On the event loop: queue the call; its answer goes to `target.set_result` (or `set_exception`) on the
        loop, unless `target.done()` by then. `run` with a future of the caller's own: a batch completes all its
        callers in the one delivery rather than through a future and a callback of its own."""
        loop = asyncio.get_running_loop()
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = _Outbox(loop)
            for old in [lp for lp in self._outboxes if lp.is_closed()]:
                del self._outboxes[old]
        with self._lock:
            self._queue.append((outbox, target, fn, args))
            start = self._lanes < self._max_lanes
            if start:
                self._lanes += 1
        if start:
            try:
                self._executor.submit(self._lane)
            except RuntimeError:  # executor shut down (server stopping): refuse this call as run_in_executor would
                with self._lock:
                    self._lanes -= 1
                    try:
                        self._queue.remove((outbox, target, fn, args))
                    except ValueError:  # a running lane took it already
                        return
                raise

    def _lane(self) -> None:
        ran = 0
        while True:
            with self._lock:
                if not self._queue:
                    self._lanes -= 1
                    return
                if ran >= LANE_CALLS:
                    requeue = True
                else:
                    requeue = False
                    outbox, future, fn, args = self._queue.popleft()
            if requeue:
                try:
                    self._executor.submit(self._lane)  # the lane count stays: the fresh lane is this one
                    return
                except RuntimeError:  # executor shutting down: finish the queue on this thread
                    ran = 0
                    continue
            ran += 1
            if future.done():  # cancelled, or its deadline passed, before its turn: nobody waits for it
                continue
            try:
                outbox.post(future, None, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the caller's await re-raises it
                outbox.post(future, exc, None)
            del future, fn, args  # a lane idle in the executor must not keep big tensors alive


def _timed(pace: Pace, fn: Callable[..., Any], *args: Any) -> Any:
    """In a lane: the call, its time told to `pace` (successful calls only: a quick refusal says nothing of the
    model's speed)."""
    started = time.perf_counter()
    value = fn(*args)
    pace.lane_call(time.perf_counter() - started)
    return value
