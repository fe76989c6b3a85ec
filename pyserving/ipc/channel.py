"""The channel between a front-end process and the model process: frames over a socketpair, tensors in shared
memory.

A frame is `u32 length, u32 header length, header (orjson), payload`. The header names the operation and, for
each tensor, where its bytes are: a region of the sender's arena (large tensors: one copy in, none out), or a
slice of the payload (small tensors, strings). Arrays are never pickled. Each frame also carries the offsets the
sender is done with in the peer's arena ("f"), so regions come back without frames of their own.

Requests carry an "id"; the answer has the same id. Either side may send one-way frames (no id): state pushes and
request observations.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError, SignatureNotFoundError
from pyserving.ipc.arena import Arena

log = logging.getLogger("pyserving.ipc")

INLINE_BYTES = 16 << 10
"""Tensors smaller than this ride in the frame: cheaper than an allocation and a free for a few bytes."""
MAX_FRAME_BYTES = 1 << 31
"""A frame larger than this is a broken peer, not a request (tensors that big go through the arena)."""
_PREFIX = struct.Struct("<II")
READ_BYTES = 256 << 10
"""One read takes every frame that has arrived, up to this much: under load a read holds many frames, and each
frame costs no read (no coroutine step, no buffer copy) of its own."""
_STRING = int(DType.DT_STRING)
_NUMPY_OF: dict[int, np.dtype] = {}
"""Numpy dtype by DType number: a header's dtypes decode without building an enum member per tensor."""
_CODE_OF: dict[np.dtype, int] = {}
"""DType number by numpy dtype, filled as dtypes are first seen."""

Payload = list[bytes | memoryview]
Handler = Callable[[dict[str, Any], memoryview], Awaitable[tuple[dict[str, Any], Payload] | None]]

UNAVAILABLE_MESSAGE = ("The model process is not reachable (it exited or is restarting). Retry the request "
                       "shortly.")


def unavailable() -> ServingError:
    return ServingError(Code.UNAVAILABLE, UNAVAILABLE_MESSAGE)


def error_header(exc: ServingError) -> list[Any]:
    """A ServingError as plain data, keeping what front ends read from it (and a missing signature's name, which
    REST rewords)."""
    return [int(exc.code), exc.message, exc.version, exc.signature,
            exc.signature_name if isinstance(exc, SignatureNotFoundError) else None]


def error_from(data: Sequence[Any]) -> ServingError:
    code, message, version, signature, missing = data
    exc = SignatureNotFoundError(missing) if missing is not None else ServingError(Code(code), message)
    exc.message = message
    exc.version, exc.signature = version, signature
    return exc


def _encode_strings(array: np.ndarray) -> bytes:
    items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in array.reshape(-1)]
    lengths = np.fromiter((len(x) for x in items), dtype=np.uint64, count=len(items))
    return lengths.tobytes() + b"".join(items)


def _numpy_of(code: int) -> np.dtype:
    dtype = _NUMPY_OF.get(code)
    if dtype is None:  # first sight (an unknown number raises as DType() does)
        dtype = _NUMPY_OF[code] = DType(code).numpy
    return dtype


def _decode_strings(data: memoryview, shape: Sequence[int]) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    lengths = np.frombuffer(data, dtype=np.uint64, count=n)
    out = np.empty(n, dtype=object)
    pos = n * 8
    for i, length in enumerate(lengths.tolist()):
        out[i] = bytes(data[pos:pos + length])
        pos += length
    return out.reshape(shape)


