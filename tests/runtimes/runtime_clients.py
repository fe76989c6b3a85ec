"""TF Serving's clients against a served model, shared by the tests of each runtime (REST with requests, gRPC with
tensorflow_serving.apis stubs), and the helpers that make a freshly written version directory loadable now."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from conftest import RunningServer
from pyserving.runtimes.single_file import SETTLE_S


def settled(version_dir: Path) -> Path:
    """Date the directory's files back past SETTLE_S: written a while ago, so the first poll loads them (the
    settle wait itself is tested once, in test_onnx)."""
    past = time.time() - SETTLE_S - 5
    for path in [version_dir, *version_dir.rglob("*")]:
        os.utime(path, (past, past))
    return version_dir


def rest_predict(server: RunningServer, model: str, body: dict[str, Any], version: int | None = None
                 ) -> requests.Response:
    where = f"{model}/versions/{version}" if version is not None else model
    return requests.post(f"{server.rest_url}/v1/models/{where}:predict", json=body, timeout=30)


def grpc_predict(server: RunningServer, model: str, inputs: dict[str, np.ndarray],
                 signature: str = "") -> dict[str, np.ndarray]:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, 30)
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def grpc_metadata(server: RunningServer, model: str) -> dict[str, Any]:
    """GetModelMetadata's signature_def, as JSON (the shape TF Serving's REST metadata also has)."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, 30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    return json_format.MessageToDict(defs)["signatureDef"]


def rest_metadata(server: RunningServer, model: str) -> dict[str, Any]:
    body = requests.get(f"{server.rest_url}/v1/models/{model}/metadata", timeout=30).json()
    return body["metadata"]["signature_def"]["signature_def"]


def version_status(server: RunningServer, model: str) -> dict[int, tuple[str, str]]:
    body = requests.get(f"{server.rest_url}/v1/models/{model}", timeout=10).json()
    return {int(s["version"]): (s["state"], s["status"].get("error_message", ""))
            for s in body["model_version_status"]}


def wait_for(predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
