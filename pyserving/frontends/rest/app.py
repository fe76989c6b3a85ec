"""The REST app: a small ASGI router in front of the API modules.

Exact GET paths come first: `/healthz` and `/readyz` answer for probes, `/v1/openapi.json` serves the API's OpenAPI
document, and the metrics path (when configured) serves Prometheus. Then the rest of `/v1/...` goes to TF Serving's
handlers (`tfserving_v1`); anything else is TF Serving's HTML 404. Further APIs (`/v2`)
are more patterns, and anything that must see every request (auth) wraps the router as ASGI middleware before
the listener serves it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

import orjson
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from pyserving.core.control import ControlPlane

Handler = Callable[[Request], Awaitable[Response]]

NOT_FOUND_HTML = (
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>"
)
_JSON = "application/json"
V1_PATH = re.compile(r"/v1/.*", re.I | re.S)


def not_found() -> Response:
    return Response(NOT_FOUND_HTML, status_code=404, media_type="text/html")


def metrics_app(registry: CollectorRegistry) -> ASGIApp:
    """Prometheus's own exposition of `registry` (text or OpenMetrics as the scraper asks, gzip, `name[]`
    filters), as TF Serving's --monitoring_config_file path and the --metrics_port endpoint serve it."""
    return make_asgi_app(registry)


class HealthEndpoints:
    """Beyond TF Serving: /healthz (the process answers) and /readyz (every configured model has an AVAILABLE
    version; 503 with the reasons otherwise), for Kubernetes probes.

    `draining` says why the server is on its way out ("" while it is not): /readyz is then 503 with that reason, so
    that load balancers stop sending while requests are still served, whatever state the models are in."""

    def __init__(self, control: ControlPlane, headers: dict[str, str] | None = None,
                 draining: Callable[[], str] = lambda: "") -> None:
        self._control = control
        self._headers = headers or {}
        self._draining = draining

    def routes(self) -> dict[str, ASGIApp]:
        return {"/healthz": request_response(self.healthz), "/readyz": request_response(self.readyz)}

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status": "ok"}', media_type=_JSON, headers=self._headers)

    async def readyz(self, request: Request) -> Response:
        reason = self._draining()
        if reason:
            return Response(orjson.dumps({"status": "draining", "reason": reason}), status_code=503,
                            media_type=_JSON, headers=self._headers)
        unready = self._control.unready_models()
        if unready:
            return Response(orjson.dumps({"status": "unavailable", "models": unready}), status_code=503,
                            media_type=_JSON, headers=self._headers)
        return Response(b'{"status": "ready"}', media_type=_JSON, headers=self._headers)


class RestRouter:
    """Exact GET paths first, then path patterns (TF Serving's /v1 is one), then `fallback` (TF Serving's HTML 404
    unless given).

    Exact paths win as in TF Serving's HTTP server (evhttp_server.cc looks up registered URIs before it asks the
    dispatchers), so an exact path under /v1 (the OpenAPI document, a --monitoring_config_file path) is served
    rather than answered "Malformed request"."""

    def __init__(
        self,
        *,
        exact: dict[str, ASGIApp] | None = None,
        patterns: Sequence[tuple[re.Pattern[str], Handler]] = (),
        fallback: ASGIApp | None = None,
    ) -> None:
        self._exact = dict(exact or {})
        self._patterns = [(pattern, request_response(handler)) for pattern, handler in patterns]
        self._fallback = fallback or _not_found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path = scope["path"]
        app = self._exact.get(path)
        if app is not None and scope["method"] == "GET":
            return await app(scope, receive, send)
        for pattern, handler in self._patterns:
            if pattern.fullmatch(path):
                return await handler(scope, receive, send)
        await self._fallback(scope, receive, send)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await not_found()(scope, receive, send)