def _arena_regions(value: Any) -> Iterator[int]:
    """The offsets of every arena-placed tensor ([name, dtype, shape, "s", offset, nbytes]) a header describes,
    wherever in it they are."""
    if isinstance(value, list):
        if len(value) == 6 and value[3] == "s" and isinstance(value[4], int):
            yield value[4]
            return
        for item in value:
            yield from _arena_regions(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arena_regions(item)


class Channel:
    """One end of a front end's link to the model process. All methods run on the owning event loop, except the
    array finalizers, which only append to a list."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out_arena: Arena,
                 in_arena: Arena, *, handler: Handler | None = None,
                 on_push: Callable[[dict[str, Any], memoryview], None] | None = None) -> None:
        """`out_arena` is the one this side writes (and allocates in); `in_arena` the peer's. `handler` answers
        the peer's requests; `on_push` hears its one-way frames."""
        self._reader = reader
        self._writer = writer
        self._out = out_arena
        self._in = in_arena
        self._handler = handler
        self._on_push = on_push
        self._calls: dict[int, asyncio.Future[tuple[dict[str, Any], memoryview]]] = {}
        self._next_id = 0
        self._done_with: list[int] = []  # offsets in the peer's arena we no longer reference (finalizers append)
        self._flush_scheduled = False
        self._out_frames: list[bytes | memoryview] = []  # queued by send, written by flush
        self._write_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[int, asyncio.Task[None]] = {}  # answers being worked on
        self._task_key = 0
        self.closed = False
        self.before_send: Callable[[dict[str, Any]], None] | None = None
        """Adds to each outgoing header what may ride along (request observations: fewer frames, fewer
        wake-ups of the peer)."""

    # --- tensors ----------------------------------------------------------------------------------------------

    def encode_tensors(self, tensors: Mapping[str, np.ndarray], payload: Payload) -> list[list[Any]]:
        """Describe `tensors` for a header, appending inline bytes to `payload` and copying large ones into our
        arena."""
        meta: list[list[Any]] = []
        pos = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in payload)
        for name, value in tensors.items():
            array = value if type(value) is np.ndarray else np.asarray(value)
            code = _CODE_OF.get(array.dtype)
            if code is None:
                code = int(DType.from_numpy(array.dtype))
                if code != _STRING:  # strings: object, S and U arrays all map to DT_STRING, by kind
                    _CODE_OF[array.dtype] = code
            shape = list(array.shape)
            if code == _STRING:
                data = _encode_strings(array)
                payload.append(data)
                meta.append([name, code, shape, "i", pos, len(data)])
                pos += len(data)
                continue
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            nbytes = array.nbytes
            off = self._out.alloc(nbytes) if nbytes >= INLINE_BYTES else None
            if off is None:
                data = array.reshape(-1).view(np.uint8).data  # no copy: the transport copies it once
                payload.append(data)
                meta.append([name, code, shape, "i", pos, nbytes])
                pos += nbytes
            else:
                np.frombuffer(self._out.map, np.uint8, nbytes, off)[:] = array.reshape(-1).view(np.uint8)
                meta.append([name, code, shape, "s", off, nbytes])
        return meta

    def decode_tensors(self, meta: Sequence[Sequence[Any]], payload: memoryview) -> dict[str, np.ndarray]:
        """The arrays a header describes: views of the payload or of the peer's arena, never copies. An arena
        region goes back to the peer once the last array that views it is gone."""
        out: dict[str, np.ndarray] = {}
        for name, code, shape, where, off, nbytes in meta:
            if where == "i":
                data = payload[off:off + nbytes]
                if code == _STRING:
                    out[name] = _decode_strings(data, shape)
                else:
                    out[name] = np.frombuffer(data, _numpy_of(code)).reshape(shape)
                continue
            dtype = _numpy_of(code)
            root = np.frombuffer(self._in.map, dtype, nbytes // dtype.itemsize, off)
            weakref.finalize(root, self._release, off)
            out[name] = root.reshape(shape)
        return out

    def _release(self, off: int) -> None:
        # Any thread (the GC runs where the last reference died): list.append is atomic; the flush runs on the loop.
        self._done_with.append(off)
        if not self.closed:
            try:
                self._loop.call_soon_threadsafe(self._schedule_flush)
            except RuntimeError:  # the loop is closed: the process is going away
                pass

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._done_with:
            self._flush_scheduled = True
            self._loop.call_soon(self._send_frees)

    def _send_frees(self) -> None:
        self._flush_scheduled = False
        if self._done_with and not self.closed:
            self.send({}, [])

    # --- frames -----------------------------------------------------------------------------------------------

    def send(self, header: dict[str, Any], payload: Payload) -> None:
        """Queue one frame (never waits). Frames queued in one event-loop turn go out in one write at the start
        of the next: under load that is one system call (and one wake-up of the peer) for many frames. A dead
        peer is noticed by the reader."""
        if self.closed:
            raise unavailable()
        if self._done_with:
            done, self._done_with = self._done_with, []
            header["f"] = done
        if self.before_send is not None:
            self.before_send(header)
        head = orjson.dumps(header)
        size = len(head)
        for part in payload:
            size += len(part) if isinstance(part, bytes) else part.nbytes
        if size > MAX_FRAME_BYTES:
            # the peer would drop the whole channel (every call on it) for one such frame: refuse this one alone
            raise ServingError(Code.RESOURCE_EXHAUSTED, f"A request or answer of {size} bytes exceeds the "
                               f"{MAX_FRAME_BYTES >> 30} GiB a front-end process exchanges with the model process "
                               "at once: send fewer rows, or serve with --frontend_processes=0")
        out = self._out_frames
        out.append(_PREFIX.pack(size, len(head)))
        out.append(head)
        if payload:
            out.extend(payload)
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued frames now."""
        self._write_scheduled = False
        if self._out_frames and not self.closed:
            frames, self._out_frames = self._out_frames, []
            self._writer.writelines(frames)

    async def call(self, header: dict[str, Any], payload: Payload) -> tuple[dict[str, Any], memoryview]:
        """Send a request and wait for its answer; UNAVAILABLE if the peer goes away first."""
        self._next_id += 1
        header["id"] = call_id = self._next_id
        future: asyncio.Future[tuple[dict[str, Any], memoryview]] = self._loop.create_future()
        self._calls[call_id] = future
        try:
            self.send(header, payload)
            return await future
        finally:
            self._calls.pop(call_id, None)

    async def run(self) -> None:
        """Read frames until the peer closes; then fail every call still waiting."""
        reader = self._reader
        data = b""  # what has arrived and is not handled yet: whole frames, then at most part of one
        try:
            while True:
                chunk = await reader.read(READ_BYTES)
                if not chunk:
                    break
                data = data + chunk if data else chunk
                if len(data) >= _PREFIX.size:
                    size, head_len = _PREFIX.unpack_from(data)
                    missing = _PREFIX.size + size - len(data)
                    if missing > READ_BYTES and size <= MAX_FRAME_BYTES and head_len <= size:
                        # a large frame: take the rest of it in one read rather than in READ_BYTES pieces
                        data += await reader.readexactly(missing)
                pos = self._frames(data)
                if pos < 0:
                    break
                data = data[pos:] if pos < len(data) else b""
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    def _frames(self, data: bytes) -> int:
        """Handle every whole frame in `data`; return where the first incomplete one starts (-1: a broken
        peer). Payloads are views of `data` (no copy), which lives as long as an array decoded from it."""
        view = memoryview(data)
        end = len(data)
        pos = 0
        while end - pos >= _PREFIX.size:
            size, head_len = _PREFIX.unpack_from(data, pos)
            if size > MAX_FRAME_BYTES or head_len > size:
                log.error("Dropping the channel: a frame of %d bytes (header %d)", size, head_len)
                return -1
            start = pos + _PREFIX.size
            stop = start + size
            if stop > end:
                break
            header = orjson.loads(view[start:start + head_len])
            payload = view[start + head_len:stop]
            pos = stop
            done = header.get("f")
            if done:
                for off in done:
                    self._out.free(off)
            if "obs" in header and self._on_push is not None:
                self._on_push({"op": "obs", **header["obs"]}, payload)
            self._dispatch(header, payload)
        return pos

    def _dispatch(self, header: dict[str, Any], payload: memoryview) -> None:
        call_id = header.get("id")
        op = header.get("op")
        if op is None or op == "obs":
            if call_id is not None:  # an answer
                future = self._calls.get(call_id)
                if future is not None and not future.done():
                    future.set_result((header, payload))
                else:
                    # nobody waits for it any more (a cancelled call, a deadline): its tensors in the peer's arena
                    # will never be decoded, so no finalizer would hand their regions back
                    self._done_with.extend(_arena_regions(header))
                    self._schedule_flush()
            return
        if call_id is None:
            if self._on_push is not None:
                self._on_push(header, payload)
            return
        if self._handler is not None:
            # The loop holds tasks weakly: this reference keeps the answer alive. _answer drops it itself (a done
            # callback would cost another loop callback per request).
            self._task_key += 1
            self._tasks[self._task_key] = self._loop.create_task(
                self._answer(self._task_key, call_id, header, payload))

    async def _answer(self, key: int, call_id: int, header: dict[str, Any], payload: memoryview) -> None:
        assert self._handler is not None
        try:
            answer = await self._handler(header, payload)
            reply, out = answer if answer is not None else ({}, [])
        except ServingError as exc:
            reply, out = {"e": error_header(exc)}, []
        except Exception as exc:  # a bug: the caller gets INTERNAL rather than hanging
            log.exception("IPC %s failed", header.get("op"))
            reply, out = {"e": [int(Code.INTERNAL), f"Internal error: {exc!r}", None, "", None]}, []
        finally:
            del self._tasks[key]
        if self.closed:
            return  # the front end went away: nobody waits for this answer; its arena regions die with it
        reply["id"] = call_id
        try:
            self.send(reply, out)
        except ServingError as exc:
            if not self.closed:  # the answer itself could not go (too big): the caller hears why, not nothing
                self.send({"id": call_id, "e": error_header(exc)}, [])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._calls.values():
            if not future.done():
                future.set_exception(unavailable())
        self._calls.clear()
        try:
            if self._out_frames:  # what was sent before closing still goes (close writes buffered data first)
                self._writer.writelines(self._out_frames)
                self._out_frames = []
            self._writer.close()
        except Exception:  # already gone
            pass
