"""Runs a server from ServerOptions with process-level set-up: logging, and an exit status for start-up failures."""

from __future__ import annotations

import asyncio
import logging
import sys

from pyserving.options import ServerOptions


def run(options: ServerOptions, warnings: list[str] = []) -> int:  # noqa: B006 (read-only)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    log = logging.getLogger("pyserving")
    for warning in warnings:
        log.warning(warning)
    from pyserving.server import StartupError, serve

    try:
        asyncio.run(serve(options))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0
