"""The operator tools' side of the wire: TF Serving's REST and gRPC APIs, which pyserving and TF Serving both
serve. REST uses the standard library (the tools add no dependency); gRPC uses grpcio with our TensorFlow-free
messages. Every failure becomes a ClientError whose text is one line an operator can act on."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

TOKEN_ENV = "PYSERVING_TOKEN"
MAX_RESPONSE_BYTES = 256 << 20
"""More than any answer these tools ask for; a server (or something else on the port) cannot make them hold more."""

M = TypeVar("M", bound=Message)


class ClientError(Exception):
    """A request the tools could not complete; `str()` is the line to print."""


def auth_headers(token: str | None) -> dict[str, str]:
    """`Authorization: Bearer` for a server with --auth_config_file (an API key or a JWT); --token wins over
    $PYSERVING_TOKEN."""
    token = token or os.environ.get(TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except ValueError:
        pass
    text = " ".join(body.decode("utf-8", "replace").split())  # an HTML error page, say: one line
    return text[:300] if text else "(empty body)"


class RestError(ClientError):
    """The server answered with an error status; `status` and the server's own message."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {message}")
        self.status = status
        self.message = message


def rest(base_url: str, path: str, *, body: bytes | None = None, token: str | None = None,
         timeout_s: float = 10.0) -> Any:
    """GET (or POST `body`) `base_url + path` and return the decoded JSON answer."""
    url = base_url.rstrip("/") + path
    if "://" not in base_url:
        raise ClientError(f"--rest {base_url}: give a URL, e.g. http://localhost:8501")
    headers = {"Accept": "application/json", **auth_headers(token)}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise RestError(url, exc.code, _error_text(exc.read(64 << 10))) from None
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach {base_url}: {exc.reason}") from None
    except TimeoutError:
        raise ClientError(f"{url}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise ClientError(f"cannot reach {base_url}: {exc}") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise ClientError(f"{url}: the answer is larger than {MAX_RESPONSE_BYTES >> 20} MiB")
    try:
        return json.loads(raw)
    except ValueError:
        raise ClientError(f"{url}: the answer is not JSON (is this a model server's REST port?)") from None


class GrpcError(ClientError):
    def __init__(self, target: str, code: str, message: str) -> None:
        super().__init__(f"{target}: {code}: {message}")
        self.code = code
        self.message = message


def grpc_call(target: str, service: str, method: str, request: Message, response_type: type[M], *,
              token: str | None = None, timeout_s: float = 10.0) -> M:
    """One unary call of TF Serving's `service`/`method` on an insecure channel to `target` (HOST:PORT)."""
    import grpc

    metadata: Sequence[tuple[str, str]] = [(k.lower(), v) for k, v in auth_headers(token).items()]
    options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(f"/{service}/{method}", request_serializer=type(request).SerializeToString,
                                   response_deserializer=response_type.FromString)
        try:
            return call(request, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "dns" in details.lower()):
                raise ClientError(f"cannot reach {target}: {details}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ClientError(f"{target}: no answer within {timeout_s:g} s") from None
            raise GrpcError(target, code.name, details) from None
