"""The image's HEALTHCHECK: GET /healthz on the REST port the server was started with.

Slim images have no curl, so this is Python's standard library only. The port, address and TLS are read from PID 1's
command line (the server, which the entrypoint exec'ed; or `docker run --init`'s init, whose arguments are the
entrypoint's), so `docker run IMAGE --rest_api_port=9001` is checked on 9001 rather than reported unhealthy.
Exit 0: healthy; 1: unhealthy (Docker's meanings). `python3 healthcheck.py PID` checks another process's server.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request
from collections.abc import Sequence

TIMEOUT_S = 3.0
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def rest_url(argv: Sequence[str]) -> str | None:
    """The /healthz URL for a server started with `argv` (flags parsed as pyserving does; the last one wins), or None
    when REST is off."""
    flags = {"rest_api_port": "8501", "host": "", "ssl_config_file": ""}
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in flags:
            flags[name] = value if has_value else next(args, "")
    port = int(flags["rest_api_port"])
    if port == 0:
        return None
    host = _WILDCARDS.get(flags["host"], flags["host"])
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if flags["ssl_config_file"] else "http"
    return f"{scheme}://{host}:{port}/healthz"


def main(argv: Sequence[str]) -> int:
    pid = argv[1] if len(argv) > 1 else "1"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    url = rest_url(cmdline[1:])
    if url is None:
        print("--rest_api_port=0: no REST port to check")
        return 0
    # The server checking itself over loopback: its certificate names the public host, not 127.0.0.1, so it is not
    # verified. A server that demands client certificates (client_verify) refuses this check; override HEALTHCHECK.
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
