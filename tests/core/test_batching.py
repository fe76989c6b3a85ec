"""The batching engine without a server: Batcher.run on a fresh event loop, batch threads from a real thread pool.

The model is a plain function at the runtime boundary (where TensorFlow's session would be): it records the batch
it was given and answers `y = 2x`, `z = x + 1`. Tests that need a precise batch composition first occupy the only
batch thread with a "blocker" task on another signature, held in the model by a gate, so that the tasks under test
pile up in their queue in arrival order; opening the gate lets them run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pytest

from pyserving.core.batching import Batcher, BatchScheduler
from pyserving.errors import Code, ServingError
from pyserving.options import BatchingOptions

T = TypeVar("T")
SIG = "serving_default"
BLOCKER = "blocker"
# TF Serving's own text (shared_batch_scheduler.h), spelled out so that a change to the constant shows here.
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"

OUTPUTS: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = {
    "y": lambda inputs: inputs["x"] * 2,
    "z": lambda inputs: inputs["x"] + 1,
}
Respond = Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]
Task = tuple[str, dict[str, np.ndarray], tuple[str, ...]]  # signature, inputs, output keys


def answer(inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: OUTPUTS[k](inputs) for k in output_keys}


@dataclass
class Call:
    signature: str
    inputs: dict[str, np.ndarray]
    output_keys: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))


class Model:
    """Stands in for the TensorFlow runtime: records each call's batch, its concurrency, and can be held by a gate."""

    def __init__(self, *, delay_s: float = 0.0, respond: Respond = answer) -> None:
        self.delay_s = delay_s
        self.respond = respond
        self.gate = threading.Event()
        self.gate.set()
        self.all_calls: list[Call] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        with self._lock:
            self.all_calls.append(Call(signature, {k: v.copy() for k, v in inputs.items()}, tuple(output_keys)))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if not self.gate.wait(10):
                raise TimeoutError("the test never opened the model's gate")
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.respond(inputs, output_keys)
        finally:
            with self._lock:
                self.active -= 1

    @property
    def calls(self) -> list[Call]:
        """The calls of the tasks under test (the blocker's left out)."""
        return [c for c in self.all_calls if c.signature != BLOCKER]

    def sizes(self) -> list[int]:
        return [c.size for c in self.calls]


def run(main: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
    """Run a test's body on a fresh event loop; an engine that loses a task fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(main, timeout_s))


@contextlib.contextmanager
def engine(model: Model, **options: Any) -> Iterator[Batcher]:
    """A Batcher on its own scheduler and thread pool; one batch thread and a roomy queue unless the test says."""
    opts = BatchingOptions(**{"num_batch_threads": 1, "max_enqueued_batches": 1000, **options})
    with ThreadPoolExecutor(8, thread_name_prefix="batch") as pool:
        try:
            yield Batcher(model, opts, BatchScheduler(opts.num_batch_threads, pool))
        finally:
            model.gate.set()  # never leave a worker waiting, or the pool's shutdown would hang


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every task created so far take its first step (they enqueue synchronously, in creation order)."""
    for _ in range(3):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def busy(batcher: Batcher, model: Model) -> AsyncIterator[None]:
    """The only batch thread held by a blocker in the model until the block ends; tasks started inside pile up."""
    model.gate.clear()
    full = np.zeros((batcher.execution_limit, 1), np.float32)  # a full batch: it runs now, whatever the timeout
    blocker = asyncio.ensure_future(batcher.run(BLOCKER, {"x": full}, ("y",)))
    await until(lambda: model.active == 1)
    try:
        yield
    finally:
        model.gate.set()
        await blocker


def start(batcher: Batcher, tasks: Sequence[Task]) -> list[asyncio.Future[dict[str, np.ndarray]]]:
    return [asyncio.ensure_future(batcher.run(*t)) for t in tasks]


async def while_busy(batcher: Batcher, model: Model, tasks: Sequence[Task]) -> list[Any]:
    """Queue `tasks` while the thread is busy, then let them run; their results (or exceptions), in order."""
    async with busy(batcher, model):
        futures = start(batcher, tasks)
        await settle()
    return await asyncio.gather(*futures, return_exceptions=True)


def rows(n: int, *, offset: int = 0, width: int = 1, dtype: Any = np.float32) -> np.ndarray:
    return (np.arange(n * width).reshape(n, width) + offset).astype(dtype)


def task(n: int, *, offset: int = 0, signature: str = SIG, outputs: tuple[str, ...] = ("y",), **kw: Any) -> Task:
    return signature, {"x": rows(n, offset=offset, **kw)}, outputs


def tasks_of(sizes: Sequence[int]) -> list[Task]:
    """One single-input task per size, rows numbered on from the previous task's so every row is unique."""
    offsets = np.cumsum([0, *sizes])
    return [task(n, offset=1000 + int(o)) for n, o in zip(sizes, offsets)]


def assert_own_rows(t: Task, result: Any) -> None:
    assert not isinstance(result, BaseException), result
    _, inputs, outputs = t
    assert set(result) == set(outputs)
    for key in outputs:
        expected = OUTPUTS[key](inputs)
        assert result[key].dtype == expected.dtype
        np.testing.assert_array_equal(result[key], expected)


# --- every caller gets its own rows ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "options",
    [
        pytest.param(dict(max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=2), id="plain"),
        pytest.param(dict(max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=2,
                          allowed_batch_sizes=(4, 8, 16)), id="allowed-sizes"),
        pytest.param(dict(max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=2,
                          enable_large_batch_splitting=True, max_execution_batch_size=5), id="splitting"),
        pytest.param(dict(max_batch_size=16, batch_timeout_micros=0, num_batch_threads=3,
                          enable_large_batch_splitting=True, max_execution_batch_size=5,
                          allowed_batch_sizes=(3, 5)), id="splitting+allowed-sizes"),
        pytest.param(dict(max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=2,
                          pad_variable_length_inputs=True), id="pad-variable-length"),
    ],
)
def test_many_concurrent_tasks_each_get_their_own_rows(options: dict[str, Any]) -> None:
    model = Model(delay_s=0.003)
    rng = np.random.default_rng(7)
    tasks: list[Task] = []
    offset = 0
    for i in range(60):
        n = int(rng.integers(1, 13 if options.get("enable_large_batch_splitting") else 8))
        inputs = {"x": rows(n, offset=offset, width=3), "w": rows(n, offset=-offset, width=2)}
        tasks.append((SIG, inputs, ("y", "z") if i % 3 else ("y",)))
        offset += n * 3

    async def main() -> list[Any]:
        with engine(model, **options) as batcher:
            async def one(i: int, t: Task) -> dict[str, np.ndarray]:
                await asyncio.sleep((i % 5) / 1000)
                return await batcher.run(*t)
            results = await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)), return_exceptions=True)
            assert batcher.queue_length == 0
            return results

    for t, result in zip(tasks, run(main())):
        assert_own_rows(t, result)
    limit = options.get("max_execution_batch_size") or options["max_batch_size"]
    assert all(c.size <= limit for c in model.calls), model.sizes()
    if allowed := options.get("allowed_batch_sizes"):
        assert set(model.sizes()) <= set(allowed)
    else:
        assert sum(model.sizes()) == sum(len(t[1]["x"]) for t in tasks)
    if not options.get("enable_large_batch_splitting"):
        assert len(model.calls) < len(tasks), "no batch held more than one task"


