"""The channel between front ends and the model process, on a real socketpair with real memfd arenas: tensors of
every kind arrive intact, large ones through shared memory whose regions come back once the reader lets go."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
from typing import Any

import numpy as np
import orjson
import pytest

from pyserving.errors import Code, ServingError, SignatureNotFoundError
from pyserving.ipc.arena import ALIGN, Arena, new_memfd
from pyserving.ipc.buckets import SharedBuckets, new_bucket_table
from pyserving.ipc.channel import INLINE_BYTES, READ_BYTES, Channel, Payload, error_from


def test_arena_allocates_first_fit_and_coalesces_freed_ranges() -> None:
    arena = Arena(new_memfd(1024))
    a, b, c = arena.alloc(100), arena.alloc(ALIGN), arena.alloc(200)
    assert (a, b, c) == (0, 128, 192)
    assert arena.alloc(1024) is None  # no range that big is free: the sender falls back to inline
    arena.free(b)
    arena.free(a)  # merges with b's range
    assert arena.alloc(192) == 0
    arena.free(0)
    arena.free(c)
    arena.free(c)  # a repeated free (a peer that restarted) is ignored
    assert arena.used_bytes == 0
    assert arena.alloc(1024) == 0  # everything coalesced back into one range


async def _pair() -> tuple[Channel, Channel]:
    """Two ends as the model process and a front end hold them: each writes one arena and reads the other."""
    left, right = socket.socketpair()
    to_right, to_left = new_memfd(1 << 20), new_memfd(1 << 20)
    lr, lw = await asyncio.open_unix_connection(sock=left)
    rr, rw = await asyncio.open_unix_connection(sock=right)

    async def echo(header: dict[str, Any], payload: memoryview) -> tuple[dict[str, Any], Payload]:
        if header["op"] == "fail":
            raise SignatureNotFoundError("nope")
        tensors = server.decode_tensors(header["t"], payload)
        out: Payload = []
        return {"t": server.encode_tensors(tensors, out)}, out

    server = Channel(rr, rw, Arena(os.dup(to_left)), Arena(os.dup(to_right)), handler=echo)
    client = Channel(lr, lw, Arena(to_right), Arena(to_left))
    return client, server


def test_tensors_round_trip_inline_and_through_shared_memory() -> None:
    async def main() -> None:
        client, server = await _pair()
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
        strings = np.array([[b"a", b""], [b"\x00\xff", "é".encode()]], dtype=object)
        sent = {
            "big": np.arange(INLINE_BYTES, dtype=np.float32).reshape(2, -1),  # 64 kB: through the arena
            "small": np.array([1, 2, 3], dtype=np.int64),
            "scalar": np.float64(2.5),
            "empty": np.zeros((0, 3), dtype=np.float32),
            "flags": np.array([True, False]),
            "strings": strings,
            "strided": np.arange(20000, dtype=np.int32)[::2],  # not contiguous: sent as a compact copy
        }
        payload: Payload = []
        reply, data = await client.call({"op": "echo", "t": client.encode_tensors(sent, payload)}, payload)
        got = client.decode_tensors(reply["t"], data)
        for name, value in sent.items():
            assert got[name].dtype == np.asarray(value).dtype, name
            assert got[name].shape == np.asarray(value).shape, name
            np.testing.assert_array_equal(got[name], value)
        big_meta = [m for m in reply["t"] if m[0] == "big"][0]
        assert big_meta[3] == "s"  # it did travel through shared memory
        assert server._out.used_bytes > 0
        del got
        gc.collect()
        await client.call({"op": "echo", "t": []}, [])  # carries the free back
        await asyncio.sleep(0.05)
        assert server._out.used_bytes == 0 and client._out.used_bytes == 0

        reply, _ = await client.call({"op": "fail"}, [])  # a handler's error comes back as data
        failed = error_from(reply["e"])
        assert isinstance(failed, SignatureNotFoundError)  # REST rewords this one: the class survives
        assert failed.signature_name == "nope" and failed.code == Code.FAILED_PRECONDITION

        server.close()
        await asyncio.wait(tasks, timeout=5)
        with pytest.raises(ServingError) as gone:
            await client.call({"op": "echo", "t": []}, [])
        assert gone.value.code == Code.UNAVAILABLE

    asyncio.run(main())


def test_error_round_trip_keeps_version_and_signature() -> None:
    message = "Servable not found for request: Latest(x)"
    exc = error_from([int(Code.NOT_FOUND), message, 3, "sig", None])
    assert (exc.code, exc.message, exc.version, exc.signature) == (Code.NOT_FOUND, message, 3, "sig")


def test_shared_rate_limit_buckets_are_one_budget() -> None:
    """Two mappings of one table (as two front ends hold it) draw from the same bucket."""
    fd = new_bucket_table()
    first, second = SharedBuckets(os.dup(fd)), SharedBuckets(fd)
    taken = [first.take("key:a", 4.0, 1.0, 100.0) == 0.0 for _ in range(3)]
    taken += [second.take("key:a", 4.0, 1.0, 100.0) == 0.0 for _ in range(3)]
    assert taken == [True] * 4 + [False] * 2  # burst 4 for both together
    assert second.take("key:a", 4.0, 1.0, 100.5) == pytest.approx(0.5)  # half a token refilled: wait 0.5 s
    assert first.take("key:a", 4.0, 1.0, 101.0) == 0.0  # one token a second
    assert first.take("key:b", 1.0, 1.0, 101.0) == 0.0  # another caller has its own bucket


def test_many_calls_in_one_turn_share_writes_and_reads_and_keep_their_answers() -> None:
    """Calls made in one event-loop turn go out in one write and arrive as many frames in one read; each answer
    still finds its caller. A frame larger than one read (a long string tensor: strings always ride inline)
    arrives whole among small ones."""
    async def main() -> None:
        client, server = await _pair()
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
        writes: list[int] = []
        write = client._writer.writelines
        client._writer.writelines = lambda frames: (writes.append(len(frames)), write(frames))[1]  # type: ignore[method-assign]

        async def echo(i: int, big: bool = False) -> None:
            sent = {"i": np.array([i, -i], dtype=np.int64)}
            if big:
                sent["s"] = np.array([b"x" * (READ_BYTES * 3 + i)], dtype=object)
            payload: Payload = []
            reply, data = await client.call({"op": "echo", "t": client.encode_tensors(sent, payload)}, payload)
            got = client.decode_tensors(reply["t"], data)
            for name, value in sent.items():
                np.testing.assert_array_equal(got[name], value)

        await asyncio.wait_for(asyncio.gather(*(echo(i, big=i % 100 == 7) for i in range(300))), 10)
        assert writes[0] >= 2 * 300  # prefix and header of every call: one write for the whole turn
        assert server._tasks == {}  # every answer's task let go of
        server.close()
        await asyncio.wait(tasks, timeout=5)

    asyncio.run(main())


def test_frames_torn_at_every_byte_reassemble() -> None:
    """A peer's frames may arrive cut anywhere (the socket's buffers decide); the reader waits for the rest."""
    async def main() -> None:
        left, right = socket.socketpair()
        to_right, to_left = new_memfd(1 << 16), new_memfd(1 << 16)
        rr, rw = await asyncio.open_unix_connection(sock=right)
        heard: list[tuple[dict[str, Any], bytes]] = []
        reader = Channel(rr, rw, Arena(to_left), Arena(to_right),
                         on_push=lambda header, payload: heard.append((header, bytes(payload))))
        running = asyncio.create_task(reader.run())
        frames = b""
        for i in range(5):
            head = orjson.dumps({"op": "state", "n": i})
            body = bytes([i]) * (i * 3)
            frames += struct.pack("<II", len(head) + len(body), len(head)) + head + body
        for i in range(len(frames)):
            left.sendall(frames[i:i + 1])
            await asyncio.sleep(0)
        left.close()
        await asyncio.wait_for(running, 5)
        assert heard == [({"op": "state", "n": i}, bytes([i]) * (i * 3)) for i in range(5)]

    asyncio.run(main())


def test_an_answer_nobody_waits_for_gives_its_arena_regions_back() -> None:
    """A call cancelled (client gone, deadline) before its answer came: the answer's tensors in the peer's arena
    are never decoded, so the receiving side hands their regions back itself."""

    async def main() -> None:
        client, server = await _pair()
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
        big = {"big": np.ones((4, INLINE_BYTES), np.float32)}
        payload: Payload = []
        call = asyncio.create_task(client.call({"op": "echo", "t": client.encode_tensors(big, payload)}, payload))
        await asyncio.sleep(0)  # sent
        call.cancel()
        await asyncio.sleep(0.2)  # the echo answers into the server's arena, to a call nobody waits for
        gc.collect()
        await client.call({"op": "echo", "t": []}, [])  # a later frame: any free has gone by now
        await asyncio.sleep(0.05)
        assert server._out.used_bytes == 0
        server.close()
        await asyncio.wait(tasks, timeout=5)

    asyncio.run(main())


def test_a_frame_over_the_limit_is_refused_alone() -> None:
    async def main() -> None:
        client, server = await _pair()
        tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
        huge = memoryview(bytearray(16)).cast("B")

        class Big:  # a payload part that reports more bytes than the limit, without allocating them
            nbytes = (1 << 31) + 1
            obj = huge

        with pytest.raises(ServingError) as refused:
            client.send({"op": "echo", "t": []}, [Big()])  # type: ignore[list-item]
        assert refused.value.code == Code.RESOURCE_EXHAUSTED and "--frontend_processes=0" in refused.value.message
        reply, _ = await client.call({"op": "echo", "t": []}, [])  # the channel serves on
        assert reply["t"] == []
        server.close()
        await asyncio.wait(tasks, timeout=5)

    asyncio.run(main())
