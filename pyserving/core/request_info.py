"""What is known about one request as it passes through: filled by the front end (api, protocol, id) and by the
service (the version and signature that served it), read at the end by metrics and logs."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestInfo:
    api: str  # predict | classify | regress | multi_inference | metadata | status
    protocol: str  # rest | grpc
    model: str = ""
    version: int | None = None
    signature: str = ""
    request_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    arrived: float = field(default_factory=time.time)
    # Payloads, kept only for request logging (set by the service; never copied):
    inputs: Mapping[str, Any] | None = None
    outputs: Mapping[str, Any] | None = None
    examples: Sequence[bytes] | None = None
    results: Any = None
