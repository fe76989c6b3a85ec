"""Server-side batching: concurrent requests for the same model version, signature and output set run as one call.

TF Serving's semantics (BatchingParameters): a task larger than `max_batch_size` is refused (unless
`enable_large_batch_splitting`, which spreads it over batches of `max_execution_batch_size`); a batch runs when it
is full, or when its oldest task has waited `batch_timeout_micros` and a batch thread is free; a queue holding
`max_enqueued_batches` batches refuses new work with UNAVAILABLE at once, never blocking the caller;
`allowed_batch_sizes` pads a batch up to the next allowed size and the padding is trimmed from the outputs.

Shape: one BatchScheduler per batch-thread pool (TF Serving's shared scheduler: `num_batch_threads` batches run
at once, queues served round-robin); one Batcher per loaded version, attached at load and closed at unload; inside
it one BatchQueue per (signature, inputs, outputs, dtypes and non-batch shapes). Queues and the scheduler live on
the event loop and are touched only from its thread; concatenation, the model call and splitting run in a worker
thread, or on the loop for a small batch of a model measured fast (core/handoff.py Pace).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from pyserving.core.handoff import ModelCalls, Pace
from pyserving.core.ids import ServableId
from pyserving.errors import Code, ServingError
from pyserving.options import BatchingOptions, ModelConfig
from pyserving.runtimes.base import Servable

log = logging.getLogger("pyserving.batching")

RunFn = Callable[[str, Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]
BatchObserver = Callable[[int, list[int], list[float]], None]
"""(executed batch size with padding, its tasks' sizes, their seconds in the queue), from a worker thread."""
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


@dataclass(slots=True)
class _Task:
    inputs: Mapping[str, np.ndarray]
    size: int
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.monotonic)
    queued_pieces: int = 0  # pieces still waiting in a queue (not yet handed to a batch thread)
    parts: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    pending: int = 0


@dataclass(slots=True)
class _Piece:
    task: _Task
    index: int  # which part of its task (splitting)
    start: int
    stop: int


@dataclass(slots=True)
class _Batch:
    queue: BatchQueue
    created: float
    pieces: list[_Piece] = field(default_factory=list)
    size: int = 0
    full: bool = False


class BatchQueue:
    """The tasks of one signature/input/output set of one version, grouped into batches in arrival order."""

    def __init__(
        self, batcher: Batcher, signature: str, output_keys: tuple[str, ...], row_bytes: int | None = None,
    ) -> None:
        self._batcher = batcher
        self.signature = signature
        self.output_keys = output_keys
        self.row_bytes = row_bytes
        """Input bytes per row, the same for every task here (None: strings, or padded shapes)."""
        self.batches: collections.deque[_Batch] = collections.deque()
        self.queued_tasks = 0

    @property
    def options(self) -> BatchingOptions:
        return self._batcher.options

    def enqueue(self, task: _Task) -> None:
        opts = self.options
        limit = self._batcher.execution_limit
        pieces = [(0, task.size)]
        if task.size > limit or (self.batches and not self.batches[-1].full and self.batches[-1].size + task.size > limit):
            if opts.enable_large_batch_splitting:
                room = limit - self.batches[-1].size if self.batches and not self.batches[-1].full else 0
                cuts = [0, *range(room, task.size, limit)] if room else list(range(0, task.size, limit))
                pieces = [(a, min(b, task.size)) for a, b in itertools.pairwise([*cuts, task.size]) if b > a]
        new_batches = self._new_batches_needed(pieces, limit)
        if len(self.batches) + new_batches > opts.max_enqueued_batches:
            raise ServingError(Code.UNAVAILABLE, QUEUE_FULL)
        task.parts = [None] * len(pieces)
        task.pending = task.queued_pieces = len(pieces)
        now = time.monotonic()
        for index, (start, stop) in enumerate(pieces):
            n = stop - start
            batch = self.batches[-1] if self.batches else None
            if batch is None or batch.full or batch.size + n > limit:
                if batch is not None:
                    batch.full = True
                batch = _Batch(self, now)
                self.batches.append(batch)
            batch.pieces.append(_Piece(task, index, start, stop))
            batch.size += n
            if batch.size >= limit:
                batch.full = True
        self.queued_tasks += 1

    def _new_batches_needed(self, pieces: list[tuple[int, int]], limit: int) -> int:
        size = self.batches[-1].size if self.batches and not self.batches[-1].full else None
        count = 0
        for start, stop in pieces:
            n = stop - start
            if size is None or size + n > limit:
                count += 1
                size = 0
            size += n
        return count

    def ready(self, now: float, timeout_s: float) -> _Batch | None:
        """The oldest batch if it may run now: full, or its oldest task has waited the timeout."""
        if not self.batches:
            return None
        batch = self.batches[0]
        if batch.full or now >= batch.created + timeout_s:
            self.batches.popleft()
            for piece in batch.pieces:
                piece.task.queued_pieces -= 1
                if piece.task.queued_pieces == 0:
                    self.queued_tasks -= 1
            return batch
        return None

    def deadline(self, timeout_s: float) -> float | None:
        return self.batches[0].created + timeout_s if self.batches else None


