"""One round trip per call to a second process: what any server whose model lives in another process pays.

The bare peers' `--hop` (bench/peers/grpc_servicer.py, bench/peers/starlette_app.py) use it: `fork_echo()` before
the server is made, `await connect(sock)` on the server's event loop, then `await channel.round_trip()` in each call.
Ids are written once per event-loop turn, as pyserving's channel to its model process writes its frames.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct

_ID = struct.Struct("<Q")


def _echo(sock: socket.socket) -> None:
    """The other process: sends back whatever arrives, as it arrives, until the socket closes."""
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def fork_echo() -> socket.socket:
    """Starts the echo process (same process group: bench/floor.py counts its CPU with the server's); our end."""
    ours, theirs = socket.socketpair()
    if os.fork() == 0:
        ours.close()
        _echo(theirs)
        os._exit(0)
    theirs.close()
    return ours


class Hop(asyncio.Protocol):
    """One round trip per call to the echo process: a call's id goes out with the others of its loop turn."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.ids = itertools.count()
        self.pending: list[bytes] = []
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        whole = len(self.received) // _ID.size * _ID.size
        for (call,) in _ID.iter_unpack(self.received[:whole]):
            future = self.waiting.pop(call)
            if not future.done():  # cancelled: the client went away (a load generator stopping)
                future.set_result(None)
        self.received = self.received[whole:]

    async def round_trip(self) -> None:
        call = next(self.ids)
        future = self.waiting[call] = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(_ID.pack(call))
        await future  # its id comes back even if cancelled meanwhile, and is dropped then

    def flush(self) -> None:
        self.transport.writelines(self.pending)  # type: ignore[attr-defined]
        self.pending = []


async def connect(sock: socket.socket) -> Hop:
    _, channel = await asyncio.get_running_loop().create_unix_connection(Hop, sock=sock)
    return channel
