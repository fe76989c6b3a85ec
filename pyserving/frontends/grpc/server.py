"""The gRPC listener: one grpc.aio server owning its sockets (TCP and UNIX), serving TF Serving's services by
their names through generic handlers over our TensorFlow-free messages. Everything that guards the gRPC door
(credentials, interceptors) belongs here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from pyserving.codecs.oip.protos.services import INFERENCE_METHODS, INFERENCE_SERVICE
from pyserving.codecs.tfserving.protos.services import MODEL_METHODS, MODEL_SERVICE, PREDICTION_METHODS, PREDICTION_SERVICE, MethodTypes
from pyserving.errors import Code, StartupError
from pyserving.frontends.grpc.errors import GRPC_STATUS
from pyserving.options import TlsOptions
from pyserving.security.auth import ADMIN, ANY, METADATA, PREDICT, AuthError, Authenticator, credential_from, \
    current_principal

log = logging.getLogger("pyserving.server")

HEALTH_SERVICE_NAMES = ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService",
                        "ModelService", "PredictionService")
"""TF Serving registers these as SERVING in grpc.health.v1 at start-up, statically."""


ACTIONS: dict[str, str | None] = {
    "Predict": PREDICT, "Classify": PREDICT, "Regress": PREDICT, "MultiInference": PREDICT,
    "GetModelMetadata": METADATA, "GetModelStatus": METADATA, "HandleReloadConfigRequest": ADMIN,
    # the Open Inference Protocol's: liveness and readiness are probes, public like REST's /healthz and /readyz
    "ServerLive": None, "ServerReady": None, "ServerMetadata": ANY,
    "ModelReady": METADATA, "ModelMetadata": METADATA, "ModelInfer": PREDICT,
    # its model repository extension: the index covers every model; a load or unload the one it names
    "RepositoryIndex": ADMIN, "RepositoryModelLoad": ADMIN, "RepositoryModelUnload": ADMIN,
}
"""What each method needs in the caller's scopes (--auth_config_file); None: nothing (public)."""


def _model_of(request: Any, action: str) -> str | None:
    if action == ADMIN:
        # a repository load or unload acts on one model; a reload replaces every model's configuration, and the
        # repository index shows them all
        return request.model_name if hasattr(request, "model_name") else None
    if action == ANY:
        return None  # server metadata names no model
    if hasattr(request, "tasks"):
        return request.tasks[0].model_spec.name if request.tasks else ""
    if hasattr(request, "model_spec"):
        return request.model_spec.name
    return request.model_name if hasattr(request, "model_name") else request.name  # Open Inference Protocol


def guarded(behavior: Any, action: str, authenticator: Authenticator) -> Any:
    """`behavior` run only for callers the Authenticator lets do `action` on the request's model."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = {k: v for k, v in reversed(context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            credential = credential_from(metadata.get("authorization"), metadata.get("x-api-key"))
            principal = authenticator.check(credential, _model_of(request, action), action)
        except AuthError as exc:
            if exc.code == Code.RESOURCE_EXHAUSTED:
                context.set_trailing_metadata((("retry-after", f"{exc.retry_after_s:.3f}"),))
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        token = current_principal.set(principal.name if principal is not None else "")
        try:
            return await behavior(request, context)
        finally:
            current_principal.reset(token)

    return call


def generic_handler(service_name: str, methods: MethodTypes, servicer: object,
                    authenticator: Authenticator | None = None) -> grpc.GenericRpcHandler:
    """Unary-unary handlers for `servicer`'s coroutines, named `/{service_name}/{method}`; each checks the caller
    first when there is an `authenticator`."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            guarded(getattr(servicer, name), action, authenticator)
            if authenticator is not None and (action := ACTIONS[name]) is not None else getattr(servicer, name),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service_name, handlers)


class GrpcListener:
    """Serves the PredictionService and ModelService servicers (and the Open Inference Protocol's
    GRPCInferenceService, when given) on `host:port` (0: none) and a UNIX socket."""

    def __init__(
        self,
        prediction: object,
        model: object,
        *,
        host: str,
        port: int,
        socket_path: str = "",
        options: Sequence[tuple[str, Any]] = (),
        health: bool = False,
        tls: TlsOptions | None = None,
        authenticator: Authenticator | None = None,
        inference: object | None = None,
    ) -> None:
        self._prediction = prediction
        self._inference = inference
        self._model = model
        self._host = host
        self._port = port
        self._socket_path = socket_path
        self._options = list(options)
        self._health = health
        self._tls = tls
        self._authenticator = authenticator
        self._server: grpc.aio.Server | None = None
        self._health_servicer: Any = None
        self.port: int | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=self._options)
        server.add_generic_rpc_handlers((
            generic_handler(PREDICTION_SERVICE, PREDICTION_METHODS, self._prediction, self._authenticator),
            generic_handler(MODEL_SERVICE, MODEL_METHODS, self._model, self._authenticator),
            *([generic_handler(INFERENCE_SERVICE, INFERENCE_METHODS, self._inference, self._authenticator)]
              if self._inference is not None else []),
        ))
        if self._health:
            from grpc_health.v1 import health as grpc_health
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            servicer = grpc_health.aio.HealthServicer()
            for name in HEALTH_SERVICE_NAMES:
                await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            self._health_servicer = servicer
        if self._port:
            address = f"{self._host}:{self._port}"
            try:
                self.port = self._add_port(server, address)
            except RuntimeError as exc:
                raise StartupError(f"Cannot listen for gRPC on {address}: {exc}. Is the port in use? Pick another "
                                   "with --port.") from None
        if self._socket_path:
            self._add_port(server, f"unix:{self._socket_path}")
        await server.start()
        self._server = server
        log.info("Running gRPC ModelServer at %s:%s%s", self._host, self.port,
                 f" and unix:{self._socket_path}" if self._socket_path else "")

    def _add_port(self, server: grpc.aio.Server, address: str) -> int:
        """TLS on every gRPC address when configured, as TF Serving does (TCP and UNIX socket)."""
        if self._tls is None:
            return server.add_insecure_port(address)
        tls = self._tls
        credentials = grpc.ssl_server_credentials(
            [(tls.server_key.encode(), tls.server_cert.encode())],
            root_certificates=tls.custom_ca.encode() if tls.custom_ca else None,
            require_client_auth=tls.client_verify,
        )
        return server.add_secure_port(address, credentials)

    async def drain(self) -> None:
        """Keep serving, but tell health checkers (grpc.health.v1 Check and Watch) NOT_SERVING from now on."""
        if self._health_servicer is not None:
            await self._health_servicer.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let in-flight calls finish for up to `grace_s`."""
        if self._server is not None:
            await self._server.stop(grace_s)