class BatchScheduler:
    """Runs the batches of every queue registered with it, `num_batch_threads` at a time, round-robin.

    Event-loop confined: call everything from the loop's thread. It never blocks: a batch that may not run yet
    waits for a timer or a free thread.
    """

    def __init__(self, num_batch_threads: int, executor: Executor) -> None:
        self.num_threads = num_batch_threads or os.cpu_count() or 1
        self._free = self.num_threads
        self._executor = executor
        # Lanes, not run_in_executor: batches queue behind running ones without waking a thread each, and answers
        # come back in bulk. The lane count is bounded by the executor; `_free` bounds batches in flight.
        self._calls = ModelCalls(executor)
        self._queues: list[BatchQueue] = []
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pumping = False
        self._retired = False
        """Whether some queue belongs to a retired batcher (dropped once empty)."""

    def add(self, queue: BatchQueue) -> None:
        if queue not in self._queues:  # a retired batcher's queue comes back when a late request reaches it
            self._queues.append(queue)

    def resize(self, num_batch_threads: int) -> None:
        """A reload changed the pool's size: batches already running finish; new ones start up to the new size."""
        n = num_batch_threads or os.cpu_count() or 1
        self._free += n - self.num_threads
        self.num_threads = n
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not serving yet: the first request pumps
        self.pump()

    def remove(self, queues: Sequence[BatchQueue]) -> None:
        gone = set(map(id, queues))
        self._queues = [q for q in self._queues if id(q) not in gone]

    def pump(self) -> None:
        """Start every batch that may run now; arm a timer for the earliest one that may run later."""
        if self._pumping:  # a batch run inline finished within pump: the loop below goes on
            return
        self._pumping = True
        try:
            self._pump()
        finally:
            self._pumping = False

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        while self._free > 0 and self._queues:
            batch = None
            for step in range(len(self._queues)):
                queue = self._queues[(self._next + step) % len(self._queues)]
                batch = queue.ready(now, queue.options.batch_timeout_micros / 1e6)
                if batch is not None:
                    self._next = (self._next + step + 1) % len(self._queues)
                    break
            if batch is None:
                break
            self._start(batch)
        if self._retired:
            self._queues = [q for q in self._queues if q.batches or not q._batcher.retired]
            self._retired = any(q._batcher.retired for q in self._queues)
        if self._free > 0:
            deadlines = [d for q in self._queues if (d := q.deadline(q.options.batch_timeout_micros / 1e6)) is not None]
            if deadlines:
                at = min(deadlines)
                if self._timer is None or at < self._timer_at:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer_at = at
                    self._timer = loop.call_at(loop.time() + max(at - time.monotonic(), 0.0), self._on_timer)

    def enqueued(self, queue: BatchQueue) -> None:
        """A task joined `queue`: pump only if that can start something or needs an earlier timer. Otherwise
        nothing changed for the scheduler: with no thread free, the next batch to finish pumps; with one free,
        the armed timer already covers the queue's oldest batch (pump keeps one armed for the earliest)."""
        if self._free <= 0:
            return
        head = queue.batches[0] if queue.batches else None
        if head is None:
            return
        if head.full or self._timer is None or head.created + queue.options.batch_timeout_micros / 1e6 < self._timer_at:
            self.pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.pump()

    def _start(self, batch: _Batch) -> None:
        """Hand the batch to a lane: its answer comes back with other answers in one loop callback, which
        completes every caller's future at once (no task, no executor future per batch). A small batch of a
        model measured fast runs here on the loop instead, as unbatched calls do (core/handoff.py Pace): for a
        model of tens of microseconds the hand-over to a lane and back cost more than the batch."""
        self._free -= 1
        queue = batch.queue
        batcher = queue._batcher
        try:
            if batcher.pace is None:
                self._calls.start(_BatchRun(self, batch), batcher.execute, batch)
            else:
                nbytes = None if queue.row_bytes is None else queue.row_bytes * _allowed_size(
                    batch.size, batcher.options.allowed_batch_sizes)
                self._calls.start_paced(_BatchRun(self, batch), batcher.pace, nbytes, batcher.execute, batch)
        except BaseException as exc:  # the executor is shut down (server stopping): the batch's callers hear so
            _BatchRun(self, batch).finish(None, exc, pump=False)


