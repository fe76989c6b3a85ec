"""The gRPC listener: one grpc.aio server owning its sockets (TCP and UNIX), serving TF Serving's services by
their names through generic handlers over our TensorFlow-free messages. Everything that guards the gRPC door
(credentials, interceptors) belongs here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from pyserving.codecs.tfserving.protos.services import MODEL_METHODS, MODEL_SERVICE, PREDICTION_METHODS, PREDICTION_SERVICE, MethodTypes
from pyserving.errors import StartupError

log = logging.getLogger("pyserving.server")

HEALTH_SERVICE_NAMES = ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService",
                        "ModelService", "PredictionService")
"""TF Serving registers these as SERVING in grpc.health.v1 at start-up, statically."""


def generic_handler(service_name: str, methods: MethodTypes, servicer: object) -> grpc.GenericRpcHandler:
    """Unary-unary handlers for `servicer`'s coroutines, named `/{service_name}/{method}`."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service_name, handlers)


class GrpcListener:
    """Serves the PredictionService and ModelService servicers on `host:port` (0: none) and a UNIX socket."""

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
    ) -> None:
        self._prediction = prediction
        self._model = model
        self._host = host
        self._port = port
        self._socket_path = socket_path
        self._options = list(options)
        self._health = health
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=self._options)
        server.add_generic_rpc_handlers((
            generic_handler(PREDICTION_SERVICE, PREDICTION_METHODS, self._prediction),
            generic_handler(MODEL_SERVICE, MODEL_METHODS, self._model),
        ))
        if self._health:
            from grpc_health.v1 import health as grpc_health
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            servicer = grpc_health.aio.HealthServicer()
            for name in HEALTH_SERVICE_NAMES:
                await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        if self._port:
            address = f"{self._host}:{self._port}"
            try:
                self.port = server.add_insecure_port(address)
            except RuntimeError as exc:
                raise StartupError(f"Cannot listen for gRPC on {address}: {exc}. Is the port in use? Pick another "
                                   "with --port.") from None
        if self._socket_path:
            server.add_insecure_port(f"unix:{self._socket_path}")
        await server.start()
        self._server = server
        log.info("Running gRPC ModelServer at %s:%s%s", self._host, self.port,
                 f" and unix:{self._socket_path}" if self._socket_path else "")

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let in-flight calls finish for up to `grace_s`."""
        if self._server is not None:
            await self._server.stop(grace_s)
