"""TF Serving's gRPC services, spelled out against our TensorFlow-free message classes.

The .proto files here deliberately declare no ``service`` blocks: their package is
``pyserving.tfs``, but clients call ``/tensorflow.serving.PredictionService/Predict``.
Front ends register these names with ``grpc.method_handlers_generic_handler`` and
use the (request, response) classes for (de)serialisation.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from pyserving.codecs.tfserving.protos.classification_pb2 import ClassificationRequest, ClassificationResponse
from pyserving.codecs.tfserving.protos.get_model_metadata_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    SignatureDefMap,
)
from pyserving.codecs.tfserving.protos.get_model_status_pb2 import GetModelStatusRequest, GetModelStatusResponse
from pyserving.codecs.tfserving.protos.inference_pb2 import MultiInferenceRequest, MultiInferenceResponse
from pyserving.codecs.tfserving.protos.model_management_pb2 import ReloadConfigRequest, ReloadConfigResponse
from pyserving.codecs.tfserving.protos.predict_pb2 import PredictRequest, PredictResponse
from pyserving.codecs.tfserving.protos.regression_pb2 import RegressionRequest, RegressionResponse

MethodTypes = dict[str, tuple[type[Message], type[Message]]]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
PREDICTION_METHODS: MethodTypes = {
    "Classify": (ClassificationRequest, ClassificationResponse),
    "Regress": (RegressionRequest, RegressionResponse),
    "Predict": (PredictRequest, PredictResponse),
    "MultiInference": (MultiInferenceRequest, MultiInferenceResponse),
    "GetModelMetadata": (GetModelMetadataRequest, GetModelMetadataResponse),
}

MODEL_SERVICE = "tensorflow.serving.ModelService"
MODEL_METHODS: MethodTypes = {
    "GetModelStatus": (GetModelStatusRequest, GetModelStatusResponse),
    "HandleReloadConfigRequest": (ReloadConfigRequest, ReloadConfigResponse),
}

SERVICES: dict[str, MethodTypes] = {
    PREDICTION_SERVICE: PREDICTION_METHODS,
    MODEL_SERVICE: MODEL_METHODS,
}

# Clients (and TF Serving's own tooling) Unpack GetModelMetadataResponse.metadata
# ["signature_def"] by TF Serving's type name, so Any.Pack -- which would write
# "pyserving.tfs.SignatureDefMap" -- must not be used with our classes.
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def pack_signature_def_map(signature_def_map: SignatureDefMap) -> any_pb2.Any:
    """Wrap a SignatureDefMap in an Any exactly as TF Serving does."""
    return any_pb2.Any(
        type_url=SIGNATURE_DEF_MAP_TYPE_URL,
        value=signature_def_map.SerializeToString(deterministic=True),
    )


def unpack_signature_def_map(packed: any_pb2.Any) -> SignatureDefMap:
    """Read a SignatureDefMap out of an Any packed by TF Serving (or by pack_signature_def_map)."""
    if packed.type_url.rsplit("/", 1)[-1] != SIGNATURE_DEF_MAP_TYPE_URL.rsplit("/", 1)[-1]:
        raise ValueError(f"expected a tensorflow.serving.SignatureDefMap, got type_url {packed.type_url!r}")
    return SignatureDefMap.FromString(packed.value)
