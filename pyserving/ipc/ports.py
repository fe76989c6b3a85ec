"""One SO_REUSEPORT binder for the ports front-end processes share: the model process reserves each port with it
(bound, never listening), and each front end's REST listener binds the same port with it."""

from __future__ import annotations

import socket

from pyserving.errors import StartupError


def reuse_port_socket(host: str, port: int, what: str, flag: str) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not listening yet). `what` and `flag` name the listener
    in the error ("REST", "--rest_api_port")."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it Nagle holds
    # a response's second write until the client's delayed ACK: 40 ms a keep-alive request (measured)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"Cannot serve {what} on {host}:{port} ({exc}). Is the port in use? Pick another with "
                           f"{flag}.") from None
    return sock
