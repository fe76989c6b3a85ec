"""Code -> HTTP status, exactly TF Serving's ToHTTPStatusCode table."""

from __future__ import annotations

from pyserving.errors import Code, ServingError

HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INTERNAL: 500,
    Code.DATA_LOSS: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
}


def http_status(exc: ServingError) -> int:
    """The status of a REST error answer: the error's own (413 for a request over the limit) or TF Serving's."""
    return getattr(exc, "http_status", None) or HTTP_STATUS.get(exc.code, 500)
