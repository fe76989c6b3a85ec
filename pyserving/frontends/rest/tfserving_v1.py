"""TF Serving's v1 REST API (`/v1/models/...`): the handlers the REST router sends /v1 paths to.

Matching is TF Serving's own pair of case-insensitive regexes rather than a route table, because its error
behaviour is part of the API: anything under /v1 that does not match is a 400 "Malformed request".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, overload
from urllib.parse import unquote

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from pyserving.codecs.tfserving.signatures import signature_def_map_json
from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.service import ExamplesRequest, InferenceService, PredictRequest
from pyserving.core.states import VersionStatus
from pyserving.errors import Code, ServingError, SignatureNotFoundError
from pyserving.frontends.rest import json_codec
from pyserving.frontends.rest.body import OFF_LOOP_BYTES, check_decoded_size, decoded_body, in_decoder_thread
from pyserving.frontends.rest.errors import http_status
from pyserving.malloc import BIG_REQUEST_BYTES, release_free_memory_soon
from pyserving.observability.requests import RequestInfo, RequestObserver, new_request_id
from pyserving.security.auth import current_principal

POST_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
GET_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
r"""TF Serving's own request patterns (group 1 is the model name); the auth middleware reads them too. Its `\d` is
RE2's, ASCII only: Python's would take any Unicode digit (and int() reads "٣" as 3)."""
_ORIGIN = re.compile(r"https?://.*", re.I)

_JSON = "application/json"
VERSION_HEADER = "X-Model-Version"
"""Response header naming the model version that answered a predict/classify/regress request."""
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
log = logging.getLogger("pyserving.rest")


def request_path(scope: Scope) -> str:
    """The path TF Serving matches its patterns against: as sent, still percent-encoded. It decodes the model name
    and label only once they matched (ParseModelInfo), so an encoded "/" or ":" is part of a name and an encoded
    digit is no version digit."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else scope["path"]


@overload
def decode_part(part: str) -> str: ...


@overload
def decode_part(part: None) -> None: ...


def decode_part(part: str | None) -> str | None:
    """A matched model name or version label, percent-decoded (TF Serving: curl_easy_unescape)."""
    return unquote(part) if part and "%" in part else part


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


