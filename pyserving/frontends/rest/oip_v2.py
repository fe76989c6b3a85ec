"""The Open Inference Protocol (KServe V2) over REST (`/v2/...`), for every model whatever its runtime.

Inference goes through InferenceService.predict with the model's serving_default signature (or the one the
request's `signature_name` parameter names), so batching, traffic splits, metrics and request logs treat a V2
request as they treat a TF Serving one. Errors are the protocol's `{"error": "..."}`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

import pyserving
from pyserving.codecs.oip.tensor import (
    InputTensor,
    OutputTensor,
    RequestedOutput,
    decode_inputs,
    output_tensor,
    to_json_data,
    to_raw,
)
from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableRequest
from pyserving.core.service import InferenceService, PredictRequest
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.frontends.oip import (
    EXTENSIONS,
    SERVER_NAME,
    SIGNATURE_PARAMETER,
    UNLOAD_PARAMETERS,
    check_repository_call,
    model_metadata,
    repository_index,
    servable_request,
)
from pyserving.frontends.rest import fast_json
from pyserving.frontends.rest.body import OFF_LOOP_BYTES, check_decoded_size, decoded_body, in_decoder_thread
from pyserving.frontends.rest.errors import http_status
from pyserving.frontends.rest.tfserving_v1 import VERSION_HEADER, decode_part, request_path
from pyserving.malloc import BIG_REQUEST_BYTES, release_free_memory_soon
from pyserving.observability.requests import RequestInfo, RequestObserver, new_request_id
from pyserving.security.auth import current_principal

V2_PATH = re.compile(r"/v2(?:/.*)?", re.S)
MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
"""Group 1 the model (percent-encoded, as sent), 2 the version (digits, or else a version label), 3 the verb;
the auth middleware reads it too."""
REPOSITORY_PATH = re.compile(r"/v2/repository/(?:index|models/([^/]+)/(load|unload))")
"""The model repository extension: group 1 the model (percent-encoded, as sent), 2 the verb (none: the index);
the auth middleware reads it too."""
REPOSITORY_BODY_BYTES = 64 << 10
"""A repository request's body holds a few parameters at most."""
PUBLIC_PATHS = frozenset(("/v2/health/live", "/v2/health/ready"))
HEADER_LENGTH = "inference-header-content-length"
_JSON = "application/json"
log = logging.getLogger("pyserving.rest")


def _headers(request: Request) -> Mapping[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(request.scope["headers"])}