SHARED_TASK = task(1, width=2)


@pytest.mark.parametrize(
    ("other", "shares"),
    [
        pytest.param(task(2, offset=50, width=2), True, id="same-key-shares"),
        pytest.param(task(1, width=2, signature="other"), False, id="signature"),
        pytest.param(task(1, width=2, outputs=("z",)), False, id="output-set"),
        pytest.param(task(1, width=2, outputs=("y", "z")), False, id="output-superset"),
        pytest.param(task(1, width=2, dtype=np.float64), False, id="dtype-float64"),
        pytest.param(task(1, width=2, dtype=np.int32), False, id="dtype-int32"),
        pytest.param(task(1, width=3), False, id="non-batch-shape"),
        pytest.param((SIG, {"x": rows(1, width=2), "w": rows(1, width=2)}, ("y",)), False, id="input-names"),
        pytest.param((SIG, {"x": rows(1, width=2).reshape(1, 2, 1)}, ("y",)), False, id="rank"),
    ],
)
def test_tasks_share_a_batch_only_with_the_same_signature_outputs_dtypes_and_shapes(other: Task, shares: bool) -> None:
    model = Model()

    async def main() -> list[Any]:
        with engine(model, max_batch_size=8) as batcher:
            return await while_busy(batcher, model, [SHARED_TASK, other])

    results = run(main())
    for t, result in zip([SHARED_TASK, other], results):
        assert_own_rows(t, result)
    n_other = len(next(iter(other[1].values())))
    assert model.sizes() == ([1 + n_other] if shares else [1, n_other])


# --- when a batch runs -------------------------------------------------------------------------------------------

def test_a_full_batch_runs_at_once_without_waiting_for_the_timeout() -> None:
    model = Model()

    async def main() -> float:
        with engine(model, max_batch_size=4, batch_timeout_micros=10_000_000) as batcher:
            started = time.monotonic()
            for t, result in zip(ts := tasks_of([1, 2, 1, 3, 1]), await asyncio.gather(*start(batcher, ts))):
                assert_own_rows(t, result)
            return time.monotonic() - started

    elapsed = run(main())
    assert model.sizes() == [4, 4]  # 1+2+1 is full; 3 does not fit it and fills the next with 1
    assert elapsed < 2.0, "a full batch waited for the 10 s timeout"