class _BatchRun:
    """Where a running batch's answer lands (the lanes' outbox treats it as a future): it completes the pieces'
    futures and gives the scheduler its batch thread back."""

    __slots__ = ("scheduler", "batch")

    def __init__(self, scheduler: BatchScheduler, batch: _Batch) -> None:
        self.scheduler = scheduler
        self.batch = batch

    def done(self) -> bool:
        return False  # a batch always runs: its thread count is given back only once it has

    def set_result(self, results: list[dict[str, np.ndarray]]) -> None:
        self.finish(results, None)

    def set_exception(self, exc: BaseException) -> None:
        self.finish(None, exc)

    def finish(self, results: list[dict[str, np.ndarray]] | None, exc: BaseException | None, pump: bool = True) -> None:
        scheduler, batch = self.scheduler, self.batch
        try:
            if exc is None:
                for piece, out in zip(batch.pieces, results):  # type: ignore[arg-type]
                    try:
                        _complete(piece, out, None)
                    except Exception as failure:  # e.g. a split task's parts that do not concatenate: its alone
                        _complete(piece, None, ServingError(Code.INTERNAL, f"{type(failure).__name__}: {failure}"))
            else:  # the model failed: every caller in the batch gets the error
                error = exc if isinstance(exc, ServingError) else ServingError(
                    Code.INTERNAL, f"{type(exc).__name__}: {exc}")
                for piece in batch.pieces:
                    _complete(piece, None, error)
        finally:
            scheduler._free += 1
            if pump:
                scheduler.pump()


def _complete(piece: _Piece, out: dict[str, np.ndarray] | None, error: ServingError | None) -> None:
    task = piece.task
    if task.future.done():
        return
    if error is not None:
        task.future.set_exception(error)
        return
    task.parts[piece.index] = out
    task.pending -= 1
    if task.pending == 0:
        parts = task.parts
        if len(parts) == 1:
            task.future.set_result(parts[0])  # type: ignore[arg-type]
        else:
            task.future.set_result({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})  # type: ignore[index]


