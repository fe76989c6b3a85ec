"""A front-end process (`--frontend_processes=N`): the REST and gRPC listeners, built by the same code as in one
process (Server._build_listeners), over stand-ins that call the model process (pyserving.ipc.client).

Started by the model process only: `python -m pyserving.frontends.worker --index=I --fds=CHANNEL,OUT,IN,RATE_LIMITS
--grpc_port=P --rest_port=Q`, with the pickled ServerOptions on stdin. It imports no TensorFlow. It stops on
SIGTERM (from the model process, after the drain) and when the model process goes away; SIGINT (a terminal's ^C
reaches the whole process group) is the model process's to handle.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from pyserving.ipc.arena import Arena
from pyserving.ipc.buckets import SharedBuckets
from pyserving.ipc.channel import Channel
from pyserving.ipc.client import ModelLink, RemoteControl, RemoteObserver, RemoteService
from pyserving.errors import StartupError
from pyserving.options import ServerOptions
from pyserving.security.auth import AuthConfigWatcher, Authenticator
from pyserving.server import Server

log = logging.getLogger("pyserving.frontends")


class _RemoteMetrics:
    """The metrics path on the REST port: the model process's registry (it counts every front end's requests)."""

    def __init__(self, control: RemoteControl) -> None:
        self._control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), "")
        try:
            body, content_type = await self._control.metrics(accept)
            status = 200
        except Exception as exc:  # the model process is away: say so, as a scrape error
            body, content_type, status = f"{exc}\n".encode(), "text/plain; charset=utf-8", 503
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class FrontendServer(Server):
    """Server's listeners over the model process. Only the listener-building and stopping parts of Server are
    used; models, batching and control stay in the model process."""

    _reuse_port = True

    def __init__(self, options: ServerOptions, link: ModelLink,
                 buckets: SharedBuckets | None = None) -> None:  # no super().__init__: no models here
        self.options = options
        self.link = link
        self.service = RemoteService(link)  # type: ignore[assignment]
        self.control = RemoteControl(link)  # type: ignore[assignment]
        self.observer = RemoteObserver(link)
        self.authenticator: Authenticator | None = None
        self._auth_watcher: AuthConfigWatcher | None = None
        if options.auth_config_file:
            from pyserving.config.auth_config import load_auth_config_file

            # Rate limits count the whole server's requests: the buckets are shared by every front end.
            self.authenticator = Authenticator(load_auth_config_file(options.auth_config_file),
                                               shared_buckets=buckets.take if buckets is not None else None)
            self._auth_watcher = AuthConfigWatcher(options.auth_config_file, load_auth_config_file,
                                                   self.authenticator, options.auth_poll_seconds)
            link.on_auth_change = self._auth_watcher.poll_once  # when the model process's watcher saw a change
        self._grpc = None
        self._rest = None
        self._metrics_listener = None
        self._drained = False
        self._drain_reason = ""

    @property  # type: ignore[override]
    def draining(self) -> str:
        """Why /readyz answers 503 whatever the models' states ("" while it does not)."""
        if not self.link.connected:
            return "the model process is not reachable"
        return self._drain_reason

    def _metrics_app(self) -> ASGIApp:
        return _RemoteMetrics(self.control)  # type: ignore[arg-type]

    async def start(self) -> None:
        self._build_listeners()
        for listener in (self._grpc, self._rest):
            if listener is not None:
                await listener.start()
        # No polling of the auth file here: the model process polls it and tells every front end at once.

    async def drain(self) -> None:
        """Not ready from now on: gRPC health NOT_SERVING, REST connections closed after their next response."""
        if self._drained:
            return
        self._drained = True
        # As in Server.stop: gRPC health first, so that no client sees /readyz 503 with health SERVING.
        if self._grpc is not None:
            await self._grpc.drain()
        self._drain_reason = self.link.snapshot.draining or "the server is shutting down"
        if self._rest is not None:
            self._rest.drain()

    async def stop(self, reason: str = "", grace_s: float | None = None) -> None:  # type: ignore[override]
        await self.drain()
        grace = self.options.shutdown_grace_s if grace_s is None else grace_s
        waits = [asyncio.ensure_future(self._rest.stop())] if self._rest is not None else []
        if self._grpc is not None:
            waits.append(asyncio.ensure_future(self._grpc.stop(grace)))
        if waits:
            await asyncio.wait(waits, timeout=grace + 5)


async def run(options: ServerOptions, index: int, fds: Sequence[int]) -> None:
    channel_fd, out_fd, in_fd, buckets_fd = fds
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=channel_fd))
    link = ModelLink()
    channel = link.channel = Channel(reader, writer, Arena(out_fd), Arena(in_fd), on_push=link.on_push)
    reading = asyncio.create_task(channel.run())
    await asyncio.wait([reading, asyncio.ensure_future(link.has_state.wait())], return_when=asyncio.FIRST_COMPLETED)
    if channel.closed:
        return
    server = FrontendServer(options, link, SharedBuckets(buckets_fd))
    await server.start()
    # As in the model process (Server.start): what is imported by now lives as long as the process; keep the
    # cyclic GC from rescanning it on every collection.
    gc.collect()
    gc.freeze()
    channel.send({"op": "listening"}, [])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def follow_drain() -> None:
        await link.draining.wait()
        await server.drain()

    watching = asyncio.create_task(follow_drain())
    await asyncio.wait([reading, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    watching.cancel()
    if reading.done():
        # Nothing can be served without it (requests in flight have had their 503 / UNAVAILABLE already): close
        # the listeners at once, so that load balancers get refused connections and go elsewhere.
        log.error("Front-end process %d: the model process went away; stopping", index)
        await server.stop(grace_s=1.0)  # gRPC: its listener closes at once whatever the grace; the grace lets the
        # UNAVAILABLE answers already on their way go out rather than turn into CANCELLED
    else:
        await server.stop()
    channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyserving.frontends.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--fds", required=True)
    parser.add_argument("--grpc_port", type=int, default=0)
    parser.add_argument("--rest_port", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    options: ServerOptions = pickle.load(sys.stdin.buffer)
    # The model process keeps --metrics_port; front end 0 serves --grpc_socket_path (a UNIX socket has one
    # listener: it is down while front end 0 restarts); the ports are the ones the model process reserved (port 0
    # resolved).
    options = dataclasses.replace(
        options, grpc_port=args.grpc_port, rest_api_port=args.rest_port, metrics_port=0,
        grpc_socket_path=options.grpc_socket_path if args.index == 0 else "",
        grpc_channel_arguments=(*options.grpc_channel_arguments, ("grpc.so_reuseport", 1)),
    )
    from pyserving.observability import logs

    # --log_dir: a file of its own (pyserving.log is the model process's), as each file has one writer.
    logs.configure(os.environ.get("PYSERVING_VERBOSITY", "INFO"), os.environ.get(logs.LOG_DIR_ENV, ""),
                   f"pyserving.frontend-{args.index}.log")
    try:
        asyncio.run(run(options, args.index, [int(fd) for fd in args.fds.split(",")]))
    except StartupError as exc:
        log.error("Front-end process %d: %s", args.index, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
