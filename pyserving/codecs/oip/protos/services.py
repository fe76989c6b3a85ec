"""The Open Inference Protocol's gRPC service, spelled out against our message classes (see the .proto for why
its package is ours)."""

from __future__ import annotations

from pyserving.codecs.oip.protos.grpc_predict_v2_pb2 import (
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    RepositoryIndexRequest,
    RepositoryIndexResponse,
    RepositoryModelLoadRequest,
    RepositoryModelLoadResponse,
    RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from pyserving.codecs.tfserving.protos.services import MethodTypes

INFERENCE_SERVICE = "inference.GRPCInferenceService"
INFERENCE_METHODS: MethodTypes = {
    "ServerLive": (ServerLiveRequest, ServerLiveResponse),
    "ServerReady": (ServerReadyRequest, ServerReadyResponse),
    "ModelReady": (ModelReadyRequest, ModelReadyResponse),
    "ServerMetadata": (ServerMetadataRequest, ServerMetadataResponse),
    "ModelMetadata": (ModelMetadataRequest, ModelMetadataResponse),
    "ModelInfer": (ModelInferRequest, ModelInferResponse),
    "RepositoryIndex": (RepositoryIndexRequest, RepositoryIndexResponse),
    "RepositoryModelLoad": (RepositoryModelLoadRequest, RepositoryModelLoadResponse),
    "RepositoryModelUnload": (RepositoryModelUnloadRequest, RepositoryModelUnloadResponse),
}
