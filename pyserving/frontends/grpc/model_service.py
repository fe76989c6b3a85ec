"""tensorflow.serving.ModelService over the control plane: version status and config reloads."""

from __future__ import annotations

import grpc
from google.protobuf import text_format

from pyserving.codecs.tfserving.protos import get_model_status_pb2, model_management_pb2, model_server_config_pb2
from pyserving.core.control import ControlPlane
from pyserving.core.service import InferenceService
from pyserving.errors import Code, ServingError
from pyserving.frontends.grpc.prediction_service import guarded, servable_request
from pyserving.observability.requests import RequestInfo, RequestObserver


class ModelServicer:
    def __init__(
        self, service: InferenceService, control: ControlPlane, observer: RequestObserver | None = None
    ) -> None:
        self._service = service
        self._control = control
        self._observer = observer or RequestObserver(None)

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        async def call(info: RequestInfo) -> get_model_status_pb2.GetModelStatusResponse:
            target = servable_request(request)
            response = get_model_status_pb2.GetModelStatusResponse()
            for status in self._control.status(target.name, self._service.resolve_version(target)):
                out = response.model_version_status.add(version=status.version, state=int(status.state))
                if status.error is not None:
                    out.status.error_code = int(status.error.code)
                    out.status.error_message = status.error.message
            return response

        return await guarded(self._observer, context, "status", request.model_spec.name, call)

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replace the model list. Errors come back in the response's status (as TF Serving does), not as RPC
        errors; the models that were serving keep serving."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            kind = request.config.WhichOneof("config")
            if kind == "custom_model_config":
                raise ServingError(Code.INVALID_ARGUMENT, "custom_model_config is not supported; send a model_config_list.")
            if kind is None:
                return response  # TF Serving: an empty config is a no-op
            await self._control.reload_text(_config_text(request.config))
        except ServingError as exc:
            response.status.error_code = int(exc.code)
            response.status.error_message = exc.message
        return response


def _config_text(config: model_server_config_pb2.ModelServerConfig) -> str:
    """The config as text, per-model `batching_parameters` included: TF Serving's ModelConfig has no such field, so
    the block arrives as an unknown field (1002) that text format would drop; read the bytes with the superset
    schema the config file parser uses (`pyserving batching tune` sends it this way)."""
    from pyserving.config.model_config import model_server_config_schemas

    superset = model_server_config_schemas()[0].FromString(config.SerializeToString())
    return text_format.MessageToString(superset)
