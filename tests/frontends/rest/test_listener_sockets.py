"""The REST listener's sockets, in both ways of binding: uvicorn's own (one process) and the SO_REUSEPORT socket
that front-end processes share."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pyserving.frontends.rest.server import RestListener


async def _ok(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("reuse_port", [False, True])
def test_accepted_connections_have_tcp_nodelay(reuse_port: bool) -> None:
    """Without TCP_NODELAY, Nagle holds a response's second write (the body after the headers) until the client's
    delayed ACK: every keep-alive request then waits ~40 ms. asyncio sets it only on sockets created as
    IPPROTO_TCP, which a hand-made SO_REUSEPORT socket must be."""

    async def main() -> int:
        listener = RestListener(_ok, host="127.0.0.1", port=0, what="REST", flag="--rest_api_port",
                                reuse_port=reuse_port)
        await listener.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
            connections = list(listener._server.server_state.connections)  # type: ignore[union-attr]
            assert len(connections) == 1
            sock = connections[0].transport.get_extra_info("socket")
            writer.close()
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            await listener.stop()

    assert asyncio.run(main()) == 1
