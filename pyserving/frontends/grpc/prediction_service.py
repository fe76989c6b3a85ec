"""tensorflow.serving.PredictionService and ModelService on grpc.aio, over the InferenceService."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.request_info import RequestInfo
from pyserving.core.service import Classifications, InferenceService, InferenceTask, Regressions
from pyserving.errors import Code, ServingError
from pyserving.serving_input import serialized_examples
from pyserving.frontends.grpc.errors import GRPC_STATUS, grpc_message
from pyserving.frontends.grpc.tensor_codec import to_ndarray, to_proto
from pyserving.observability.requests import RequestObserver, new_request_id
from pyserving.options import ModelConfig

T = TypeVar("T")


def servable_request(request: Any) -> ServableRequest:
    """What the request's model_spec asks for; a request without one is TF Serving's INVALID_ARGUMENT."""
    if not request.HasField("model_spec"):
        raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    return spec_request(request.model_spec)


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


async def _guarded(
    observer: RequestObserver, context: grpc.aio.ServicerContext, api: str, model: str,
    call: Callable[[RequestInfo], Awaitable[T]],
) -> T:
    """Run one RPC body, counted and timed; a ServingError becomes its gRPC status with TF Serving's message
    truncation."""
    info = RequestInfo(api=api, protocol="grpc", model=model, request_id=new_request_id())
    code = Code.OK
    observer.start(info)
    try:
        return await call(info)
    except ServingError as exc:
        code = exc.code
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


def _routing_key(context: grpc.aio.ServicerContext) -> Callable[[str], str | None]:
    """Reads one request metadata value (gRPC keys are lower-case), for sticky traffic splits."""
    def value(name: str) -> str | None:
        for key, item in context.invocation_metadata() or ():
            if key == name:
                return item if isinstance(item, str) else item.decode("utf-8", "replace")
        return None

    return value


def _timeout_s(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as seconds left (None: no deadline)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    if remaining <= 0:
        raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline exceeded before the request could be served.")
    return remaining


def _fill_classifications(out: classification_pb2.ClassificationResult, result: Classifications) -> None:
    for row in result.classes:
        classification = out.classifications.add()
        for label, score in row:
            classification.classes.add(label=label.decode("utf-8", errors="replace"), score=score)


def _fill_regressions(out: regression_pb2.RegressionResult, result: Regressions) -> None:
    for value in result.values:
        out.regressions.add(value=value)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self, service: InferenceService, *, tensor_content: bool = False, observer: RequestObserver | None = None
    ) -> None:
        self._service = service
        self._tensor_content = tensor_content
        self._observer = observer or RequestObserver(None)

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(info: RequestInfo) -> predict_pb2.PredictResponse:
            inputs = {alias: to_ndarray(alias, proto) for alias, proto in request.inputs.items()}
            result = await self._service.predict(
                servable_request(request),
                request.model_spec.signature_name,
                inputs,
                output_filter=list(request.output_filter),
                timeout_s=_timeout_s(context),
                routing_key=_routing_key(context),
                info=info,
            )
            response = predict_pb2.PredictResponse()
            fill_model_spec(response.model_spec, result.servable, result.signature_name)
            for alias, array in result.outputs.items():
                response.outputs[alias].CopyFrom(to_proto(array, tensor_content=self._tensor_content))
            return response

        return await _guarded(self._observer, context, "predict", request.model_spec.name, call)

    async def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(info: RequestInfo) -> classification_pb2.ClassificationResponse:
            result = await self._service.classify(
                servable_request(request),
                request.model_spec.signature_name,
                serialized_examples(request.input),
                timeout_s=_timeout_s(context),
                routing_key=_routing_key(context),
                info=info,
            )
            response = classification_pb2.ClassificationResponse()
            fill_model_spec(response.model_spec, result.servable, result.signature_name)
            _fill_classifications(response.result, result)
            return response

        return await _guarded(self._observer, context, "classify", request.model_spec.name, call)

    async def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(info: RequestInfo) -> regression_pb2.RegressionResponse:
            result = await self._service.regress(
                servable_request(request),
                request.model_spec.signature_name,
                serialized_examples(request.input),
                timeout_s=_timeout_s(context),
                routing_key=_routing_key(context),
                info=info,
            )
            response = regression_pb2.RegressionResponse()
            fill_model_spec(response.model_spec, result.servable, result.signature_name)
            _fill_regressions(response.result, result)
            return response

        return await _guarded(self._observer, context, "regress", request.model_spec.name, call)

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext) -> Any:
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
            servable, results = await self._service.multi_inference(
                spec_request(first),
                [InferenceTask(t.model_spec.signature_name, t.method_name) for t in request.tasks],
                serialized_examples(request.input),
                timeout_s=_timeout_s(context),
                routing_key=_routing_key(context),
                info=info,
            )
            response = inference_pb2.MultiInferenceResponse()
            for task, result in zip(request.tasks, results):
                out = response.results.add()
                fill_model_spec(out.model_spec, servable, task.model_spec.signature_name)
                if isinstance(result, Classifications):
                    _fill_classifications(out.classification_result, result)
                else:
                    _fill_regressions(out.regression_result, result)
            return response

        return await _guarded(self._observer, context, "multi_inference", request.tasks[0].model_spec.name if request.tasks else "", call)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
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
            servable, metadata = self._service.metadata(servable_request(request), info)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            fill_model_spec(response.model_spec, servable, None)
            for field in request.metadata_field:
                packed = any_pb2.Any()
                packed.Pack(metadata[field])
                response.metadata[field].CopyFrom(packed)
            return response

        return await _guarded(self._observer, context, "metadata", request.model_spec.name, call)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        service: InferenceService,
        config_parser: Callable[[str], Sequence[ModelConfig]] | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._service = service
        self._config_parser = config_parser
        self._observer = observer or RequestObserver(None)

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call(info: RequestInfo) -> get_model_status_pb2.GetModelStatusResponse:
            target = servable_request(request)
            version = target.version
            if target.label is not None:
                with self._service.manager.lease(target) as lease:
                    version = lease.id.version
            response = get_model_status_pb2.GetModelStatusResponse()
            for status in self._service.status(target.name, version):
                out = response.model_version_status.add(version=status.version, state=int(status.state))
                if status.error is not None:
                    out.status.error_code = int(status.error.code)
                    out.status.error_message = status.error.message
            return response

        return await _guarded(self._observer, context, "status", request.model_spec.name, call)

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Replace the model list. Errors come back in the response's status (as TF Serving does), not as RPC
        errors; the models that were serving keep serving."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            kind = request.config.WhichOneof("config")
            if kind == "custom_model_config":
                raise ServingError(Code.INVALID_ARGUMENT, "custom_model_config is not supported; send a model_config_list.")
            if kind is None:
                return response  # TF Serving: an empty config is a no-op
            if self._config_parser is None:
                raise ServingError(Code.UNIMPLEMENTED, "This server cannot parse model configurations.")
            try:
                models = self._config_parser(text_format.MessageToString(request.config))
            except ValueError as exc:
                raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
            await self._service.reload_config(models)
        except ServingError as exc:
            response.status.error_code = int(exc.code)
            response.status.error_message = exc.message
        return response


async def add_services(
    server: grpc.aio.Server,
    service: InferenceService,
    *,
    tensor_content: bool = False,
    health: bool = False,
    config_parser: Callable[[str], Sequence[ModelConfig]] | None = None,
    observer: RequestObserver | None = None,
) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(service, tensor_content=tensor_content, observer=observer), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(service, config_parser, observer), server
    )
    if health:
        # TF Serving registers both services as SERVING at start-up, statically.
        from grpc_health.v1 import health as grpc_health
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        servicer = grpc_health.aio.HealthServicer()
        for name in ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService",
                     "ModelService", "PredictionService"):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
