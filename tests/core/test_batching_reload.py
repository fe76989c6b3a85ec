"""A reload that changes batching parameters (what `pyserving batching tune` does): the old batcher is retired
(its queued requests still run, then it leaves the scheduler) and a pool's thread count changes in place."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pyserving.core.batching import Batcher, BatchScheduler
from pyserving.options import BatchingOptions


class GatedModel:
    """y = 2x; each call waits for the gate, and records its batch size and how many calls ran at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.sizes: list[int] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, signature: str, inputs: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.sizes.append(len(inputs["x"]))
        self.gate.wait(10)
        with self._lock:
            self.running -= 1
        return {"y": inputs["x"] * 2}


def run(coro_fn) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(coro_fn(loop), 20))
    finally:
        loop.close()


def test_retired_batcher_runs_what_it_holds_then_leaves_the_scheduler() -> None:
    model = GatedModel()

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        with ThreadPoolExecutor(2) as pool:
            scheduler = BatchScheduler(1, pool)
            old = Batcher(model, BatchingOptions(max_batch_size=4, batch_timeout_micros=50_000), scheduler, loop)
            new = Batcher(model, BatchingOptions(max_batch_size=2, batch_timeout_micros=0), scheduler, loop)
            queued = [asyncio.ensure_future(old.run("s", {"x": np.full((1, 1), i, np.float32)}, ["y"]))
                      for i in range(3)]
            await asyncio.sleep(0)
            old.retire()  # the reload swapped it out while three requests wait for its 50 ms timeout
            model.gate.set()
            answers = await asyncio.gather(*queued)
            assert [a["y"].tolist() for a in answers] == [[[0.0]], [[2.0]], [[4.0]]]
            assert model.sizes == [3]  # still batched by the old parameters
            late = await old.run("s", {"x": np.ones((1, 1), np.float32)}, ["y"])  # leased before the swap
            assert late["y"].tolist() == [[2.0]]
            fresh = await new.run("s", {"x": np.ones((2, 1), np.float32)}, ["y"])
            assert fresh["y"].tolist() == [[2.0], [2.0]]
            scheduler.pump()
            assert all(not q._batcher.retired for q in scheduler._queues)  # the old queue left once empty

    run(main)


def test_batcher_retired_before_it_ever_ran_still_leaves_the_scheduler() -> None:
    model = GatedModel()
    model.gate.set()

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        with ThreadPoolExecutor(2) as pool:
            scheduler = BatchScheduler(1, pool)
            old = Batcher(model, BatchingOptions(max_batch_size=4), scheduler, None)  # made before any loop ran
            old.retire()  # a reload swapped it out before its first request
            late = await old.run("s", {"x": np.ones((1, 1), np.float32)}, ["y"])  # leased before the swap
            assert late["y"].tolist() == [[2.0]]
            scheduler.pump()
            assert scheduler._queues == []  # its queue came and went: nothing keeps the old servable alive

    run(main)


def test_resize_lets_more_batches_run_at_once() -> None:
    model = GatedModel()

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        with ThreadPoolExecutor(4) as pool:
            scheduler = BatchScheduler(1, pool)
            batcher = Batcher(model, BatchingOptions(max_batch_size=1), scheduler, loop)
            calls = [asyncio.ensure_future(batcher.run("s", {"x": np.ones((1, 1), np.float32)}, ["y"]))
                     for _ in range(3)]
            await asyncio.sleep(0.2)
            assert model.running == 1  # one batch thread: the other two batches wait
            scheduler.resize(3)
            await asyncio.sleep(0.2)
            assert model.running == 3
            model.gate.set()
            await asyncio.gather(*calls)
            assert model.most_at_once == 3 and scheduler.num_threads == 3

    run(main)
