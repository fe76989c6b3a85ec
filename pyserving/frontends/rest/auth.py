"""The REST door: authentication and authorization as ASGI middleware in front of the router, so a refused
request never reaches a handler (or the model). TF Serving's error shape: {"error": "..."} with 401 (and
`WWW-Authenticate: Bearer`), 403 or 429 (and `Retry-After`)."""

from __future__ import annotations

import math

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from pyserving.errors import Code
from pyserving.frontends.rest.oip_v2 import MODEL_PATH, PUBLIC_PATHS as V2_PUBLIC_PATHS, REPOSITORY_PATH
from pyserving.frontends.rest.openapi import OPENAPI_PATH
from pyserving.frontends.rest.tfserving_v1 import GET_PATH, POST_PATH, decode_part, request_path
from pyserving.security.auth import ADMIN, ANY, METADATA, METRICS, PREDICT, AuthError, Authenticator, credential_from, \
    current_principal

_PUBLIC_PATHS = frozenset(("/healthz", "/readyz"))
_STATUS = {Code.UNAUTHENTICATED: 401, Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429}


def _target(method: str, path: str, v1_path: str, metrics_path: str) -> tuple[str | None, str] | None:
    """(model, action) a request needs, or None for a public endpoint. `path` is decoded, as the router looks up
    exact paths; `v1_path` is as sent, as TF Serving's handler matches it, so the model checked here is the one
    the handler will serve."""
    if path in _PUBLIC_PATHS or path in V2_PUBLIC_PATHS or method == "OPTIONS":  # CORS preflights carry no credentials
        return None
    if path == OPENAPI_PATH and method == "GET":
        # The same document for every server, naming no model, key or setting; clients read it to learn how to
        # authenticate. Public like the probes (other methods on it are TF Serving's 400, for callers only).
        return None
    if metrics_path and path == metrics_path:
        return None, METRICS
    if method == "POST" and (m := POST_PATH.fullmatch(v1_path)):
        return decode_part(m.group(1)), PREDICT
    if method == "GET" and (m := GET_PATH.fullmatch(v1_path)):
        return decode_part(m.group(1)), METADATA
    if m := MODEL_PATH.fullmatch(v1_path):  # V2: infer is predict; metadata and readiness are metadata
        return decode_part(m.group(1)), PREDICT if m.group(3) == "infer" else METADATA
    if method == "POST" and (m := REPOSITORY_PATH.fullmatch(v1_path)):  # V2's index covers every model
        return decode_part(m.group(1)), ADMIN
    return None, ANY  # a path TF Serving's API does not match: any caller may learn it is a 400 / 404


class AuthMiddleware:
    """Checks every HTTP request against the Authenticator before `app` sees it."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, *, metrics_path: str = "",
                 metrics_only: bool = False) -> None:
        """`metrics_only`: the app is the --metrics_port endpoint (every path is the metrics)."""
        self._app = app
        self._auth = authenticator
        self._metrics_path = metrics_path
        self._metrics_only = metrics_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        target = (None, METRICS) if self._metrics_only else _target(scope["method"], scope["path"],
                                                                     request_path(scope), self._metrics_path)
        if target is None:
            return await self._app(scope, receive, send)
        authorization = api_key = None
        for name, value in scope["headers"]:  # one pass, no Headers object: this runs on every request
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")
        try:
            credential = credential_from(authorization, api_key)
            principal = self._auth.check(credential, target[0], target[1])
        except AuthError as exc:
            return await _refuse(exc, send)
        token = current_principal.set(principal.name if principal is not None else "")
        try:
            await self._app(scope, receive, send)
        finally:
            current_principal.reset(token)


async def _refuse(exc: AuthError, send: Send) -> None:
    status = _STATUS.get(exc.code, 401)
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="pyserving"'))
    if status == 429:
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
    body = orjson.dumps({"error": exc.message})
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