def _headers(request: Request) -> Mapping[str, str]:
    """Request headers by lower-case name (a sticky traffic split reads its key from them); a repeated header
    counts by its first value, as starlette's Headers.get does."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(request.scope["headers"])}


class TfServingV1:
    """TF Serving's REST API over the data and control planes. Stateless apart from its settings."""

    def __init__(
        self,
        service: InferenceService,
        control: ControlPlane,
        *,
        timeout_ms: int = 30000,
        cors_headers: Mapping[str, str] | None = None,
        observer: RequestObserver | None = None,
        max_request_bytes: int = 0,
    ) -> None:
        self._service = service
        self._control = control
        self._timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self._extra_headers = dict(cors_headers or {})
        self._observer = observer or RequestObserver(None)
        self._max_body = max_request_bytes or None

    def _json(self, body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type=_JSON, headers=self._extra_headers)

    def _error(self, exc: ServingError) -> Response:
        return self._json(orjson.dumps({"error": exc.message}), http_status(exc))

    async def handle(self, request: Request) -> Response:
        """Any request whose path is under /v1/."""
        path, method = request_path(request.scope), request.method  # (request.url builds a whole URL object)
        if method == "OPTIONS":
            if _ORIGIN.fullmatch(request.headers.get("origin", "")):
                return Response(b"", status_code=200, headers=self._extra_headers)
            return Response(b"", status_code=400, headers=self._extra_headers)
        info = RequestInfo(api="", protocol="rest", principal=current_principal.get(),
                           request_id=request.headers.get("x-request-id") or new_request_id())
        code = Code.OK
        self._observer.start(info)
        try:
            if method == "POST" and (m := POST_PATH.fullmatch(path)):
                return await self._post(request, m, info)
            if method == "GET" and (m := GET_PATH.fullmatch(path)):
                return self._get(m, info)
            raise ServingError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        except ServingError as exc:
            code = exc.code
            self._observer.failed(info, exc.version, exc.signature)
            return self._error(exc)
        except ClientDisconnect:
            # Nobody is left to answer; a client going away is routine, not a server error worth a traceback.
            log.debug("Client went away before sending the whole body of %s %s", method, path)
            code = Code.CANCELLED
            return Response(b"", status_code=400)
        except Exception:
            code = Code.INTERNAL
            raise
        finally:
            self._observer.finish(info, code.name)

    def _list_models(self) -> Response:
        """Beyond TF Serving (its GET /v1/models is an error): every model, its versions' states and its labels."""
        models = [
            {"name": m.name, **_version_status_json(m.versions),
             "version_labels": {k: str(v) for k, v in m.labels.items()},
             **({"traffic_split": m.traffic_split} if m.traffic_split is not None else {})}
            for m in self._control.models()
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
        name, label = decode_part(name), decode_part(label)
        info.api, info.model = ("metadata" if metadata else "status"), name or ""
        if name is None and version is None and label is None and metadata is None:
            return self._list_models()
        target = self._servable_request(name, version, label)
        if metadata:
            meta = self._service.metadata(target)
            info.version = meta.servable.version
            body = {
                "model_spec": {"name": meta.servable.name, "signature_name": "", "version": str(meta.servable.version)},
                "metadata": {"signature_def": signature_def_map_json(meta.signatures)},
            }
            return self._json(orjson.dumps(body))
        # TF Serving ignores a label here and lists every version; we answer for the version it names.
        statuses = self._control.status(target.name, self._service.resolve_version(target))
        return self._json(orjson.dumps(_version_status_json(statuses)))

    async def _post(self, request: Request, m: re.Match[str], info: RequestInfo) -> Response:
        name, version, label, verb = m.groups()
        name, label, verb = decode_part(name), decode_part(label), verb.lower()
        info.api, info.model = verb, name
        target = self._servable_request(name, version, label)
        raw = await decoded_body(request, self._max_body)
        big = len(raw) >= BIG_REQUEST_BYTES
        try:
            check_decoded_size(raw, self._max_body)
            off_loop = len(raw) >= OFF_LOOP_BYTES
            doc = await in_decoder_thread(json_codec.parse_body, raw) if off_loop else json_codec.parse_body(raw)
            del raw
            sig_name = json_codec.signature_name(doc)
            handler: Callable[..., Awaitable[tuple[bytes, ServableId]]] = getattr(self, f"_{verb}")
            body, servable = await handler(target, sig_name, doc, _headers(request), info, off_loop)
        finally:
            if big:
                release_free_memory_soon()
        # TF Serving's body has no room for the version that answered; canary users need it (see ARCHITECTURE).
        return Response(body, media_type=_JSON, headers={
            **self._extra_headers, VERSION_HEADER: str(servable.version), "X-Request-Id": info.request_id,
        })

    async def _predict(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], headers: Mapping[str, str],
        info: RequestInfo, off_loop: bool,
    ) -> tuple[bytes, ServableId]:
        row_format = "instances" in doc
        try:
            # JSON numbers decode by the signature's dtypes: ask which servable and signature first, then send
            # the request to that same servable.
            route, sig = self._service.signature(target, sig_name, headers)
            info.version, info.signature = route.servable.version, sig.name
            if off_loop:
                inputs, _ = await in_decoder_thread(json_codec.predict_inputs, doc, sig)
            else:
                inputs, _ = json_codec.predict_inputs(doc, sig)
            # The document is not read again: its arrays (float64 where the signature wants float32: twice the
            # tensor) go now rather than after the model has answered, a whole batch wait later.
            doc.clear()
            info.inputs = inputs
            result = await self._service.predict(PredictRequest(
                model=target, inputs=inputs, signature_name=sig_name, timeout_s=self._timeout_s, headers=headers,
                route=route,
            ))
        except SignatureNotFoundError as exc:
            reworded = ServingError(
                Code.INVALID_ARGUMENT, f'Serving signature name: "{exc.signature_name}" not found in signature def'
            )
            reworded.version = exc.version
            raise reworded from None
        info.version, info.signature, info.outputs = result.servable.version, result.signature_name, result.outputs
        if off_loop or sum(t.nbytes for t in result.outputs.values()) >= OFF_LOOP_BYTES:
            return await in_decoder_thread(json_codec.encode_predict, result.outputs, row_format), result.servable
        return json_codec.encode_predict(result.outputs, row_format), result.servable

    async def _examples(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], headers: Mapping[str, str],
        info: RequestInfo, method: str, off_loop: bool,
    ) -> ExamplesRequest:
        if off_loop:
            examples = await in_decoder_thread(json_codec.examples_from_json, doc, method)
        else:
            examples = json_codec.examples_from_json(doc, method)
        info.examples = examples
        return ExamplesRequest(model=target, examples=examples, signature_name=sig_name, timeout_s=self._timeout_s,
                               headers=headers)

    async def _classify(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], headers: Mapping[str, str],
        info: RequestInfo, off_loop: bool,
    ) -> tuple[bytes, ServableId]:
        request = await self._examples(target, sig_name, doc, headers, info, "classify", off_loop)
        result = await self._service.classify(request)
        info.version, info.signature, info.results = result.servable.version, result.signature_name, result.classes
        return json_codec.encode_classify(result.classes), result.servable

    async def _regress(
        self, target: ServableRequest, sig_name: str, doc: dict[str, Any], headers: Mapping[str, str],
        info: RequestInfo, off_loop: bool,
    ) -> tuple[bytes, ServableId]:
        request = await self._examples(target, sig_name, doc, headers, info, "regress", off_loop)
        result = await self._service.regress(request)
        info.version, info.signature, info.results = result.servable.version, result.signature_name, result.values
        return json_codec.encode_regress(result.values), result.servable
