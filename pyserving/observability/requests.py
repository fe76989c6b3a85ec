"""The end of every request: count and time it, and (at DEBUG) write its log line. Called by every front end."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyserving.observability.metrics import Metrics
from pyserving.observability.request_log import LoggedRequest, RequestLoggers

LOGGED_APIS = frozenset(("predict", "classify", "regress", "multi_inference"))

log = logging.getLogger("pyserving.request")
_ids = itertools.count(1)
_prefix = f"{os.getpid():x}-"


def new_request_id() -> str:
    """Unique within the process and cheap (no uuid on the hot path)."""
    return f"{_prefix}{next(_ids):x}"


@dataclass(slots=True)
class RequestInfo:
    """What a front end learned about one request as it served it, read at the end by metrics and logs."""

    api: str  # predict | classify | regress | multi_inference | metadata | status
    protocol: str  # rest | grpc
    model: str = ""
    version: int | None = None
    signature: str = ""
    request_id: str = ""
    principal: str = ""
    """Who made the request (API key name or JWT subject), never a credential."""
    started: float = field(default_factory=time.perf_counter)
    arrived: float = field(default_factory=time.time)
    # Payloads, kept only for request logging (never copied):
    inputs: Mapping[str, Any] | None = None
    outputs: Mapping[str, Any] | None = None
    examples: Sequence[bytes] | None = None
    results: Any = None


class RequestObserver:
    """Records finished requests. Event-loop side: must stay cheap."""

    def __init__(self, metrics: Metrics | None, loggers: RequestLoggers | None = None) -> None:
        self.metrics = metrics
        # Plain counts read at scrape time: a Gauge's inc()/dec() take a lock each, twice per request.
        self._in_flight = {"rest": 0, "grpc": 0}
        self._elsewhere = {"rest": 0, "grpc": 0}
        """Requests in flight in front-end processes, as they reported them (the gauge shows the sum)."""
        if metrics is not None:
            for protocol in self._in_flight:
                metrics.in_flight.labels(protocol).set_function(
                    lambda p=protocol: self._in_flight[p] + self._elsewhere.get(p, 0))
        self.loggers = loggers if loggers is not None else RequestLoggers()

    def start(self, info: RequestInfo) -> None:
        self._in_flight[info.protocol] += 1

    def in_flight_elsewhere(self, protocol: str, delta: int) -> None:
        """Front-end processes' requests started (+) or ended (-): a Gauge with a function ignores inc()."""
        self._elsewhere[protocol] = self._elsewhere.get(protocol, 0) + delta

    def failed(self, info: RequestInfo, version: int | None, signature: str) -> None:
        """What the service said of a failed request: the servable it had reached, if any."""
        if version is not None:
            info.version = version
        if signature:
            info.signature = signature

    def finish(self, info: RequestInfo, code: str) -> None:
        latency_s = time.perf_counter() - info.started
        self._in_flight[info.protocol] -= 1
        version = str(info.version) if info.version is not None else ""
        if self.metrics is not None:
            self.metrics.observe_request(
                model=info.model, version=version, signature=info.signature, api=info.api,
                protocol=info.protocol, code=code, latency_s=latency_s,
            )
        logger = self.loggers.get(info.model)
        if logger is not None and info.api in LOGGED_APIS:
            logger.log(LoggedRequest(
                model=info.model, version=info.version or 0, signature=info.signature, api=info.api,  # type: ignore[arg-type]
                inputs=info.inputs, outputs=info.outputs, examples=info.examples, results=info.results,
                latency_s=latency_s, code=code, protocol=info.protocol,  # type: ignore[arg-type]
                timestamp=info.arrived, request_id=info.request_id, principal=info.principal,
            ))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"fields": {
                "event": "request", "model": info.model, "version": info.version, "signature": info.signature,
                "api": info.api, "protocol": info.protocol, "status": code,
                "latency_ms": round(latency_s * 1000, 3), "request_id": info.request_id,
                **({"principal": info.principal} if info.principal else {}),
            }})
