"""One error-code space for the whole server; each front end maps it once (REST: HTTP status, gRPC: status)."""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes, numbered as gRPC and TensorFlow's error::Code number them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ServingError(Exception):
    """A failure with a canonical code and a message meant for the user.

    `version` and `signature` say which servable the request had reached when it failed (None / "" before it
    reached one): the service fills them so front ends can label metrics and logs without asking again.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.version: int | None = None
        self.signature = ""

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


class RequestTooLarge(ServingError):
    """A request over --max_request_bytes (REST: 413; gRPC: RESOURCE_EXHAUSTED)."""

    http_status = 413

    def __init__(self, what: str, limit: int, *, message: str = "") -> None:
        super().__init__(Code.RESOURCE_EXHAUSTED, message or f"{what} is larger than the server's limit of {limit} "
                         "bytes (--max_request_bytes). Send smaller requests, or raise the limit.")


class SignatureNotFoundError(ServingError):
    """The model has no signature of that name. gRPC reports it as is; REST rewords it as TF Serving's REST does."""

    def __init__(self, signature_name: str) -> None:
        super().__init__(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
        self.signature_name = signature_name


class StartupError(RuntimeError):
    """The server could not start (a model failed to load, a port is taken); the message says what to fix."""


class PermanentError(ServingError):
    """A load failure that waiting cannot fix (python models not allowed, a framework not installed): the manager
    fails the version at once instead of retrying it --max_num_load_retries times."""
