"""The REST API's OpenAPI document: `openapi.json` next to this module (package data, so installed wheels carry it),
served at GET /v1/openapi.json.

The document is written by hand and checked against the live server by tests/fuzz (schemathesis): when the API
changes, change the document with it.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import ASGIApp

OPENAPI_PATH = "/v1/openapi.json"
_DOCUMENT = "openapi.json"


def openapi_document() -> bytes:
    """The document as shipped."""
    return resources.files(__package__ or "pyserving.frontends.rest").joinpath(_DOCUMENT).read_bytes()


class OpenApiEndpoint:
    """Serves the document, read once when built (so a missing file fails at start-up, not on a request)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        """`headers`: added to the answer (TF Serving's fixed CORS headers, when enabled, so browser tools on other
        origins can read the document)."""
        self._body = openapi_document()
        self._headers = headers or {}

    def routes(self) -> dict[str, ASGIApp]:
        return {OPENAPI_PATH: request_response(self.openapi)}

    async def openapi(self, request: Request) -> Response:
        return Response(self._body, media_type="application/json", headers=self._headers)