@pytest.mark.parametrize("timeout_ms", [20, 100])
def test_a_partial_batch_waits_for_batch_timeout_micros(timeout_ms: int) -> None:
    model = Model()

    async def main() -> float:
        with engine(model, max_batch_size=8, batch_timeout_micros=timeout_ms * 1000) as batcher:
            started = time.monotonic()
            for t, result in zip(ts := tasks_of([1, 2]), await asyncio.gather(*start(batcher, ts))):
                assert_own_rows(t, result)
            return time.monotonic() - started

    elapsed = run(main())
    assert model.sizes() == [3]
    assert timeout_ms / 1000 <= elapsed < timeout_ms / 1000 + 1.0


@pytest.mark.parametrize(
    ("threads", "expected_sizes"),
    [
        (1, [1, 2]),  # the first runs at once alone; the others gather while the only thread is busy
        (3, [1, 1, 1]),  # a free thread for each: no waiting, no batching
    ],
)
def test_with_timeout_zero_a_free_thread_runs_the_batch_at_once(threads: int, expected_sizes: list[int]) -> None:
    model = Model(delay_s=0.02)

    async def main() -> float:
        with engine(model, max_batch_size=8, batch_timeout_micros=0, num_batch_threads=threads) as batcher:
            started = time.monotonic()
            for t, result in zip(ts := tasks_of([1, 1, 1]), await asyncio.gather(*start(batcher, ts))):
                assert_own_rows(t, result)
            return time.monotonic() - started

    elapsed = run(main())
    assert model.sizes() == expected_sizes
    assert elapsed < 0.02 * len(expected_sizes) + 0.5


def test_each_queue_keeps_its_own_timeout_on_a_shared_scheduler() -> None:
    """A short timeout queued after a long one still fires on time (the scheduler's timer is re-armed earlier)."""
    model = Model()

    async def main() -> tuple[float, float]:
        with ThreadPoolExecutor(4) as pool:
            scheduler = BatchScheduler(1, pool)
            slow = Batcher(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=1_000_000), scheduler)
            fast = Batcher(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=30_000), scheduler)
            started = time.monotonic()

            async def timed(batcher: Batcher, t: Task) -> float:
                assert_own_rows(t, await batcher.run(*t))
                return time.monotonic() - started

            slow_s, fast_s = await asyncio.gather(timed(slow, task(1, signature="slow")),
                                                  timed(fast, task(1, signature="fast")))
            return slow_s, fast_s

    slow_s, fast_s = run(main())
    assert 0.03 <= fast_s < 0.8, fast_s  # not held back to the slow queue's timer
    assert 1.0 <= slow_s < 2.5, slow_s


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_num_batch_threads_bounds_concurrent_model_calls(threads: int) -> None:
    model = Model()

    async def main() -> None:
        with engine(model, max_batch_size=1, num_batch_threads=threads) as batcher:
            model.gate.clear()
            ts = tasks_of([1] * 6)
            futures = start(batcher, ts)
            await until(lambda: model.active == threads)
            await asyncio.sleep(0.02)  # time enough for a call beyond the bound to show up
            assert (model.active, len(model.calls)) == (threads, threads)
            model.gate.set()
            for t, result in zip(ts, await asyncio.gather(*futures)):
                assert_own_rows(t, result)

    run(main())
    assert len(model.calls) == 6
    assert model.max_active == threads


# --- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("options", "queued", "next_size", "refused"),
    [
        pytest.param(dict(max_batch_size=1, max_enqueued_batches=2), [1, 1], 1, True, id="one-row-batches"),
        pytest.param(dict(max_batch_size=4, max_enqueued_batches=1), [2], 2, False, id="fits-the-open-batch"),
        pytest.param(dict(max_batch_size=4, max_enqueued_batches=1), [2], 3, True, id="needs-a-new-batch"),
        pytest.param(dict(max_batch_size=4, max_enqueued_batches=2), [4], 4, False, id="room-for-one-more"),
        pytest.param(dict(max_batch_size=10, max_enqueued_batches=3, enable_large_batch_splitting=True,
                          max_execution_batch_size=2), [], 7, True, id="split-needs-4-of-3"),
        pytest.param(dict(max_batch_size=10, max_enqueued_batches=3, enable_large_batch_splitting=True,
                          max_execution_batch_size=2), [], 6, False, id="split-needs-3-of-3"),
        pytest.param(dict(max_batch_size=10, max_enqueued_batches=2, enable_large_batch_splitting=True,
                          max_execution_batch_size=4), [3], 5, False, id="split-tops-up-the-open-batch"),
        pytest.param(dict(max_batch_size=10, max_enqueued_batches=2, enable_large_batch_splitting=True,
                          max_execution_batch_size=4), [3], 6, True, id="split-overflows"),
    ],
)
def test_a_full_queue_refuses_with_unavailable_at_once(
    options: dict[str, Any], queued: list[int], next_size: int, refused: bool
) -> None:
    model = Model()
    ts = tasks_of([*queued, next_size])

    async def main() -> None:
        with engine(model, **options) as batcher:
            async with busy(batcher, model):
                before = batcher.queue_length  # (whether the blocker's running task counts is another test's)
                futures = start(batcher, ts[:-1])
                await settle()
                last = asyncio.ensure_future(batcher.run(*ts[-1]))
                await asyncio.sleep(0)  # one step: the refusal may not wait for the busy thread
                assert last.done() == refused
                if refused:
                    with pytest.raises(ServingError) as info:
                        last.result()
                    assert (info.value.code, info.value.message) == (Code.UNAVAILABLE, QUEUE_FULL)
                else:
                    futures.append(last)
                assert batcher.queue_length == before + len(futures)  # the accepted tasks, not the refused one
            accepted = ts[:-1] if refused else ts
            for t, result in zip(accepted, await asyncio.gather(*futures)):
                assert_own_rows(t, result)
            assert batcher.queue_length == 0
            # a refusal leaves nothing behind: the model saw exactly the accepted rows
            assert sum(model.sizes()) == sum(len(t[1]["x"]) for t in accepted)

    run(main())


