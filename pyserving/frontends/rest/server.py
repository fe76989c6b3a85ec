"""The REST listener: one uvicorn server owning its socket, serving an ASGI app. The REST API and the separate
metrics port are both served by it, so whatever guards a REST door (TLS, limits) is set in one place."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from pyserving.errors import StartupError
from pyserving.frontends.rest.protocol import LimitedHttpToolsProtocol
from pyserving.ipc.ports import reuse_port_socket
from pyserving.options import HttpLimits

log = logging.getLogger("pyserving.server")  # operators grep these lines by TF Serving's texts


class _UvicornServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the server's composition root: it stops every listener together, in order.
        yield


class _AnswerCutRequests:
    """A request still running when the shutdown grace ends is cancelled by uvicorn, which then answers a bare "500
    Internal Server Error". Answer in TF Serving's shape instead, saying what happened: 503, retry."""

    def __init__(self, app: ASGIApp, listener: RestListener) -> None:
        self._app = app
        self._listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._app(scope, receive, send)
        except asyncio.CancelledError:
            if not self._listener.stopping or scope["type"] != "http":
                raise
            body = orjson.dumps({"error": "The server is shutting down, and this request did not finish within its "
                                          f"shutdown grace period (--shutdown_grace_s={self._listener.grace_s:g}). "
                                          "Retry it: another replica, or this one once restarted, will answer."})
            try:
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
            except (RuntimeError, OSError):  # the answer had begun, or the connection is gone: nothing to say
                pass


class RestListener:
    """Serves `app` on host:port until `stop()`."""

    def __init__(
        self, app: ASGIApp, *, host: str, port: int, what: str, flag: str, grace_s: float | None = None,
        announce: str = "Exporting HTTP at %s:%s", ssl_context: ssl.SSLContext | None = None,
        limits: HttpLimits | None = None, reuse_port: bool = False,
    ) -> None:
        """`what` and `flag` name the listener in errors ("REST", "--rest_api_port"); `announce` is the log line
        (with host and port) once it listens. `reuse_port`: bind with SO_REUSEPORT, so that several front-end
        processes share the port (the kernel spreads connections over them). `grace_s`: how long requests in
        flight may finish once `stop()` is called (None: as long as they take)."""
        self._reuse_port = reuse_port
        self._app = app if grace_s is None else _AnswerCutRequests(app, self)
        self._host = host
        self._requested_port = port
        self._what = what
        self._flag = flag
        self.grace_s = grace_s
        self.stopping = False
        self._announce = announce
        self._ssl = ssl_context
        self._limits = limits or HttpLimits()
        self._protocol = LimitedHttpToolsProtocol.with_limits(self._limits)
        self._server: _UvicornServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        config = uvicorn.Config(
            self._app, host=self._host, port=self._requested_port, log_level="warning", lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=self.grace_s,  # type: ignore[arg-type]  # a float works (asyncio.wait_for)
            # httptools parses HTTP in C (h11, the pure-Python fallback, cost ~15% of a small predict), wrapped
            # with the limits uvicorn lacks; nothing is proxied in front of us unless the user says so, so skip
            # the X-Forwarded-* rewriting.
            http=self._protocol, proxy_headers=False,
            # (0: no limit; uvicorn would read 0 as "close at once")
            timeout_keep_alive=self._limits.keepalive_timeout_s or 10**9,  # type: ignore[arg-type]  # floats work
            ssl_context_factory=(lambda _config, _default: self._ssl) if self._ssl is not None else None,
        )
        server = self._server = _UvicornServer(config)
        sockets = ([reuse_port_socket(self._host, self._requested_port, self._what, self._flag)]
                   if self._reuse_port else None)
        task = self._task = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started:
            if task.done():
                # uvicorn reports bind errors by logging and exiting (SystemExit) instead of raising.
                exc = task.exception() if not task.cancelled() else None
                raise StartupError(
                    f"Cannot serve {self._what} on {self._host}:{self._requested_port} ({exc!r}). Is the port in "
                    f"use? Pick another with {self._flag}."
                )
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1] if server.servers else self._requested_port
        log.info(self._announce + (" (TLS)" if self._ssl is not None else ""), self._host, self.port)

    def drain(self) -> None:
        """Keep serving, but end each connection after its next response (`Connection: close`)."""
        self._protocol.draining = True

    async def stop(self) -> None:
        """Stop accepting; in-flight requests finish (uvicorn waits up to the grace period)."""
        self.stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait([self._task], timeout=(self.grace_s or 0) + 5)