class Batcher:
    """The batching front of one loaded version: `run` has the servable's signature and answers with the
    caller's own rows. Close it only after every caller has its answer (the manager's leases guarantee that)."""

    def __init__(
        self,
        run: RunFn,
        options: BatchingOptions,
        scheduler: BatchScheduler,
        loop: asyncio.AbstractEventLoop | None = None,
        on_batch: BatchObserver | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.options = options
        self.pace = pace
        """How fast this version's small batches are, for a runtime that may run them on the loop (None: never)."""
        self._run = run
        self._scheduler = scheduler
        self._queues: dict[tuple[object, ...], BatchQueue] = {}
        self.execution_limit = (
            options.max_execution_batch_size or options.max_batch_size
            if options.enable_large_batch_splitting else options.max_batch_size
        )
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """Executed batch sizes (padding included) -> count, for metrics."""
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._on_batch = on_batch
        self.retired = False
        """Replaced by a batcher with new parameters (a config reload): its queues leave once empty."""

    @property
    def queue_length(self) -> int:
        """Tasks waiting in this version's queues (not yet handed to a batch thread)."""
        return sum(q.queued_tasks for q in self._queues.values())

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """On the event loop: queue the task; the future has the caller's rows, or why the task was refused (too
        large, queue full: it is done at once). A plain function, not a coroutine: the caller awaits the future
        itself (and puts its deadline on it) with no task around it."""
        self._loop = loop = asyncio.get_running_loop()
        try:
            return self._enqueue(loop, signature, inputs, output_keys)
        except ServingError as exc:
            refused: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
            refused.set_exception(exc)
            return refused

    def _enqueue(
        self, loop: asyncio.AbstractEventLoop, signature: str, inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str],
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        size = self._task_size(inputs)
        if size > self.options.max_batch_size:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}",
            )
        outputs = tuple(output_keys)
        key: tuple[object, ...] = (signature, outputs, *(
            (k, v.dtype.str, v.shape[1:] if not self.options.pad_variable_length_inputs else len(v.shape))
            for k, v in sorted(inputs.items())
        ))
        queue = self._queues.get(key)
        if queue is None:
            row_bytes = None if self.options.pad_variable_length_inputs or any(
                v.dtype.hasobject for v in inputs.values()) else sum(
                v.dtype.itemsize * math.prod(v.shape[1:]) for v in inputs.values())
            queue = self._queues[key] = BatchQueue(self, signature, outputs, row_bytes)
            self._scheduler.add(queue)
            if self.retired:  # retired before it ever ran: this late request's queue must leave once empty too
                self._scheduler._retired = True
        elif self.retired:
            self._scheduler.add(queue)
            self._scheduler._retired = True  # so it leaves again once empty
        task = _Task(inputs, size, loop.create_future())
        queue.enqueue(task)
        self._scheduler.enqueued(queue)
        return task.future

    def run_blocking(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """`run` from a thread other than the loop's (warm-up on the control thread)."""
        if self._loop is None:
            raise RuntimeError("a Batcher used from another thread needs the event loop it runs on")
        async def run() -> dict[str, np.ndarray]:
            return await self.run(signature, inputs, output_keys)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    @staticmethod
    def _task_size(inputs: Mapping[str, np.ndarray]) -> int:
        if not inputs:
            raise ServingError(Code.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor")
        sizes = set()
        for name, value in inputs.items():
            if value.ndim == 0:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f"Batching Run() input tensors must have at least one dimension; {name} is a scalar. "
                    "Send it with a batch dimension, or serve this model without batching.",
                )
            sizes.add(value.shape[0])
        if len(sizes) != 1:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                "Batching Run() input tensors must have equal 0th-dimension size "
                f"(got {', '.join(f'{k}: {v.shape[0]}' for k, v in sorted(inputs.items()))})",
            )
        return sizes.pop()

    def execute(self, batch: _Batch) -> list[dict[str, np.ndarray]]:
        """Worker thread (or the loop, paced): concatenate the pieces, pad, run once, split the outputs back
        (padding trimmed)."""
        queue = batch.queue
        started = time.monotonic()
        first = batch.pieces[0].task.inputs
        inputs = {}
        for name in first:
            parts = [p.task.inputs[name][p.start:p.stop] for p in batch.pieces]
            if self.options.pad_variable_length_inputs:
                parts = _pad_to_common_shape(parts)
            inputs[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        size = batch.size
        padded = _allowed_size(size, self.options.allowed_batch_sizes)
        if padded > size:
            inputs = {k: np.concatenate([v, np.repeat(v[:1], padded - size, axis=0)]) for k, v in inputs.items()}
        outputs = self._run(queue.signature, inputs, queue.output_keys)
        self.batch_sizes[padded] += 1
        if self._on_batch is not None:
            tasks = {id(p.task): p.task for p in batch.pieces}.values()
            self._on_batch(padded, [t.size for t in tasks], [started - t.enqueued for t in tasks])
        for name, value in outputs.items():
            # The model, not the caller, is at fault: TF Serving's batching_session says FAILED_PRECONDITION.
            if value.ndim == 0:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Batched output tensor has 0 dimensions ({name}): a model served with batching must return "
                    "one row per input row.",
                )
            if value.shape[0] != padded:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
                    f"input tensors ({name} has {value.shape[0]} rows for a batch of {padded}): a model served with "
                    "batching must return one row per input row.",
                )
        results, offset = [], 0
        for piece in batch.pieces:
            n = piece.stop - piece.start
            results.append({k: v[offset:offset + n] for k, v in outputs.items()})
            offset += n
        return results

    def retire(self) -> None:
        """Stop taking part once empty (a reload gave the version a new batcher). Any thread may call it:
        requests already queued here, or that leased this batcher before the swap, still run in it."""
        if self._loop is None:
            # never ran, so no loop holds its state yet: a request that still reaches it joins the scheduler
            # already retired (see run)
            self.retired = True
            return
        self._loop.call_soon_threadsafe(self._retire)

    def _retire(self) -> None:
        self.retired = True
        self._scheduler._retired = True
        self._scheduler.pump()

    def close(self) -> None:
        """Detach from the scheduler. Any thread may call it; the queues are empty by then (no leases left)."""
        queues = list(self._queues.values())
        if self._loop is None or not queues:
            return
        self._loop.call_soon_threadsafe(self._scheduler.remove, queues)