@pytest.mark.parametrize(
    ("options", "inputs", "message"),
    [
        pytest.param(dict(max_batch_size=4), {"x": rows(5)},
                     "Task size 5 is larger than maximum input batch size 4", id="too-large"),
        pytest.param(dict(max_batch_size=4, enable_large_batch_splitting=True, max_execution_batch_size=2),
                     {"x": rows(5)}, "Task size 5 is larger than maximum input batch size 4",
                     id="too-large-even-with-splitting"),
        pytest.param(dict(max_batch_size=4), {"x": np.float32(1.0)}, None, id="scalar"),
        pytest.param(dict(max_batch_size=4), {"x": rows(1), "w": np.float32(1.0)}, None, id="scalar-among-others"),
        pytest.param(dict(max_batch_size=4), {"x": rows(2), "w": rows(3)}, None, id="different-0th-dims"),
    ],
)
def test_invalid_tasks_are_refused_with_invalid_argument(
    options: dict[str, Any], inputs: dict[str, np.ndarray], message: str | None
) -> None:
    model = Model()

    async def main() -> ServingError:
        with engine(model, **options) as batcher:
            with pytest.raises(ServingError) as info:
                await batcher.run(SIG, inputs, ("y",))
            assert batcher.queue_length == 0
            return info.value

    error = run(main())
    assert error.code == Code.INVALID_ARGUMENT
    if message is not None:
        assert error.message == message
    assert model.calls == []


@pytest.mark.parametrize(
    ("inputs", "prefix"),
    [
        pytest.param({"x": rows(2), "w": rows(3)}, "Batching Run() input tensors must have equal 0th-dimension size",
                     id="different-0th-dims"),
        pytest.param({"x": np.float32(1.0)}, "Batching Run() input tensors must have at least one dimension",
                     id="scalar"),
        pytest.param({}, "Batching Run() must have at least one input tensor", id="no-inputs"),
    ],
)
def test_invalid_task_messages_start_with_tf_servings_text(inputs: dict[str, np.ndarray], prefix: str) -> None:
    async def main() -> ServingError:
        with engine(Model(), max_batch_size=4) as batcher:
            with pytest.raises(ServingError) as info:
                await batcher.run(SIG, inputs, ("y",))
            return info.value

    error = run(main())
    assert error.code == Code.INVALID_ARGUMENT
    assert error.message.startswith(prefix), error.message


# --- padding and splitting -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("sizes", "model_sizes", "real_sizes"),
    [
        ([1], [2], [1]),
        ([2], [2], [2]),
        ([1, 2], [4], [3]),
        ([2, 2], [4], [4]),
        ([3, 2], [8], [5]),
        ([4, 3, 2], [8, 2], [7, 2]),
        ([8], [8], [8]),
    ],
)
def test_allowed_batch_sizes_pad_for_the_model_and_trim_for_the_callers(
    sizes: list[int], model_sizes: list[int], real_sizes: list[int]
) -> None:
    model = Model()
    ts = tasks_of(sizes)

    async def main() -> list[Any]:
        with engine(model, max_batch_size=8, allowed_batch_sizes=(2, 4, 8)) as batcher:
            results = await while_busy(batcher, model, ts)
            assert batcher.batch_sizes == collections.Counter([8, *model_sizes])  # the blocker's full batch: 8
            return results

    for t, result in zip(ts, run(main())):
        assert_own_rows(t, result)
    assert model.sizes() == model_sizes
    real_rows = np.concatenate([t[1]["x"] for t in ts])
    for call, real in zip(model.calls, real_sizes):
        np.testing.assert_array_equal(call.inputs["x"][:real], real_rows[:real])
        # TF Serving's batching_session.cc pads with copies of the first row of the batch's first task
        assert (call.inputs["x"][real:] == real_rows[0]).all()
        real_rows = real_rows[real:]


