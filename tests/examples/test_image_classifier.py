"""The article's example: train the CNN briefly, export it, serve it, query it over REST and gRPC."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import REPO, RunningServer, model_options, run_server


def load_example(name: str) -> ModuleType:
    path = REPO / "examples" / "image_classifier" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cnn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("models") / "my_model"
    load_example("train_and_export").export_model(str(base), 1, samples=8, epochs=1, verbose=0)
    with run_server(model_options("my_model", base)) as server:
        yield server


def test_metadata_has_the_articles_signature(cnn_server: RunningServer) -> None:
    meta = requests.get(cnn_server.rest_url + "/v1/models/my_model/metadata", timeout=10).json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in sig["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == [-1, 224, 224, 3]
    assert sig["outputs"]["predictions"]["dtype"] == "DT_FLOAT"


def test_rest_and_grpc_agree_on_an_image(cnn_server: RunningServer) -> None:
    images = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    body = json.dumps({"instances": images.tolist()})  # what a TF Serving REST client sends: ~6 MB
    r = requests.post(cnn_server.rest_url + "/v1/models/my_model:predict", data=body, timeout=60)
    assert r.status_code == 200, r.text[:500]
    rest = np.array(r.json()["predictions"], dtype=np.float32)
    assert rest.shape == (2, 10)
    np.testing.assert_allclose(rest.sum(axis=1), 1.0, rtol=1e-4)

    stub = prediction_service_pb2_grpc.PredictionServiceStub(cnn_server.channel())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "my_model"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    response = stub.Predict(request, 60)
    grpc_out = tf.make_ndarray(response.outputs["predictions"])
    np.testing.assert_allclose(grpc_out, rest, rtol=1e-5, atol=1e-6)
    assert response.model_spec.version.value == 1
