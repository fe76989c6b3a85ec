"""tensorflow.serving.PredictionService over the InferenceService, with TensorFlow-free messages.

The methods are registered under TF Serving's names (`/tensorflow.serving.PredictionService/Predict`) by
`frontends.grpc.server`; the messages are our own classes with TF Serving's field numbers (codecs.tfserving).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc

from pyserving.codecs.tfserving.examples import serialized_examples
from pyserving.codecs.tfserving.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)
from pyserving.codecs.tfserving.protos.services import pack_signature_def_map
from pyserving.codecs.tfserving.results import fill_classifications, fill_regressions
from pyserving.codecs.tfserving.signatures import signature_def_map
from pyserving.codecs.tfserving.tensor import fill_proto, to_ndarray
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.service import (
    Classifications,
    ExamplesRequest,
    InferenceService,
    InferenceTask,
    MultiInferenceRequest,
    PredictRequest,
)
from pyserving.errors import Code, ServingError
from pyserving.frontends.grpc.errors import GRPC_STATUS, grpc_message
from pyserving.malloc import (
    BIG_REQUEST_BYTES, QUIET_TRIM_BYTES, release_free_memory_soon, release_free_memory_when_quiet,
)
from pyserving.observability.requests import RequestInfo, RequestObserver, new_request_id
from pyserving.security.auth import current_principal

T = TypeVar("T")


def servable_request(request: object) -> ServableRequest:
    """What the request's model_spec asks for; a request without one is TF Serving's INVALID_ARGUMENT."""
    if not request.HasField("model_spec"):  # type: ignore[attr-defined]
        raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    return spec_request(request.model_spec)  # type: ignore[attr-defined]


def spec_request(spec: model_pb2.ModelSpec) -> ServableRequest:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return ServableRequest(spec.name, spec.version.value)
    if choice == "version_label":
        return ServableRequest(spec.name, label=spec.version_label)
    return ServableRequest(spec.name)


def fill_model_spec(out: model_pb2.ModelSpec, servable: ServableId, signature_name: str | None) -> None:
    out.name = servable.name
    out.version.value = servable.version
    if signature_name is not None:
        out.signature_name = signature_name


async def guarded(
    observer: RequestObserver, context: grpc.aio.ServicerContext, api: str, model: str,
    call: Callable[[RequestInfo], Awaitable[T]],
) -> T:
    """Run one RPC body, counted and timed; a ServingError becomes its gRPC status with TF Serving's message
    truncation."""
    info = RequestInfo(api=api, protocol="grpc", model=model, request_id=new_request_id(),
                       principal=current_principal.get())
    code = Code.OK
    observer.start(info)
    try:
        return await call(info)
    except ServingError as exc:
        code = exc.code
        observer.failed(info, exc.version, exc.signature)
        await context.abort(GRPC_STATUS[exc.code], grpc_message(exc.message))
        raise  # unreachable: abort raises
    except asyncio.CancelledError:
        code = Code.CANCELLED
        raise
    except Exception:
        code = Code.INTERNAL
        raise
    finally:
        observer.finish(info, code.name)


def headers(context: grpc.aio.ServicerContext) -> Mapping[str, str]:
    """The request metadata by (lower-case) key, for sticky traffic splits; a repeated key counts by its first
    value."""
    return {
        key: value if isinstance(value, str) else value.decode("utf-8", "replace")
        for key, value in reversed(context.invocation_metadata() or ())
    }


def timeout_s(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as seconds left (None: no deadline)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    if remaining <= 0:
        raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline exceeded before the request could be served.")
    return remaining


class PredictionServicer:
    """One coroutine per PredictionService method, named as TF Serving names them."""

    def __init__(
        self, service: InferenceService, *, tensor_content: bool = False, observer: RequestObserver | None = None,
        max_decoded_bytes: int | None = None,
    ) -> None:
        """`max_decoded_bytes` bounds each input tensor as decoded (--max_request_bytes), not only on the wire."""
        self._service = service
        self._max_decoded_bytes = max_decoded_bytes
        self._tensor_content = tensor_content
        self._observer = observer or RequestObserver(None)

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> predict_pb2.PredictResponse:
        async def call(info: RequestInfo) -> predict_pb2.PredictResponse:
            limit = self._max_decoded_bytes
            size = request.ByteSize()  # computed in C by upb: ~1 us for a small request
            if size >= QUIET_TRIM_BYTES:
                release_free_memory_when_quiet()
                if size >= BIG_REQUEST_BYTES:
                    release_free_memory_soon()  # once this call is over
            inputs = {alias: to_ndarray(alias, proto, max_bytes=limit) for alias, proto in request.inputs.items()}
            info.inputs = inputs
            result = await self._service.predict(PredictRequest(
                model=servable_request(request),
                inputs=inputs,
                signature_name=request.model_spec.signature_name,
                output_filter=list(request.output_filter),
                timeout_s=timeout_s(context),
                headers=headers(context),
            ))
            info.version, info.signature, info.outputs = result.servable.version, result.signature_name, result.outputs
            response = predict_pb2.PredictResponse()
            fill_model_spec(response.model_spec, result.servable, result.signature_name)
            for alias, array in result.outputs.items():
                fill_proto(response.outputs[alias], array, tensor_content=self._tensor_content)
            return response

        return await guarded(self._observer, context, "predict", request.model_spec.name, call)

    def _examples_request(self, request: object, context: grpc.aio.ServicerContext, info: RequestInfo) -> ExamplesRequest:
        examples = serialized_examples(request.input)  # type: ignore[attr-defined]
        info.examples = examples
        return ExamplesRequest(
            model=servable_request(request),
            examples=examples,
            signature_name=request.model_spec.signature_name,  # type: ignore[attr-defined]
            timeout_s=timeout_s(context),
            headers=headers(context),
        )

    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        async def call(info: RequestInfo) -> classification_pb2.ClassificationResponse:
            result = await self._service.classify(self._examples_request(request, context, info))
            info.version, info.signature, info.results = result.servable.version, result.signature_name, result.classes
            response = classification_pb2.ClassificationResponse()
            fill_model_spec(response.model_spec, result.servable, result.signature_name)
            fill_classifications(response.result, result.classes)
            return response

        return await guarded(self._observer, context, "classify", request.model_spec.name, call)

    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        async def call(info: RequestInfo) -> regression_pb2.RegressionResponse:
            result = await self._service.regress(self._examples_request(request, context, info))
            info.version, info.signature, info.results = result.servable.version, result.signature_name, result.values
            response = regression_pb2.RegressionResponse()
            fill_model_spec(response.model_spec, result.servable, result.signature_name)
            fill_regressions(response.result, result.values)
            return response

        return await guarded(self._observer, context, "regress", request.model_spec.name, call)

    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        async def call(info: RequestInfo) -> inference_pb2.MultiInferenceResponse:
            if not request.tasks:
                raise ServingError(Code.INVALID_ARGUMENT, "MultiInferenceRequest has no tasks. Add at least one task.")
            first = request.tasks[0].model_spec
            for task in request.tasks:
                if task.model_spec.name != first.name:
                    raise ServingError(
                        Code.INVALID_ARGUMENT,
                        "All ModelSpecs in a MultiInferenceRequest must access the same model name "
                        f"(got {first.name!r} and {task.model_spec.name!r}).",
                    )
            examples = serialized_examples(request.input)
            info.examples = examples
            info.results = [(t.model_spec.signature_name, t.method_name, None) for t in request.tasks]
            result = await self._service.multi_inference(MultiInferenceRequest(
                model=spec_request(first),
                tasks=[InferenceTask(t.model_spec.signature_name, t.method_name) for t in request.tasks],
                examples=examples,
                timeout_s=timeout_s(context),
                headers=headers(context),
            ))
            info.version = result.servable.version
            info.results = [
                (answer.signature_name, task.method_name,
                 answer.classes if isinstance(answer, Classifications) else answer.values)
                for task, answer in zip(request.tasks, result.results)
            ]
            response = inference_pb2.MultiInferenceResponse()
            for task, answer in zip(request.tasks, result.results):
                out = response.results.add()
                fill_model_spec(out.model_spec, result.servable, task.model_spec.signature_name)
                if isinstance(answer, Classifications):
                    fill_classifications(out.classification_result, answer.classes)
                else:
                    fill_regressions(out.regression_result, answer.values)
            return response

        model = request.tasks[0].model_spec.name if request.tasks else ""
        return await guarded(self._observer, context, "multi_inference", model, call)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        async def call(info: RequestInfo) -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.metadata_field:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field (use \"signature_def\").",
                )
            for field in request.metadata_field:
                if field != "signature_def":
                    raise ServingError(
                        Code.INVALID_ARGUMENT, f"Metadata field {field} is not supported. Ask for \"signature_def\"."
                    )
            metadata = self._service.metadata(servable_request(request))
            info.version = metadata.servable.version
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            fill_model_spec(response.model_spec, metadata.servable, None)
            packed = pack_signature_def_map(signature_def_map(metadata.signatures))
            for field in request.metadata_field:
                response.metadata[field].CopyFrom(packed)
            return response

        return await guarded(self._observer, context, "metadata", request.model_spec.name, call)