@pytest.mark.parametrize(
    ("sizes", "allowed", "model_sizes", "real_sizes"),
    [
        ([11], (), [4, 4, 3], [4, 4, 3]),
        ([16], (), [4, 4, 4, 4], [4, 4, 4, 4]),
        ([3, 7, 2], (), [4, 4, 4], [4, 4, 4]),  # 7 tops up the first batch, fills the second, shares the third
        ([2, 2, 5], (), [4, 4, 1], [4, 4, 1]),  # 5 starts after a full batch
        ([1, 16], (), [4, 4, 4, 4, 1], [4, 4, 4, 4, 1]),
        ([11], (2, 4), [4, 4, 4], [4, 4, 3]),
        ([1, 4], (2, 4), [4, 2], [4, 1]),
    ],
)
def test_large_batch_splitting_spreads_a_task_over_batches_and_reassembles_it(
    sizes: list[int], allowed: tuple[int, ...], model_sizes: list[int], real_sizes: list[int]
) -> None:
    model = Model()
    ts = tasks_of(sizes)

    async def main() -> list[Any]:
        with engine(model, max_batch_size=16, enable_large_batch_splitting=True, max_execution_batch_size=4,
                    allowed_batch_sizes=allowed) as batcher:
            return await while_busy(batcher, model, ts)

    for t, result in zip(ts, run(main())):
        assert_own_rows(t, result)
    assert model.sizes() == model_sizes
    real_rows = np.concatenate([t[1]["x"] for t in ts])  # the model sees every row once, in arrival order
    for call, real in zip(model.calls, real_sizes):
        np.testing.assert_array_equal(call.inputs["x"][:real], real_rows[:real])
        real_rows = real_rows[real:]
    assert len(real_rows) == 0


@pytest.mark.parametrize(
    ("a", "b", "model_batch"),
    [
        pytest.param(np.array([[1, 2]], np.float32), np.array([[5, 6, 7], [8, 9, 10]], np.float32),
                     [[1, 2, 1], [5, 6, 7], [8, 9, 10]], id="2d-first-narrower"),
        pytest.param(np.array([[5, 6, 7]], np.float32), np.array([[1, 2], [3, 4]], np.float32),
                     [[5, 6, 7], [1, 2, 1], [3, 4, 1]], id="2d-second-narrower"),
        pytest.param(np.array([[[3], [4]]], np.int32), np.array([[[7, 8, 9]]], np.int32),
                     [[[3, 3, 3], [4, 3, 3]], [[7, 8, 9], [7, 7, 7]]], id="3d-both-padded"),
    ],
)
def test_pad_variable_length_inputs_batches_different_shapes_padding_with_the_first_element(
    a: np.ndarray, b: np.ndarray, model_batch: list[Any]
) -> None:
    model = Model()
    ts: list[Task] = [(SIG, {"x": a}, ("y",)), (SIG, {"x": b}, ("y",))]

    async def main() -> list[Any]:
        with engine(model, max_batch_size=8, pad_variable_length_inputs=True) as batcher:
            return await while_busy(batcher, model, ts)

    results = run(main())
    assert len(model.calls) == 1
    batch = model.calls[0].inputs["x"]
    np.testing.assert_array_equal(batch, np.array(model_batch, a.dtype))
    # The outputs keep the batch's padded non-batch dims (as TF Serving's do); only the rows are each caller's own.
    np.testing.assert_array_equal(results[0]["y"], batch[:len(a)] * 2)
    np.testing.assert_array_equal(results[1]["y"], batch[len(a):] * 2)


# --- failures and cancellation -----------------------------------------------------------------------------------

MARKER = -1.0

