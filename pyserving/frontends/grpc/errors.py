"""Code -> gRPC status. TF Serving passes TensorFlow codes straight through (same numbering) and truncates long
messages."""

from __future__ import annotations

import grpc

from pyserving.errors import Code

GRPC_STATUS: dict[Code, grpc.StatusCode] = {c: grpc.StatusCode[c.name] for c in Code}

MAX_MESSAGE_CHARS = 1024


def grpc_message(message: str) -> str:
    if len(message) > MAX_MESSAGE_CHARS:
        return message[:MAX_MESSAGE_CHARS] + "...TRUNCATED"
    return message
