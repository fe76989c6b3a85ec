"""Giving a big request's memory back to the operating system once it is answered.

Two things keep it otherwise. gRPC keeps each call's state (with the request it received) in a reference cycle
that only a full garbage collection frees, and those run rarely in a server whose start-up objects are frozen:
measured, +40 MB RSS per refused 15 MB request, growing without end; with this, flat. And glibc keeps freed memory for reuse; a
process that has freed a big block raises its own mmap and trim thresholds (fast_json does so on purpose: it saves
a page fault per 4 KiB of every decode), so after one 200 MB request the heap stayed at its peak although Python
had freed everything (1.2 GB kept of a 2.2 GB peak). A collection plus `malloc_trim` returns both; they cost
milliseconds, so they run only after big requests, in a thread, once the request is over.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import weakref
from collections.abc import Callable

BIG_REQUEST_BYTES = 4 << 20
"""Requests at least this big (a REST body, a gRPC message) give their memory back when they finish."""
_AFTER_S = 0.2
"""Time for the request's answer to be sent and its call state dropped before collecting."""


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


QUIET_TRIM_BYTES = 1 << 20
"""Requests from this size, under BIG_REQUEST_BYTES too, give their memory back once the server has had none for
QUIET_S. While they keep coming the heap keeps its pages (fast_json's thresholds are there to spare every decode a
page fault per 4 KiB); when they stop, it returns them. Measured: a front end stayed at 167-173 MiB after a CNN
load of 3 MB REST bodies had ended (70 MiB idle), as no request reached BIG_REQUEST_BYTES."""
QUIET_S = 1.0

_malloc_trim = _load_malloc_trim()
_scheduled: set[asyncio.AbstractEventLoop] = set()
_last_big: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()
"""Per event loop, while a release is pending for it: when the last request from QUIET_TRIM_BYTES came (weak: a
loop closed with its timer pending goes with it)."""


def release_free_memory() -> None:
    """Collect garbage cycles and return free heap pages to the OS now (blocking; milliseconds)."""
    gc.collect()  # ~0.3 ms: start-up objects are frozen out of collections
    if _malloc_trim is not None:
        _malloc_trim(0)


def release_free_memory_soon() -> None:
    """From the event loop: release shortly, in a thread; a burst of big requests releases once per burst."""
    loop = asyncio.get_running_loop()
    if loop in _scheduled:
        return
    _scheduled.add(loop)

    def start() -> None:
        _scheduled.discard(loop)
        loop.run_in_executor(None, release_free_memory)

    loop.call_later(_AFTER_S, start)


def release_free_memory_when_quiet() -> None:
    """From the event loop, for a request from QUIET_TRIM_BYTES: release (in a thread) once no such request has come
    for QUIET_S. One timer per loop at a time, moved on at most once per QUIET_S."""
    loop = asyncio.get_running_loop()
    pending = loop in _last_big
    _last_big[loop] = loop.time()
    if not pending:
        loop.call_later(QUIET_S, _when_quiet, loop)


def _when_quiet(loop: asyncio.AbstractEventLoop) -> None:
    wait = _last_big[loop] + QUIET_S - loop.time()
    if wait > 0:
        loop.call_later(wait, _when_quiet, loop)
        return
    del _last_big[loop]
    loop.run_in_executor(None, release_free_memory)
