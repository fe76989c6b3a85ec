"""TF Serving's own test models over gRPC with the generated stubs give TF Serving's answers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pathlib import Path

from conftest import RunningServer

TIMEOUT = 30


@pytest.fixture(params=["tf1", "tf2"])
def server(request: pytest.FixtureRequest) -> RunningServer:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def stub(server: RunningServer) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel())


def example_input(request: object, x: float = 2.0) -> None:
    example = request.input.example_list.examples.add()  # type: ignore[attr-defined]
    example.features.feature["x"].float_list.value.extend([x])


def test_predict(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
    request.output_filter.append("y")
    response = stub.Predict(request, TIMEOUT)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0]
    assert response.outputs["y"].dtype == tf.float32.as_datatype_enum
    assert response.model_spec.name == "default"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_classify(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    example_input(request)
    response = stub.Classify(request, TIMEOUT)
    assert len(response.result.classifications) == 1
    assert len(response.result.classifications[0].classes) == 1
    assert response.result.classifications[0].classes[0].score == 3.0
    assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
        "default", 123, "classify_x_to_y")


def test_regress(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    example_input(request)
    response = stub.Regress(request, TIMEOUT)
    assert [r.value for r in response.result.regressions] == [3.0]
    assert response.model_spec.version.value == 123


def test_multi_inference(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for sig, method in (("regress_x_to_y", "tensorflow/serving/regress"), ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = sig
        task.method_name = method
    example_input(request)
    response = stub.MultiInference(request, TIMEOUT)
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert response.results[0].model_spec.signature_name == "regress_x_to_y"


def test_get_model_metadata(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, TIMEOUT)
    assert response.model_spec.version.value == 123
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    assert sig_map.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum


def test_get_model_status(server: RunningServer) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    response = stub.GetModelStatus(request, TIMEOUT)
    assert [(s.version, s.state) for s in response.model_version_status] == [(123, 30)]  # AVAILABLE


def test_messages_beyond_grpc_default_4mib(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    x = np.arange(2_000_000, dtype=np.float32).reshape(-1, 1)  # 8 MB each way
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    response = stub.Predict(request, TIMEOUT)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), x * 0.5 + 2)


def test_unix_socket(testdata: Path, tmp_path: Path) -> None:
    from conftest import model_options, run_server

    socket_path = tmp_path / "grpc.sock"
    options = model_options("default", testdata / "saved_model_half_plus_two_cpu", grpc_socket_path=str(socket_path))
    with run_server(options):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"unix:{socket_path}"))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([4.0], shape=[1]))
        assert tf.make_ndarray(stub.Predict(request, TIMEOUT).outputs["y"]).tolist() == [4.0]
