"""--model_config_file end to end: several models, labels over REST and gRPC, reloads by RPC and by polling."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from conftest import run_server
from pyserving.config.flags import server_options
from pyserving.config.model_config import ConfigError, load_model_config_file


def wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def config_text(models: dict[str, Path], extra: dict[str, str] | None = None) -> str:
    blocks = []
    for name, path in models.items():
        blocks.append(
            f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" {(extra or {}).get(name, "")} }}'
        )
    return "model_config_list { " + " ".join(blocks) + " }"


@pytest.fixture
def model_dirs(testdata: Path, tmp_path: Path) -> dict[str, Path]:
    two = tmp_path / "two"
    shutil.copytree(testdata / "saved_model_half_plus_two_2_versions", two)
    three = tmp_path / "three"
    shutil.copytree(testdata / "saved_model_half_plus_three", three)
    return {"two": two, "three": three}


def predict(url: str, model: str, suffix: str = "") -> requests.Response:
    return requests.post(f"{url}/v1/models/{model}{suffix}:predict", json={"instances": [2.0]}, timeout=10)


def test_tf_serving_good_config_serves_both_models(testdata: Path, tmp_path: Path) -> None:
    text = (testdata / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(testdata / "saved_model_half_plus_two_cpu"))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(testdata / "saved_model_half_plus_three"))
    path = tmp_path / "models.config"
    path.write_text(text)
    options = server_options({"model_config_file": str(path)})
    with run_server(options) as server:
        assert predict(server.rest_url, "half_plus_two").json() == {"predictions": [3.0]}
        assert predict(server.rest_url, "half_plus_three").json() == {"predictions": [4.0]}


def test_tf_serving_bad_config_is_refused(testdata: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_config_file(str(testdata / "bad_model_config.txt"))
    assert "bad_model_config.txt" in str(info.value)


def test_labels_and_reload_by_rpc(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    labels = 'model_version_policy { all {} } version_labels { key: "stable" value: 123 } ' \
             'version_labels { key: "canary" value: 124 }'
    path.write_text(config_text({"two": model_dirs["two"]}, {"two": labels}))
    with run_server(server_options({"model_config_file": str(path)})) as server:
        url = server.rest_url
        assert predict(url, "two", "/labels/stable").headers["X-Model-Version"] == "123"
        assert predict(url, "two", "/labels/canary").headers["X-Model-Version"] == "124"
        assert predict(url, "two").headers["X-Model-Version"] == "124"
        assert predict(url, "two", "/labels/nope").status_code == 400

        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "two"
        request.model_spec.version_label = "stable"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
        assert stub.Predict(request, 10).model_spec.version.value == 123

        models = model_service_pb2_grpc.ModelServiceStub(server.channel())

        def reload(text: str) -> model_management_pb2.ReloadConfigResponse:
            request = model_management_pb2.ReloadConfigRequest()
            text_format.Parse(text, request.config)
            return models.HandleReloadConfigRequest(request, 60)

        # add a model; "two" keeps serving untouched
        reply = reload(config_text(model_dirs, {"two": labels}))
        assert reply.status.error_code == 0, reply.status.error_message
        assert predict(url, "three").json() == {"predictions": [4.0]}
        assert predict(url, "two", "/labels/stable").status_code == 200

        # labels with nowhere to send traffic are refused before anything of that config is applied
        for refused in (
            'model_version_policy { specific { versions: 124 } } version_labels { key: "stable" value: 123 }',
            'model_version_policy { all {} } version_labels { key: "stable" value: 125 }',
        ):
            reply = reload(config_text(model_dirs, {"two": refused}))
            assert reply.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert "not currently available for inference" in reply.status.error_message
            r = predict(url, "two", "/labels/stable")
            assert r.headers.get("X-Model-Version") == "123", (refused, r.text)
        # moving a label between two served versions is fine
        swapped = 'model_version_policy { all {} } version_labels { key: "stable" value: 124 } ' \
                  'version_labels { key: "canary" value: 123 }'
        assert reload(config_text(model_dirs, {"two": swapped})).status.error_code == 0
        assert predict(url, "two", "/labels/stable").headers["X-Model-Version"] == "124"
        assert predict(url, "two", "/labels/canary").headers["X-Model-Version"] == "123"

        # a config that does not parse is refused with the reason
        bad = model_server_config_pb2.ModelServerConfig()
        bad.model_config_list.config.add(name="x", base_path="relative/path")
        reply = models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), 60)
        assert reply.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "absolute" in reply.status.error_message
        assert predict(url, "three").status_code == 200

        # removing a model unloads it
        reply = reload(config_text({"three": model_dirs["three"]}))
        assert reply.status.error_code == 0, reply.status.error_message
        assert predict(url, "two").status_code == 404
        assert requests.get(f"{url}/v1/models/two", timeout=10).status_code == 404


def test_config_file_polling(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(config_text({"two": model_dirs["two"]}))
    options = server_options({"model_config_file": str(path), "model_config_file_poll_wait_seconds": 1})
    with run_server(options) as server:
        url = server.rest_url
        assert predict(url, "three").status_code == 404
        path.write_text("this is not a config")
        time.sleep(1.5)
        assert predict(url, "two").status_code == 200  # a broken file changes nothing
        path.write_text(config_text(model_dirs))
        wait_for(lambda: predict(url, "three").status_code == 200)
        assert predict(url, "two").status_code == 200
