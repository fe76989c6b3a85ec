"""The REST listener's sockets, in both ways of binding: uvicorn's own (one process) and the SO_REUSEPORT socket
that front-end processes share."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

from pyserving.frontends.rest.server import RestListener
from pyserving.options import HttpLimits


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


def _data_segments_in(sock: socket.socket) -> int:
    """Linux's tcp_info.tcpi_data_segs_in: segments carrying data that this socket has received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[152:156], "little")


async def _sized(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers `/<n>` with n bytes of body, in uvicorn's two writes (head, then body)."""
    if scope["type"] != "http":
        return
    body = b"x" * int(scope["path"][1:] or 2)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _with_listener(reuse_port: bool, client, limits: HttpLimits | None = None):  # type: ignore[no-untyped-def]
    listener = RestListener(_sized, host="127.0.0.1", port=0, what="REST", flag="--rest_api_port",
                            reuse_port=reuse_port, limits=limits)
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            return await client(reader, writer)
        finally:
            writer.close()
    finally:
        await listener.stop()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_small_response_leaves_in_one_segment(reuse_port: bool) -> None:
    """uvicorn writes a response's head and body apart; with TCP_NODELAY each was its own segment, waking the
    client twice per answer. The listener's transport sends what one loop turn wrote in one go."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        sock = writer.get_extra_info("socket")
        before = _data_segments_in(sock)
        for _ in range(20):
            writer.write(b"GET /100 HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200") and body == b"x" * 100
        return _data_segments_in(sock) - before

    assert asyncio.run(_with_listener(reuse_port, client)) == 20


def test_held_writes_keep_http_semantics() -> None:
    """What is held until the end of a loop turn still goes out whole and in order: a big body, pipelined
    requests, a HEAD answer (a head with no body write), and the answer before the close on `Connection: close`."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /3000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _response(reader))[1] == b"x" * 3_000_000
        writer.write(b"GET /5 HTTP/1.1\r\nHost: x\r\n\r\nGET /7 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _response(reader))[1] == b"x" * 5
        assert (await _response(reader))[1] == b"x" * 7
        writer.write(b"HEAD /9 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 9" in head.lower()
        writer.write(b"GET /11 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _response(reader))[1] == b"x" * 11
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server closes

    asyncio.run(_with_listener(False, client))


def test_a_head_deadline_shorter_than_the_body_one_still_holds() -> None:
    """The connection keeps one timer, moved only when a deadline comes earlier than it: after a request whose
    body armed the 5 s body deadline, the next request's head, stalled, is still refused at its own 0.3 s."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bytes, float]:
        writer.write(b"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        assert (await _response(reader))[1] == b"xxx"
        writer.write(b"GET /3 HTTP/1.1\r\nHo")
        start = asyncio.get_running_loop().time()
        answer = await asyncio.wait_for(reader.read(), 5)
        return answer, asyncio.get_running_loop().time() - start

    answer, waited = asyncio.run(_with_listener(
        False, client, HttpLimits(header_timeout_s=0.3, body_timeout_s=5.0)))
    assert answer.startswith(b"HTTP/1.1 408") and b"--http_header_timeout_s" in answer
    assert waited < 2.5


async def _digest(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers with the sha256 of the body it read."""
    if scope["type"] != "http":
        return
    h, more = hashlib.sha256(), True
    while more:
        message = await receive()
        h.update(message.get("body", b""))
        more = message.get("more_body", False)
    digest = h.hexdigest().encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(digest))]})
    await send({"type": "http.response.body", "body": digest})


def test_big_and_small_bodies_on_one_connection() -> None:
    """While a big body streams in, reads may take more than asyncio's 256 KiB (how much depends on what the kernel
    holds, so it is not asserted); every body on the kept-alive connection arrives whole, and after each one reads
    are back at asyncio's own size."""
    bodies = [bytes(range(256)) * (12 << 10), b'{"instances": [1]}', bytes(range(255, -1, -1)) * (5 << 10), b"x"]

    async def main() -> list[bool]:
        listener = RestListener(_digest, host="127.0.0.1", port=0, what="REST", flag="--rest_api_port")
        await listener.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            back_to_default = []
            for body in bodies:
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                head, digest = await _response(reader)
                assert head.startswith(b"HTTP/1.1 200") and digest == hashlib.sha256(body).hexdigest().encode()
                (protocol,) = listener._server.server_state.connections  # type: ignore[union-attr]
                back_to_default.append("max_size" not in vars(protocol._socket_transport))
            writer.close()
            return back_to_default
        finally:
            await listener.stop()

    assert asyncio.run(main()) == [True] * len(bodies)
