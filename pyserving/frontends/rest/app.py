"""The REST app: a small ASGI router in front of the API modules.

`/v1/...` goes to TF Serving's handlers (`tfserving_v1`); `/healthz` and `/readyz` answer for probes; the
metrics path (when configured) serves Prometheus; anything else is TF Serving's HTML 404. Further APIs (`/v2`)
are more prefixes, and anything that must see every request (auth) wraps the app as ASGI middleware.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pyserving.core.control import ControlPlane

Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[ASGIApp], ASGIApp]

NOT_FOUND_HTML = (
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>"
)
_JSON = "application/json"
V1_PATH = re.compile(r"/v1/.*", re.I | re.S)


def not_found() -> Response:
    return Response(NOT_FOUND_HTML, status_code=404, media_type="text/html")


class MetricsEndpoint:
    """GET of a Prometheus registry in the text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            return not_found()
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)


class HealthEndpoints:
    """Beyond TF Serving: /healthz (the process answers) and /readyz (every configured model has an AVAILABLE
    version; 503 with the reasons otherwise), for Kubernetes probes."""

    def __init__(self, control: ControlPlane, headers: dict[str, str] | None = None) -> None:
        self._control = control
        self._headers = headers or {}

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status": "ok"}', media_type=_JSON, headers=self._headers)

    async def readyz(self, request: Request) -> Response:
        unready = self._control.unready_models()
        if unready:
            return Response(orjson.dumps({"status": "unavailable", "models": unready}), status_code=503,
                            media_type=_JSON, headers=self._headers)
        return Response(b'{"status": "ready"}', media_type=_JSON, headers=self._headers)


class RestRouter:
    """Exact GET paths first, then path patterns (TF Serving's /v1 is one), then the HTML 404."""

    def __init__(
        self,
        *,
        exact: dict[str, Handler] | None = None,
        patterns: Sequence[tuple[re.Pattern[str], Handler]] = (),
    ) -> None:
        self._exact = dict(exact or {})
        self._patterns = list(patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path = request.scope["path"]
        for pattern, handler in self._patterns:
            if pattern.fullmatch(path):
                return await handler(request)
        handler = self._exact.get(path)
        if handler is not None and request.method == "GET":
            return await handler(request)
        return not_found()


def with_middleware(app: ASGIApp, middleware: Sequence[Middleware]) -> ASGIApp:
    """`app` wrapped so that the first middleware sees each request first."""
    for wrap in reversed(middleware):
        app = wrap(app)
    return app
