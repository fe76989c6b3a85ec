"""uvicorn's httptools protocol with the limits it lacks: a slow or greedy client holds a bounded share of us.

uvicorn times out only idle kept-alive connections. A client that opens a connection and trickles its head, or
announces a body and never sends it, or sends 100,000 headers, is held (and buffered) for as long as it likes. The
parser callbacks are the one place that sees every byte before the ASGI app does, so the limits live here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pyserving.options import HttpLimits

log = logging.getLogger("pyserving.rest")
_WARN_EVERY_S = 10.0
_COALESCE_MAX_BYTES = 64 * 1024
# asyncio reads a socket 256 KiB at a time: a 3 MB body took 12 reads, each a trip through httptools, uvicorn's
# flow control (pause, resume: two epoll_ctl) and the app's receive loop. While a big body streams in, reads may
# take up to this much of what the kernel holds (CNN REST c32, 5 runs interleaved: 11.0 -> 10.5 ms of front-end
# CPU a request). A read's buffer is shrunk to what came, and small requests never see this size.
_BIG_BODY_READ_BYTES = 4 << 20
_BIG_BODY_CHUNK_BYTES = 128 << 10


class _CoalescingTransport:
    """The connection's transport, but the writes of one loop turn go out in one `send`.

    uvicorn writes a response's head and its body separately: two syscalls, and with TCP_NODELAY two segments that
    each wake the client, for every small answer. Held until the end of the loop turn, they leave together. A big
    write goes out at once (after what is held) rather than being copied into one buffer."""

    __slots__ = ("_transport", "_loop", "_held", "_held_bytes")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if len(data) + self._held_bytes > _COALESCE_MAX_BYTES or self._transport.is_closing():
            self.flush()
            self._transport.write(data)
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._held_bytes += len(data)

    def flush(self) -> None:
        if self._held:
            held, self._held, self._held_bytes = self._held, [], 0
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, set_protocol, ...
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Refuses, in TF Serving's error shape, what goes over `limits`: 503 past the connection cap, 431 for a head
    too big or with too many headers, 408 for a head or body that stalls; then closes the connection."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    _last_warning: ClassVar[dict[str, float]] = {}
    draining: ClassVar[bool] = False
    """Set on the listener's class when the server drains: each response then says `Connection: close`, so a
    client (or proxy) stops reusing the connection on an answer rather than racing the listener's close with
    its next request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None
        self._refused = False
        self._awaiting_head = True
        self._head_bytes = 0
        self._header_count = 0

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
        """A protocol class for uvicorn's `http=` setting (uvicorn instantiates it per connection)."""
        return type("LimitedHttpToolsProtocol", (cls,), {"limits": limits, "_last_warning": {}, "draining": False})

    # --- connection ---------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._socket_transport = transport
        # (flow control keeps the real transport: it pauses and resumes reading, which is not held)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        if len(self.connections) > self.limits.max_connections:
            self._warn("connections", "Refusing a connection: %d are open (--max_connections=%d).",
                       len(self.connections) - 1, self.limits.max_connections)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE,
                         f"The server already holds its limit of {self.limits.max_connections} connections "
                         "(--max_connections). Retry later, reuse connections, or raise the limit.")
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()  # not left holding this protocol until it would fire
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._head_bytes += len(data)
        super().data_received(data)
        # A head is counted as it arrives, before httptools has buffered a whole (maybe endless) header line.
        if self._awaiting_head and not self._refused and self._head_bytes > self.limits.max_header_bytes:
            self._too_large_head(f"over {self.limits.max_header_bytes} bytes", "--max_header_bytes")

    # --- parser callbacks ---------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            self._too_large_head(f"more than {self.limits.max_header_count} headers", "--max_header_count")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._awaiting_head = False
        self._head_bytes = 0
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        if len(body) >= _BIG_BODY_CHUNK_BYTES and "max_size" not in vars(self._socket_transport):
            self._socket_transport.max_size = _BIG_BODY_READ_BYTES  # type: ignore[attr-defined]
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._awaiting_head = True
        self._head_bytes = 0
        vars(self._socket_transport).pop("max_size", None)  # back to asyncio's own reads
        super().on_message_complete()

    # --- limits -------------------------------------------------------------------------------------------------

    def _arm(self, seconds: float, handler: Callable[[], None]) -> None:
        """Call `handler` once `seconds` pass without another `_arm` or `_disarm`.

        Armed three times per request and at every body chunk, so one timer stays scheduled and is only moved
        when a deadline comes earlier than it: a new TimerHandle and a cancelled one each time cost ~5% of a
        small request's front-end CPU."""
        if seconds <= 0:
            self._disarm()
            return
        self._deadline = self.loop.time() + seconds
        self._on_deadline = handler
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._deadline_reached)

    def _disarm(self) -> None:
        self._on_deadline = None  # the timer, if any, fires to no effect (or is moved by the next `_arm`)

    def _deadline_reached(self) -> None:
        self._timer = None
        handler = self._on_deadline
        if handler is None:
            return
        if self.loop.time() < self._deadline:  # armed again since: wait for the new deadline
            self._timer = self.loop.call_at(self._deadline, self._deadline_reached)
            return
        self._on_deadline = None
        handler()

    def _head_timed_out(self) -> None:
        if self._head_bytes == 0 and self.cycle is None:
            self.transport.close()  # a connection that never said anything: nobody to answer
            return
        self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                     f"The request head did not arrive within {self.limits.header_timeout_s:g} s "
                     "(--http_header_timeout_s).")

    def _body_timed_out(self) -> None:
        if self.flow.read_paused:
            # The app, not the client, is behind: reading is paused until it takes what is buffered.
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
            return
        log.debug("Closing a connection whose request body stalled for %g s", self.limits.body_timeout_s)
        self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                     f"The request body stalled for {self.limits.body_timeout_s:g} s (--http_body_timeout_s). "
                     "Send the whole body the Content-Length announces.")

    def _too_large_head(self, what: str, flag: str) -> None:
        self._warn("head", "Refusing a request head with %s (%s).", what, flag)
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                     f"The request head has {what} ({flag}). Send fewer or smaller headers, or raise the limit.")

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer `status` unless a response is already under way, then close."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        # (on a kept-alive connection `cycle` is still the previous request's until the next head is whole)
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            body = orjson.dumps({"error": message})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (status.value, status.phrase.encode(), len(body)) + body
            )
        self.transport.close()

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """At most one line per kind every 10 s: a flood must not turn into a flood of log lines."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last_warning[kind] = now
            log.warning(message, *args)
