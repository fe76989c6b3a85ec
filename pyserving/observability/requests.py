"""The end of every request: count and time it, and (at DEBUG) write its log line. Called by both front ends."""

from __future__ import annotations

import itertools
import logging
import os
import time

from pyserving.core.request_info import RequestInfo
from pyserving.observability.metrics import Metrics
from pyserving.observability.request_log import LoggedRequest, RequestLogger

_LOGGED_APIS = frozenset(("predict", "classify", "regress"))

log = logging.getLogger("pyserving.request")
_ids = itertools.count(1)
_prefix = f"{os.getpid():x}-"


def new_request_id() -> str:
    """Unique within the process and cheap (no uuid on the hot path)."""
    return f"{_prefix}{next(_ids):x}"


class RequestObserver:
    """Records finished requests. Event-loop side: must stay cheap."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self._in_flight = {p: metrics.in_flight.labels(p) for p in ("rest", "grpc")} if metrics else {}
        self.request_loggers: dict[str, RequestLogger] = {}
        """model -> its payload logger (logging_config); replaced whole on a config reload."""

    def start(self, info: RequestInfo) -> None:
        if self.metrics is not None:
            self._in_flight[info.protocol].inc()

    def finish(self, info: RequestInfo, code: str) -> None:
        latency_s = time.perf_counter() - info.started
        if self.metrics is not None:
            self._in_flight[info.protocol].dec()
        version = str(info.version) if info.version is not None else ""
        if self.metrics is not None:
            self.metrics.observe_request(
                model=info.model, version=version, signature=info.signature, api=info.api,
                protocol=info.protocol, code=code, latency_s=latency_s,
            )
        logger = self.request_loggers.get(info.model)
        if logger is not None and info.api in _LOGGED_APIS:
            logger.log(LoggedRequest(
                model=info.model, version=info.version or 0, signature=info.signature, api=info.api,  # type: ignore[arg-type]
                inputs=info.inputs, outputs=info.outputs, examples=info.examples, results=info.results,
                latency_s=latency_s, code=code, protocol=info.protocol,  # type: ignore[arg-type]
                timestamp=info.arrived, request_id=info.request_id,
            ))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"fields": {
                "event": "request", "model": info.model, "version": info.version, "signature": info.signature,
                "api": info.api, "protocol": info.protocol, "status": code,
                "latency_ms": round(latency_s * 1000, 3), "request_id": info.request_id,
            }})
