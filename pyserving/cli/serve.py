"""Runs a server from ServerOptions with process-level set-up: logging, and an exit status for start-up failures."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

from pyserving.observability import logs
from pyserving.options import ServerOptions


def run(options: ServerOptions, warnings: Sequence[str] = (), *, verbosity: str = "INFO", log_dir: str = "") -> int:
    logs.configure(verbosity, log_dir)
    # Front-end processes (--frontend_processes) inherit the environment: each writes its own file beside ours.
    if log_dir:
        os.environ[logs.LOG_DIR_ENV] = os.path.abspath(log_dir)
    else:
        os.environ.pop(logs.LOG_DIR_ENV, None)
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
