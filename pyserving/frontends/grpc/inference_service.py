"""The Open Inference Protocol's gRPC service (`/inference.GRPCInferenceService/...`) over the InferenceService.

ModelInfer runs the model's serving_default signature (or the one the `signature_name` parameter names) through
InferenceService.predict, like TF Serving's Predict: batching, splits, metrics and request logs apply alike.
Outputs always go back as `raw_output_contents`, as Triton sends them; clients read both forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

import pyserving
from pyserving.codecs.oip.protos import grpc_predict_v2_pb2 as pb
from pyserving.codecs.oip.tensor import InputTensor, decode_inputs, output_tensor, to_raw
from pyserving.core.control import ControlPlane
from pyserving.core.service import InferenceService, PredictRequest
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.frontends.grpc.prediction_service import guarded, headers, timeout_s
from pyserving.frontends.oip import (
    EXTENSIONS,
    SERVER_NAME,
    SIGNATURE_PARAMETER,
    UNLOAD_PARAMETERS,
    check_repository_call,
    check_repository_name,
    model_metadata,
    repository_index,
    servable_request,
)
from pyserving.observability.requests import RequestInfo, RequestObserver

CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
"""Where InferTensorContents holds each datatype (FP16 and BF16 have no field: they travel raw)."""


def _parameter(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _repository_parameters(parameters: Any) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in parameters.items()}


def _inputs(request: pb.ModelInferRequest) -> list[InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ServingError(Code.INVALID_ARGUMENT, f"raw_input_contents holds {len(raw)} tensors for "
                           f"{len(request.inputs)} inputs: send raw data for every input or for none")
    tensors = []
    for i, proto in enumerate(request.inputs):
        tensor = InputTensor(proto.name, proto.datatype, list(proto.shape))
        if raw:
            tensor.raw = raw[i]
        else:
            field = CONTENTS_FIELDS.get(proto.datatype)
            if field is not None:
                tensor.data = list(getattr(proto.contents, field))
            elif proto.datatype in ("FP16", "BF16"):
                raise ServingError(Code.INVALID_ARGUMENT, f"input '{proto.name}' is {proto.datatype}: send it in "
                                   "raw_input_contents")
            else:
                tensor.data = []  # an unknown datatype: decode_inputs names it
        tensors.append(tensor)
    return tensors


class InferenceServicer:
    """One coroutine per GRPCInferenceService method, named as the protocol names them."""

    def __init__(
        self, service: InferenceService, control: ControlPlane, *, ready: Callable[[], bool],
        observer: RequestObserver | None = None,
    ) -> None:
        self._service = service
        self._control = control
        self._ready = ready
        self._observer = observer or RequestObserver(None)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=pyserving.__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def call(info: RequestInfo) -> pb.ModelReadyResponse:
            target = servable_request(request.name, request.version)
            try:
                statuses = self._control.status(target.name, self._service.resolve_version(target))
            except ServingError as exc:
                if exc.code != Code.NOT_FOUND:
                    raise
                return pb.ModelReadyResponse(ready=False)  # the question has an answer: not ready
            return pb.ModelReadyResponse(ready=any(s.state == ServableState.AVAILABLE for s in statuses))

        return await guarded(self._observer, context, "status", request.name, call)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async def call(info: RequestInfo) -> pb.ModelMetadataResponse:
            meta = model_metadata(self._service, self._control, servable_request(request.name, request.version))
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        return await guarded(self._observer, context, "metadata", request.name, call)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def call(info: RequestInfo) -> pb.ModelInferResponse:
            target = servable_request(request.model_name, request.model_version)
            if not request.inputs:
                raise ServingError(Code.INVALID_ARGUMENT, "The inference request has no inputs")
            sig_name = ""
            if SIGNATURE_PARAMETER in request.parameters:
                sig_name = _parameter(request.parameters[SIGNATURE_PARAMETER])
                if not isinstance(sig_name, str):
                    raise ServingError(Code.INVALID_ARGUMENT, f"Parameter '{SIGNATURE_PARAMETER}' must be a string")
            call_headers = headers(context)
            route, sig = self._service.signature(target, sig_name, call_headers)
            info.version, info.signature = route.servable.version, sig.name
            arrays = decode_inputs(_inputs(request), sig, target.name)
            info.inputs = arrays
            wanted = [o.name for o in request.outputs]
            result = await self._service.predict(PredictRequest(
                model=target, inputs=arrays, signature_name=sig_name, output_filter=wanted,
                timeout_s=timeout_s(context), headers=call_headers, route=route,
            ))
            info.version, info.signature, info.outputs = result.servable.version, result.signature_name, result.outputs
            response = pb.ModelInferResponse(model_name=result.servable.name,
                                             model_version=str(result.servable.version), id=request.id)
            for name in wanted or list(result.outputs):
                tensor = output_tensor(name, result.outputs[name])
                response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
                response.raw_output_contents.append(to_raw(tensor))
            return response

        return await guarded(self._observer, context, "predict", request.model_name, call)

    # --- the model repository extension ---------------------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        async def call(info: RequestInfo) -> pb.RepositoryIndexResponse:
            check_repository_name(request.repository_name)
            entries = await repository_index(self._control, request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])

        return await guarded(self._observer, context, "repository", "", call)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        async def call(info: RequestInfo) -> pb.RepositoryModelLoadResponse:
            check_repository_call(request.model_name, request.repository_name,
                                  _repository_parameters(request.parameters), frozenset())
            await self._control.load_model(request.model_name, timeout_s(context))
            return pb.RepositoryModelLoadResponse()

        return await guarded(self._observer, context, "repository", request.model_name, call)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        async def call(info: RequestInfo) -> pb.RepositoryModelUnloadResponse:
            parameters = _repository_parameters(request.parameters)
            check_repository_call(request.model_name, request.repository_name, parameters, UNLOAD_PARAMETERS)
            if not isinstance(parameters.get("unload_dependents", False), bool):
                raise ServingError(Code.INVALID_ARGUMENT, "Parameter 'unload_dependents' must be a bool_param")
            await self._control.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await guarded(self._observer, context, "repository", request.model_name, call)
