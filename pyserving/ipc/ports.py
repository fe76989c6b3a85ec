"""One SO_REUSEPORT binder for the ports front-end processes share: the model process reserves each port with it
(bound, never listening), and each front end's REST listener binds the same port with it."""

from __future__ import annotations

import socket

from pyserving.errors import StartupError


def reuse_port_socket(host: str, port: int, what: str, flag: str, *, must_be_free: bool = False) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not listening yet). `what` and `flag` name the listener
    in the error ("REST", "--rest_api_port"). `must_be_free` (the model process's reservation): refuse a port some
    other process already has, which SO_REUSEPORT alone would share (a second server, or a stale one, would then
    take half the connections without a word)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if must_be_free and port:
        with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by a restart is no owner
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise _in_use(what, host, port, flag, exc) from None
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it Nagle holds
    # a response's second write until the client's delayed ACK: 40 ms a keep-alive request (measured)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _in_use(what, host, port, flag, exc) from None
    return sock


def _in_use(what: str, host: str, port: int, flag: str, exc: OSError) -> StartupError:
    return StartupError(f"Cannot serve {what} on {host}:{port} ({exc}). Is the port in use? Pick another with "
                        f"{flag}.")
