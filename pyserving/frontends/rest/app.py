"""The TF Serving v1 REST API as an ASGI app on starlette primitives.

Routing is TF Serving's own pair of case-insensitive regexes rather than a route table, because its error
behaviour is part of the API: anything outside /v1 is a 404 with an HTML body, anything under /v1 that does not
match is a 400 "Malformed request".
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.request_info import RequestInfo
from pyserving.core.service import InferenceService, RoutingKey
from pyserving.core.states import VersionStatus
from pyserving.errors import Code, ServingError, SignatureNotFoundError
from pyserving.frontends.rest import json_codec
from pyserving.frontends.rest.errors import HTTP_STATUS
from pyserving.observability.requests import RequestObserver, new_request_id

_POST = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_GET = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_V1 = re.compile(r"/v1/.*", re.I | re.S)
_ORIGIN = re.compile(r"https?://.*", re.I)

_JSON = "application/json"
VERSION_HEADER = "X-Model-Version"
"""Response header naming the model version that answered a predict/classify/regress request."""
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_MAX_GUNZIPPED_BYTES = 100 << 20
_NOT_FOUND_HTML = (
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>"
)


def _version_status_json(statuses: list[VersionStatus]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(s.version),
                "state": s.state.name,
                "status": {
                    "error_code": s.error.code.name if s.error else "OK",
                    "error_message": s.error.message if s.error else "",
                },
            }
            for s in statuses
        ]
    }


class RestApi:
    """ASGI app serving TF Serving's REST API over an InferenceService. Stateless apart from its settings."""

    def __init__(
        self,
        service: InferenceService,
        *,
        timeout_ms: int = 30000,
        enable_cors: bool = False,
        observer: RequestObserver | None = None,
        metrics_path: str = "",
    ) -> None:
        self._service = service
        self._timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self._extra_headers = _CORS_HEADERS if enable_cors else {}
        self._observer = observer or RequestObserver(None)
        self._metrics_path = metrics_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    def _json(self, body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type=_JSON, headers=self._extra_headers)

    def _error(self, exc: ServingError) -> Response:
        return self._json(orjson.dumps({"error": exc.message}), HTTP_STATUS.get(exc.code, 500))

    async def _dispatch(self, request: Request) -> Response:
        path, method = request.scope["path"], request.method  # (request.url builds a whole URL object)
        if not _V1.fullmatch(path):
            if method == "GET" and path in ("/healthz", "/readyz"):
                return self._health(path)
            if method == "GET" and self._metrics_path and path == self._metrics_path:
                return self._scrape()
            return Response(_NOT_FOUND_HTML, status_code=404, media_type="text/html")
        if method == "OPTIONS":
            if _ORIGIN.fullmatch(request.headers.get("origin", "")):
                return Response(b"", status_code=200, headers=self._extra_headers)
            return Response(b"", status_code=400, headers=self._extra_headers)
        info = RequestInfo(api="", protocol="rest",
                           request_id=request.headers.get("x-request-id") or new_request_id())
        code = Code.OK
        self._observer.start(info)
        try:
            if method == "POST" and (m := _POST.fullmatch(path)):
                return await self._post(request, m, info)
            if method == "GET" and (m := _GET.fullmatch(path)):
                return self._get(m, info)
            raise ServingError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        except ServingError as exc:
            code = exc.code
            return self._error(exc)
        except Exception:
            code = Code.INTERNAL
            raise
        finally:
            self._observer.finish(info, code.name)

    def _scrape(self) -> Response:
        metrics = self._observer.metrics
        if metrics is None:
            return Response(_NOT_FOUND_HTML, status_code=404, media_type="text/html")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _health(self, path: str) -> Response:
        """Beyond TF Serving: /healthz (the process answers) and /readyz (every configured model has an AVAILABLE
        version; 503 with the reasons otherwise), for Kubernetes probes."""
        if path == "/healthz":
            return self._json(b'{"status": "ok"}')
        unready = self._service.unready_models()
        if unready:
            return self._json(orjson.dumps({"status": "unavailable", "models": unready}), 503)
        return self._json(b'{"status": "ready"}')

    def _list_models(self) -> Response:
        """Beyond TF Serving (its GET /v1/models is an error): every model, its versions' states and its labels."""
        models = [
            {"name": name, **_version_status_json(statuses), "version_labels": {k: str(v) for k, v in labels.items()},
             **({"traffic_split": split} if split is not None else {})}
            for name, statuses, labels, split in self._service.models()
        ]
        return self._json(orjson.dumps({"models": models}))

    @staticmethod
    def _servable_request(name: str | None, version: str | None, label: str | None) -> ServableRequest:
        if not name:
            raise ServingError(Code.INVALID_ARGUMENT, "Missing model name in request.")
        try:
            number = int(version) if version is not None else None
        except ValueError:
            number = None
        if number is not None and number >= 2**63:
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {version} to numeric.")
        return ServableRequest(name, number, label)

    def _get(self, m: re.Match[str], info: RequestInfo) -> Response:
        name, version, label, metadata = m.groups()
        info.api, info.model = ("metadata" if metadata else "status"), name or ""
        if name is None and version is None and label is None and metadata is None:
            return self._list_models()
        target = self._servable_request(name, version, label)
        if metadata:
            servable, meta = self._service.metadata(target, info)
            body = {
                "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                "metadata": {
                    key: json_format.MessageToDict(
                        value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
                    for key, value in meta.items()
                },
            }
            return self._json(orjson.dumps(body))
        if target.label is not None:
            # TF Serving ignores a label here and lists every version; we answer for the version it names.
            with self._service.manager.lease(target) as lease:
                version_number: int | None = lease.id.version
        else:
            version_number = target.version
        return self._json(orjson.dumps(_version_status_json(self._service.status(target.name, version_number))))

    async def _body(self, request: Request) -> bytes:
        body = await request.body()
        encoding = request.headers.get("content-encoding", "")
        if "gzip" in encoding.lower():
            try:
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = decompressor.decompress(body, _MAX_GUNZIPPED_BYTES)
                if decompressor.unconsumed_tail:
                    raise ServingError(
                        Code.INVALID_ARGUMENT,
                        f"Request body is larger than {_MAX_GUNZIPPED_BYTES} bytes once uncompressed.",
                    )
            except (zlib.error, gzip.BadGzipFile) as exc:
                raise ServingError(Code.INVALID_ARGUMENT, f"Failed to gunzip the request body: {exc}") from None
        return body

    async def _post(self, request: Request, m: re.Match[str], info: RequestInfo) -> Response:
        name, version, label, verb = m.groups()
        verb = verb.lower()
        info.api, info.model = verb, name
        target = self._servable_request(name, version, label)
        doc = json_codec.parse_body(await self._body(request))
        sig_name = json_codec.signature_name(doc)
        handler: Callable[..., Awaitable[tuple[bytes, ServableId]]] = getattr(self, f"_{verb}")
        body, servable = await handler(target, sig_name, doc, request.headers.get, info)
        # TF Serving's body has no room for the version that answered; canary users need it (see ARCHITECTURE).
        return Response(body, media_type=_JSON, headers={
            **self._extra_headers, VERSION_HEADER: str(servable.version), "X-Request-Id": info.request_id,
        })

    async def _predict(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], routing_key: RoutingKey,
        info: RequestInfo,
    ) -> tuple[bytes, ServableId]:
        row_format = "instances" in doc

        def decode(sig: Any) -> Any:
            inputs, _ = json_codec.predict_inputs(doc, sig)
            return inputs

        try:
            result = await self._service.predict(
                target, sig_name, decode, timeout_s=self._timeout_s, routing_key=routing_key, info=info
            )
        except SignatureNotFoundError as exc:
            raise ServingError(
                Code.INVALID_ARGUMENT, f'Serving signature name: "{exc.signature_name}" not found in signature def'
            ) from None
        return json_codec.encode_predict(result.outputs, row_format), result.servable

    async def _classify(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], routing_key: RoutingKey,
        info: RequestInfo,
    ) -> tuple[bytes, ServableId]:
        examples = json_codec.examples_from_json(doc, "classify")
        result = await self._service.classify(
            target, sig_name, examples, timeout_s=self._timeout_s, routing_key=routing_key, info=info
        )
        return json_codec.encode_classify(result.classes), result.servable

    async def _regress(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], routing_key: RoutingKey,
        info: RequestInfo,
    ) -> tuple[bytes, ServableId]:
        examples = json_codec.examples_from_json(doc, "regress")
        result = await self._service.regress(
            target, sig_name, examples, timeout_s=self._timeout_s, routing_key=routing_key, info=info
        )
        return json_codec.encode_regress(result.values), result.servable