def failing(respond: Respond) -> Respond:
    """A model that misbehaves only for batches holding a MARKER row."""
    def model(inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        return respond(inputs, output_keys) if (inputs["x"] == MARKER).any() else answer(inputs, output_keys)
    return model


def raise_(exc: BaseException) -> Respond:
    def respond(inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        raise exc
    return respond


@pytest.mark.parametrize(
    ("respond", "code", "message"),
    [
        pytest.param(raise_(RuntimeError("boom")), Code.INTERNAL, "RuntimeError: boom", id="exception"),
        pytest.param(raise_(ServingError(Code.RESOURCE_EXHAUSTED, "OOM when allocating")), Code.RESOURCE_EXHAUSTED,
                     "OOM when allocating", id="serving-error-kept"),
        # TF Serving's batching_session.cc SplitOutputTensors: the model broke batching's contract (FAILED_PRECONDITION)
        pytest.param(lambda inputs, keys: {"y": inputs["x"][:1]}, Code.FAILED_PRECONDITION,
                     "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
                     "input tensors", id="too-few-rows"),
        pytest.param(lambda inputs, keys: {"y": np.float32(1)}, Code.FAILED_PRECONDITION,
                     "Batched output tensor has 0 dimensions", id="scalar-output"),
    ],
)
def test_a_model_failure_fails_every_task_of_its_batch_and_only_that_batch(
    respond: Respond, code: Code, message: str
) -> None:
    model = Model(respond=failing(respond))
    bad = (SIG, {"x": np.array([[MARKER]], np.float32)}, ("y",))
    ts = [bad, task(1, offset=10), task(1, offset=20), task(1, offset=30)]

    async def main() -> None:
        with engine(model, max_batch_size=2) as batcher:
            results = await while_busy(batcher, model, ts)
            for result in results[:2]:
                assert isinstance(result, ServingError)
                assert result.code == code
                assert result.message.startswith(message), result.message
            for t, result in zip(ts[2:], results[2:]):
                assert_own_rows(t, result)
            # the engine keeps working: the thread came back, the queue is empty
            assert batcher.queue_length == 0
            later = tasks_of([1, 2])
            for t, result in zip(later, await asyncio.gather(*start(batcher, later))):
                assert_own_rows(t, result)

    run(main())
    assert model.sizes()[:2] == [2, 2]


def test_a_failed_piece_fails_its_split_task_but_not_the_other_batches_tasks() -> None:
    model = Model(respond=failing(raise_(RuntimeError("boom"))))
    split = (SIG, {"x": np.array([[1], [2], [3], [MARKER]], np.float32)}, ("y",))  # pieces: [1] | [2, 3] | [MARKER]
    ts = [task(1, offset=10), split, task(1, offset=20)]

    async def main() -> list[Any]:
        with engine(model, max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2) as b:
            return await while_busy(b, model, ts)

    first, failed, last = run(main())
    assert model.sizes() == [2, 2, 2]  # [10, 1] [2, 3] [MARKER, 20]
    assert_own_rows(ts[0], first)
    assert isinstance(failed, ServingError) and failed.code == Code.INTERNAL
    assert isinstance(last, ServingError) and last.code == Code.INTERNAL  # it shared the failing batch


def test_a_split_task_whose_pieces_do_not_concatenate_fails_alone() -> None:
    """A model whose answer's inner shape depends on the batch (here: two columns for a batch holding MARKER, else
    one) hands a split task pieces that do not concatenate. That task gets INTERNAL saying why; the other tasks of
    its batches get their answers, and the engine keeps working."""
    def widening(inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: np.repeat(v, 2, axis=1) for k, v in answer(inputs, output_keys).items()}

    model = Model(respond=failing(widening))
    split = (SIG, {"x": np.array([[1], [2], [3], [MARKER]], np.float32)}, ("y",))  # pieces: [1] | [2, 3] | [MARKER]
    ts = [task(1, offset=10), split, task(1, offset=20)]

    async def main() -> list[Any]:
        with engine(model, max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2) as b:
            results = await while_busy(b, model, ts)
            later = tasks_of([1, 2])
            for t, result in zip(later, await asyncio.gather(*start(b, later))):
                assert_own_rows(t, result)
            return results

    first, failed, last = run(main())
    assert model.sizes()[:3] == [2, 2, 2]  # [10, 1] [2, 3] [MARKER, 20]
    assert_own_rows(ts[0], first)
    assert isinstance(failed, ServingError) and failed.code == Code.INTERNAL
    assert failed.message.startswith("ValueError: "), failed.message  # numpy's reason: the shapes that differ
    np.testing.assert_array_equal(last["y"], [[40.0, 40.0]])  # its batch's answer, as the model gave it


@pytest.mark.parametrize("when", ["queued", "running"])
@pytest.mark.parametrize("splitting", [False, True], ids=["whole", "split"])
def test_a_cancelled_caller_does_not_break_its_batch(when: str, splitting: bool) -> None:
    model = Model()
    options: dict[str, Any] = dict(max_batch_size=8, batch_timeout_micros=5_000_000)
    if splitting:
        options.update(enable_large_batch_splitting=True, max_execution_batch_size=4)
    victim, *ts = tasks_of([3, 2, 3])  # the victim first in its batch; with splitting: [3, 1 of 2] [1 of 2, 3]

    async def main() -> None:
        with engine(model, **options) as batcher:
            async with contextlib.AsyncExitStack() as stack:
                if when == "queued":
                    await stack.enter_async_context(busy(batcher, model))
                else:
                    model.gate.clear()
                    stack.callback(model.gate.set)
                cancelled = asyncio.ensure_future(asyncio.wait_for(batcher.run(*victim), 0.05))
                await settle()
                others = start(batcher, ts)
                if when == "running":
                    await until(lambda: model.active == 1)  # the victim's batch is in the model
                with pytest.raises(TimeoutError):
                    await cancelled
            for t, result in zip(ts, await asyncio.gather(*others)):
                assert_own_rows(t, result)
            assert batcher.queue_length == 0
            again = tasks_of([8])  # the engine kept working
            assert_own_rows(again[0], await batcher.run(*again[0]))

    run(main())


# --- counters, fairness, threads -----------------------------------------------------------------------------------

def test_batch_sizes_counts_executed_sizes_with_padding_and_queue_length_counts_waiting_tasks() -> None:
    model = Model()
    ts = tasks_of([1, 2, 3, 4])  # [1, 2, 3] -> 8, [4] -> 4

    async def main() -> None:
        with engine(model, max_batch_size=8, allowed_batch_sizes=(2, 4, 8)) as batcher:
            assert batcher.queue_length == 0
            async with busy(batcher, model):  # its blocker: a batch of 8
                before = batcher.queue_length  # (whether the blocker's running task counts is another test's)
                futures = start(batcher, ts)
                await settle()
                assert batcher.queue_length == before + len(ts)
                with pytest.raises(ServingError):
                    await batcher.run(*task(9))  # refused tasks are not counted
                assert batcher.queue_length == before + len(ts)
            await asyncio.gather(*futures)
            assert batcher.queue_length == 0
            assert batcher.batch_sizes == {8: 2, 4: 1}
            await batcher.run(*task(1))
            assert batcher.batch_sizes == {8: 2, 4: 1, 2: 1}

    run(main())


def test_queue_length_does_not_count_tasks_whose_batch_is_running() -> None:
    model = Model()

    async def main() -> None:
        with engine(model, max_batch_size=4) as batcher:
            async with busy(batcher, model):
                assert batcher.queue_length == 0  # the blocker is in the model, not in a queue
                futures = start(batcher, tasks_of([1, 1]))
                await settle()
                assert batcher.queue_length == 2
            await asyncio.gather(*futures)

    run(main())


def test_two_queues_on_one_thread_are_served_round_robin() -> None:
    model = Model()

    async def main() -> None:
        with ThreadPoolExecutor(4) as pool:
            scheduler = BatchScheduler(1, pool)
            a = Batcher(model, BatchingOptions(max_batch_size=1, max_enqueued_batches=100), scheduler)
            b = Batcher(model, BatchingOptions(max_batch_size=1, max_enqueued_batches=100), scheduler)
            async with busy(a, model):  # a's five batches are all queued before b's first
                futures = start(a, [task(1, signature="a", offset=i) for i in range(5)])
                futures += start(b, [task(1, signature="b", offset=i) for i in range(3)])
                await settle()
            await asyncio.gather(*futures)

    run(main())
    order = "".join(c.signature for c in model.calls)
    assert order in ("abababaa", "bababaaa"), order  # alternating while both have work


def test_run_blocking_from_another_thread() -> None:
    model = Model()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            options = BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=1)
            unbound = Batcher(model, options, BatchScheduler(1, pool))
            with pytest.raises(RuntimeError, match="needs the event loop"):
                unbound.run_blocking(*task(1))
            batcher = Batcher(model, options, BatchScheduler(1, pool), loop)
            ts = tasks_of([1, 2, 3, 1, 1])
            with ThreadPoolExecutor(len(ts)) as callers:
                results = list(callers.map(lambda t: batcher.run_blocking(*t), ts))
            for t, result in zip(ts, results):
                assert_own_rows(t, result)
            assert sum(size * n for size, n in batcher.batch_sizes.items()) == 8
            with pytest.raises(ServingError) as info:
                batcher.run_blocking(*task(9))
            assert info.value.code == Code.INVALID_ARGUMENT
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_batch_answers_all_its_callers_in_one_loop_step() -> None:
    """Batcher.run hands back a plain future, and a batch's answers land together: once one caller has its rows,
    every caller of that batch has them (no task or callback per caller in between)."""
    model = Model()
    ts = tasks_of([1, 2, 1])

    async def main() -> None:
        with engine(model, max_batch_size=4, batch_timeout_micros=5_000_000) as batcher:
            futures = [batcher.run(*t) for t in ts]  # called, not awaited: nothing runs until the loop turns
            assert all(isinstance(f, asyncio.Future) and not f.done() for f in futures)
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            assert all(f.done() for f in futures)
            for t, f in zip(ts, futures):
                assert_own_rows(t, f.result())
            assert [c.size for c in model.calls] == [4]

    run(main())


def test_a_shut_down_executor_fails_the_batch_and_gives_its_thread_back() -> None:
    model = Model()

    async def main() -> None:
        pool = ThreadPoolExecutor(2)
        pool.shutdown()
        batcher = Batcher(model, BatchingOptions(max_batch_size=2, batch_timeout_micros=0), BatchScheduler(1, pool))
        for _ in range(2):  # the second finds its batch thread free again
            with pytest.raises(ServingError) as info:
                await batcher.run(*task(2))
            assert info.value.code == Code.INTERNAL and "shutdown" in info.value.message
        assert model.calls == []

    run(main())


# --- a fast model's small batches on the event loop ----------------------------------------------------------------

def record_where(model: Model) -> list[str]:
    """Where each of `model`'s calls from now on runs: "loop" (this thread, the event loop's) or "lane"."""
    where: list[str] = []
    respond, loop_thread = model.respond, threading.get_ident()

    def recording(inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        where.append("loop" if threading.get_ident() == loop_thread else "lane")
        return respond(inputs, output_keys)

    model.respond = recording
    return where


def paced_batcher(model: Model, pool: ThreadPoolExecutor, **options: Any) -> Batcher:
    """A Batcher with a Pace, as a runtime that may run on the loop gets; one batch thread, one-task batches that
    run at once, unless the test says."""
    from pyserving.core.handoff import Pace

    opts = BatchingOptions(**{"max_batch_size": 1, "batch_timeout_micros": 0, "num_batch_threads": 1,
                              "max_enqueued_batches": 100_000, **options})
    return Batcher(model, opts, BatchScheduler(opts.num_batch_threads, pool), pace=Pace())


def paced_engine_run(model: Model, batches: Sequence[Task], **options: Any) -> tuple[list[str], list[Any]]:
    """`batches` through a paced Batcher, one after the other: where each model call ran and every task's result
    (or its ServingError)."""
    where = record_where(model)

    async def main() -> list[Any]:
        with ThreadPoolExecutor(4) as pool:
            batcher = paced_batcher(model, pool, **options)
            results = []
            for t in batches:
                try:
                    results.append(await batcher.run(*t))
                except ServingError as exc:
                    results.append(exc)
            return results

    return where, run(main())


def test_a_fast_models_small_batches_run_on_the_loop_after_one_window() -> None:
    from pyserving.core.handoff import PACE_WINDOW

    ts = tasks_of([1] * (PACE_WINDOW + 6))
    where, results = paced_engine_run(Model(), ts)
    assert where == ["lane"] * PACE_WINDOW + ["loop"] * 6
    for t, result in zip(ts, results):
        assert_own_rows(t, result)


@pytest.mark.parametrize(
    ("make", "options"),
    [
        # 4 rows of 5,000 float32: 80 kB, over what runs inline
        pytest.param(lambda i: task(4, offset=i, width=5_000), dict(max_batch_size=4), id="big-batch"),
        # padded up to 4 allowed rows of 4,500 float32 (72 kB) although the task has one
        pytest.param(lambda i: task(1, offset=i, width=4_500), dict(max_batch_size=4, allowed_batch_sizes=(4,)),
                     id="padded-big"),
        pytest.param(lambda i: (SIG, {"x": np.array([[f"s{i}"]], object)}, ("y",)), {}, id="strings"),
        pytest.param(lambda i: task(1, offset=i), dict(pad_variable_length_inputs=True), id="padded-shapes"),
    ],
)
def test_big_string_and_padded_batches_stay_in_lanes(make: Callable[[int], Task], options: dict[str, Any]) -> None:
    from pyserving.core.handoff import PACE_WINDOW

    def respond(inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}

    where, results = paced_engine_run(Model(respond=respond), [make(i) for i in range(PACE_WINDOW * 2 + 2)],
                                      **options)
    assert set(where) == {"lane"}
    assert not any(isinstance(r, BaseException) for r in results), results


def test_an_inline_batch_that_fails_fails_only_its_callers() -> None:
    from pyserving.core.handoff import PACE_WINDOW

    ts = tasks_of([1] * (PACE_WINDOW + 2)) + [(SIG, {"x": np.array([[MARKER]], np.float32)}, ("y",))]
    ts += tasks_of([1] * 3)
    where, results = paced_engine_run(Model(respond=failing(raise_(RuntimeError("boom")))), ts)
    assert where[PACE_WINDOW:] == ["loop"] * 6
    failed = results[PACE_WINDOW + 2]
    assert isinstance(failed, ServingError) and failed.code == Code.INTERNAL and failed.message == "RuntimeError: boom"
    for t, result in zip(ts[:PACE_WINDOW + 2] + ts[PACE_WINDOW + 3:], results[:PACE_WINDOW + 2] + results[PACE_WINDOW + 3:]):
        assert_own_rows(t, result)


def test_thousands_of_queued_batches_run_inline_in_one_pump_without_recursion() -> None:
    """A batch run on the loop finishes inside the pump that started it; were its finish to pump again, a queue of
    thousands of batches released at once would recurse thousands deep."""
    from pyserving.core.handoff import PACE_WINDOW

    model = Model()
    where = record_where(model)

    async def main() -> None:
        with ThreadPoolExecutor(4) as pool:
            batcher = paced_batcher(model, pool)
            for t in tasks_of([1] * PACE_WINDOW):  # learn that it is fast
                await batcher.run(*t)
            model.gate.clear()  # the only batch thread held, in a lane, by a batch too big to run inline
            blocker = batcher.run(BLOCKER, {"x": np.zeros((1, 20_000), np.float32)}, ("y",))
            await until(lambda: model.active == 1)
            ts = tasks_of([1] * 3000)
            futures = start(batcher, ts)
            await settle()
            assert batcher.queue_length == len(ts)
            model.gate.set()
            await blocker
            for t, result in zip(ts, await asyncio.gather(*futures)):
                assert_own_rows(t, result)

    run(main())
    assert where == ["lane"] * (PACE_WINDOW + 1) + ["loop"] * 3000