def _invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def _parameters(doc: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _invalid(f"{what}: 'parameters' must be a JSON object")
    return parameters


def _loads(header: bytes) -> Any:
    """The request's JSON as orjson reads it, except that a big all-number `data` comes back as a numpy array
    (fast_json: an image's 3 MB of JSON numbers decode 2x faster flat, 6x nested, and take 8 bytes a number, not a
    Python float's 32). A document with NaN or Infinity, which fast_json accepts and orjson refuses, or one
    fast_json finds malformed is read by orjson: V2 clients are refused what they were, in the same words."""
    if len(header) < fast_json.MIN_FAST_BYTES or _may_hold_nonfinite(header):
        return orjson.loads(header)
    try:
        return fast_json.loads(header)
    except fast_json.JsonParseError:
        return orjson.loads(header)


def _may_hold_nonfinite(body: bytes) -> bool:
    """Whether `body` holds the word NaN or Infinity anywhere (or has too many capitals to say cheaply). Looking
    for the capital is memchr's job; `b"NaN" in body` took 1.9 ms of a 3 MB body, a third of its decode."""
    for word in (b"NaN", b"Infinity"):
        at = body.find(word[:1])
        for _ in range(64):  # ("FP32", "INT64", input names: a few capitals are usual; thousands are not)
            if at < 0:
                break
            if body.startswith(word, at):
                return True
            at = body.find(word[:1], at + 1)
        else:
            return True
    return False


def parse_infer(doc: Any, binary: memoryview) -> tuple[list[InputTensor], list[RequestedOutput], Mapping[str, Any]]:
    """An inference request's JSON (and the binary data after it) as tensors, requested outputs, parameters."""
    if not isinstance(doc, dict):
        raise _invalid("The inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _invalid("The inference request needs 'inputs': a list of {name, shape, datatype, data}")
    inputs, offset = [], 0
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or \
                not isinstance(raw.get("datatype"), str) or "shape" not in raw:
            raise _invalid("Each input needs a 'name', a 'shape' and a 'datatype'")
        tensor = InputTensor(raw["name"], raw["datatype"], raw["shape"])
        size = _parameters(raw, f"input '{tensor.name}'").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise _invalid(f"input '{tensor.name}': binary_data_size {size!r} does not fit the "
                               f"{len(binary) - offset} bytes of binary data left")
            tensor.raw = binary[offset:offset + size]
            offset += size
        elif "data" in raw:
            tensor.data = raw["data"]
        inputs.append(tensor)
    if offset != len(binary):
        raise _invalid(f"{len(binary) - offset} bytes of binary data are not claimed by any input's "
                       "binary_data_size")
    outputs = []
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise _invalid("'outputs' must be a list of {name, parameters}")
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _invalid("Each requested output needs a 'name'")
        binary_flag = _parameters(raw, f"output '{raw['name']}'").get("binary_data")
        outputs.append(RequestedOutput(raw["name"], None if binary_flag is None else bool(binary_flag)))
    return inputs, outputs, _parameters(doc, "The inference request")


def encode_infer(
    tensors: list[OutputTensor], binary: list[bool], head: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    outputs, chunks = [], []
    for t, as_binary in zip(tensors, binary):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        data = None if as_binary else to_json_data(t)
        if data is None:
            chunk = to_raw(t)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = data
        outputs.append(entry)
    header = orjson.dumps({**head, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)


class OipV2:
    """The V2 REST API over the data and control planes."""

    def __init__(
        self,
        service: InferenceService,
        control: ControlPlane,
        *,
        ready: Callable[[], bool],
        timeout_ms: int = 30000,
        extra_headers: Mapping[str, str] | None = None,
        observer: RequestObserver | None = None,
        max_request_bytes: int = 0,
    ) -> None:
        """`ready`: whether the server is ready (every model AVAILABLE and not draining), as /readyz says."""
        self._service = service
        self._control = control
        self._ready = ready
        self._timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self._extra_headers = dict(extra_headers or {})
        self._observer = observer or RequestObserver(None)
        self._max_body = max_request_bytes or None

    def _json(self, doc: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(doc), status_code=status, media_type=_JSON, headers=self._extra_headers)

    def _error(self, exc: ServingError) -> Response:
        return self._json({"error": exc.message}, http_status(exc))

    async def handle(self, request: Request) -> Response:
        """Any request whose path is /v2 or under it."""
        path, method = request_path(request.scope), request.method
        if method == "GET" and path in ("/v2", "/v2/"):
            return self._json({"name": SERVER_NAME, "version": pyserving.__version__, "extensions": EXTENSIONS})
        if method == "GET" and path == "/v2/health/live":
            return Response(b"", status_code=200, headers=self._extra_headers)
        if method == "GET" and path == "/v2/health/ready":
            return Response(b"", status_code=200 if self._ready() else 400, headers=self._extra_headers)
        if method == "POST" and (r := REPOSITORY_PATH.fullmatch(path)):
            return await self._repository(request, decode_part(r.group(1)), r.group(2))
        m = MODEL_PATH.fullmatch(path)
        verb = m.group(3) if m else None
        if m is None or (method == "POST") != (verb == "infer") or method not in ("GET", "POST"):
            return self._json({"error": f"Not found: {method} {path}"}, 404)
        info = RequestInfo(api="", protocol="rest", model=decode_part(m.group(1)) or "",
                           principal=current_principal.get(),
                           request_id=request.headers.get("x-request-id") or new_request_id())
        code = Code.OK
        self._observer.start(info)
        try:
            target = servable_request(info.model, decode_part(m.group(2)))
            if verb == "infer":
                info.api = "predict"
                return await self._infer(request, target, info)
            if verb == "ready":
                info.api = "status"
                return self._model_ready(target)
            info.api = "metadata"
            return self._json(model_metadata(self._service, self._control, target))
        except ServingError as exc:
            code = exc.code
            self._observer.failed(info, exc.version, exc.signature)
            return self._error(exc)
        except ClientDisconnect:
            log.debug("Client went away before sending the whole body of %s %s", method, path)
            code = Code.CANCELLED
            return Response(b"", status_code=400)
        except Exception:
            code = Code.INTERNAL
            raise
        finally:
            self._observer.finish(info, code.name)

    async def _repository(self, request: Request, model: str | None, verb: str | None) -> Response:
        """The model repository extension: POST /v2/repository/index, /v2/repository/models/{model}/load|unload."""
        info = RequestInfo(api="repository", protocol="rest", model=model or "", principal=current_principal.get(),
                           request_id=request.headers.get("x-request-id") or new_request_id())
        code = Code.OK
        self._observer.start(info)
        try:
            raw = await decoded_body(request, min(self._max_body or REPOSITORY_BODY_BYTES, REPOSITORY_BODY_BYTES))
            try:
                doc = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise _invalid(f"The request body is not valid JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise _invalid("The request body must be a JSON object (or empty)")
            if verb is None:
                ready = doc.get("ready", False)
                if not isinstance(ready, bool):
                    raise _invalid("'ready' must be true or false")
                return self._json(await repository_index(self._control, ready))
            assert model is not None
            parameters = _parameters(doc, f"The {verb} request")
            if verb == "unload":
                check_repository_call(model, "", parameters, UNLOAD_PARAMETERS)
                if not isinstance(parameters.get("unload_dependents", False), bool):
                    raise _invalid("Parameter 'unload_dependents' must be true or false")
                await self._control.unload_model(model)
            else:
                check_repository_call(model, "", parameters, frozenset())
                await self._control.load_model(model)
            return Response(b"", status_code=200, headers=self._extra_headers)
        except ServingError as exc:
            code = exc.code
            return self._error(exc)
        except ClientDisconnect:
            code = Code.CANCELLED
            return Response(b"", status_code=400)
        except Exception:
            code = Code.INTERNAL
            raise
        finally:
            self._observer.finish(info, code.name)

    def _model_ready(self, target: ServableRequest) -> Response:
        """200 when the version asked for (or any, when none is) is AVAILABLE; the protocol's 4xx otherwise."""
        version = self._service.resolve_version(target)
        statuses = self._control.status(target.name, version)  # NOT_FOUND for an unknown model or version
        ready = any(s.state == ServableState.AVAILABLE for s in statuses)
        return Response(b"", status_code=200 if ready else 400, headers=self._extra_headers)

    async def _infer(self, request: Request, target: ServableRequest, info: RequestInfo) -> Response:
        raw = await decoded_body(request, self._max_body)
        big = len(raw) >= BIG_REQUEST_BYTES
        try:
            return await self._infer_body(request, raw, target, info)
        finally:
            if big:
                release_free_memory_soon()

    async def _infer_body(self, request: Request, raw: bytes, target: ServableRequest, info: RequestInfo) -> Response:
        announced = request.headers.get(HEADER_LENGTH)
        if announced is not None:
            if not announced.isdigit() or int(announced) > len(raw):
                raise _invalid(f"Inference-Header-Content-Length {announced!r} is not a length within the "
                               f"{len(raw)}-byte body")
            split = int(announced)
        else:
            split = len(raw)
        view = memoryview(raw)
        header = raw if split == len(raw) else bytes(view[:split])  # all JSON: no copy of it
        check_decoded_size(header, self._max_body)
        off_loop = len(raw) >= OFF_LOOP_BYTES
        try:
            doc = await in_decoder_thread(_loads, header) if off_loop else _loads(header)
        except orjson.JSONDecodeError as exc:
            raise _invalid(f"The inference request is not valid JSON: {exc}") from None
        inputs, requested, parameters = parse_infer(doc, view[split:])
        sig_name = parameters.get(SIGNATURE_PARAMETER) or ""
        if not isinstance(sig_name, str):
            raise _invalid(f"Parameter '{SIGNATURE_PARAMETER}' must be a string")
        headers = _headers(request)
        route, sig = self._service.signature(target, sig_name, headers)
        info.version, info.signature = route.servable.version, sig.name
        arrays = (await in_decoder_thread(decode_inputs, inputs, sig, target.name) if off_loop
                  else decode_inputs(inputs, sig, target.name))
        # the document's arrays (float64 where the model wants float32) go now, not after the model answers
        request_id = doc.get("id")
        del doc, inputs
        info.inputs = arrays
        result = await self._service.predict(PredictRequest(
            model=target, inputs=arrays, signature_name=sig_name, output_filter=[o.name for o in requested],
            timeout_s=self._timeout_s, headers=headers, route=route,
        ))
        info.version, info.signature, info.outputs = result.servable.version, result.signature_name, result.outputs
        all_binary = bool(parameters.get("binary_data_output", False))
        names = [o.name for o in requested] or list(result.outputs)
        wanted = {o.name: o.binary for o in requested}
        tensors = [output_tensor(name, result.outputs[name]) for name in names]
        binary = [all_binary if wanted.get(name) is None else bool(wanted[name]) for name in names]
        head: dict[str, Any] = {"model_name": result.servable.name, "model_version": str(result.servable.version)}
        if isinstance(request_id, str):
            head["id"] = request_id
        if off_loop or sum(t.array.nbytes for t in tensors) >= OFF_LOOP_BYTES:
            body, header_length = await in_decoder_thread(encode_infer, tensors, binary, head)
        else:
            body, header_length = encode_infer(tensors, binary, head)
        headers_out = {**self._extra_headers, VERSION_HEADER: str(result.servable.version),
                       "X-Request-Id": info.request_id}
        if header_length is None:
            return Response(body, media_type=_JSON, headers=headers_out)
        headers_out["Inference-Header-Content-Length"] = str(header_length)
        return Response(body, media_type="application/octet-stream", headers=headers_out)