def _allowed_size(size: int, allowed: Sequence[int]) -> int:
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def _pad_to_common_shape(parts: list[np.ndarray]) -> list[np.ndarray]:
    """pad_variable_length_inputs: pad every non-batch dimension to the batch's largest, filling with each tensor's
    first element (TF Serving's rule)."""
    target = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
    out = []
    for p in parts:
        if p.shape[1:] == target:
            out.append(p)
            continue
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(p.shape[1:], target)]
        out.append(np.pad(p, widths, constant_values=p.flat[0] if p.size else 0))
    return out


BatchingFor = Callable[[ModelConfig, str], BatchingOptions | None]
"""(model, version directory) -> the version's batching parameters, or None to serve it unbatched."""
BatchMetrics = Callable[[str, int, str, int, list[int], list[float]], None]
"""(model, version, pool name, batch size, task sizes, seconds each task queued), after each batch."""


class BatcherFactory:
    """Gives each loaded version its Batcher, over the batch-thread pools it shares with other versions.

    Pools are TF Serving's shared batch schedulers: one per `thread_pool_name`, sized by the global batching
    parameters (or by the model's own block, for a model with one). Called from the control thread at load."""

    def __init__(
        self, batching_for: BatchingFor, global_options: BatchingOptions | None, executor: Executor,
        loop: Callable[[], asyncio.AbstractEventLoop | None], on_batch: BatchMetrics | None = None,
    ) -> None:
        self._batching_for = batching_for
        self._global = global_options
        self._executor = executor
        self._loop = loop
        self._on_batch = on_batch
        self._schedulers: dict[str, BatchScheduler] = {}

    def __call__(self, model: ModelConfig, version: ServableId, version_dir: str, servable: Servable) -> Batcher | None:
        batching = self._batching_for(model, version_dir)
        if batching is None:
            return None
        own = model.batching is not None
        pool = batching if own or self._global is None else self._global
        name = pool.thread_pool_name
        scheduler = self._schedulers.get(name)
        if scheduler is None:
            scheduler = self._schedulers[name] = BatchScheduler(pool.num_batch_threads, self._executor)
        elif own and (pool.num_batch_threads or os.cpu_count() or 1) != scheduler.num_threads:
            # A reload changed the model's own num_batch_threads: the pool it names takes the new size.
            loop = self._loop()
            if loop is not None and loop.is_running():
                loop.call_soon_threadsafe(scheduler.resize, pool.num_batch_threads)
            else:
                scheduler.resize(pool.num_batch_threads)
        log.info("Batching %s from %s: %s", model.name, version_dir, batching)
        on_batch = self._on_batch

        def observe(size: int, task_sizes: list[int], queued_s: list[float]) -> None:
            if on_batch is not None:
                on_batch(model.name, version.version, name, size, task_sizes, queued_s)

        pace = Pace() if getattr(servable, "inline_when_fast", False) else None
        return Batcher(servable.run, batching, scheduler, self._loop(), observe, pace)
