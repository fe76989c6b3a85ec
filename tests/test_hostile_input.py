"""First rows of the hostile-input table (issue "hostile input"): tensors bounded by what they decode to, a config
file caught empty mid-write, TF Serving's parse-error wording, and rank-0 string outputs over REST."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import run_server
from pyserving.codecs.tfserving.protos.tensor_pb2 import TensorProto
from pyserving.codecs.tfserving.tensor import to_ndarray
from pyserving.config.batching_config import batching_for_version
from pyserving.config.model_config import parse_model_server_config
from pyserving.config.textproto import ConfigError
from pyserving.errors import Code, ServingError
from pyserving.frontends.rest import json_codec
from pyserving.options import LifecycleOptions, ModelConfig, ServerOptions
from pyserving.runtimes.memory import write_model

TIMEOUT = 30
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}


@pytest.mark.parametrize(("dtype", "dims", "values"), [
    (1, [2**26], {"float_val": [1.0]}),
    (1, [2**40, 2**40], {"float_val": []}),  # 2^80 elements: must not overflow into a small count
    (7, [2**30], {"string_val": [b"x"]}),
])
def test_tensors_are_bounded_by_what_they_decode_to(dtype: int, dims: list[int], values: dict[str, list]) -> None:
    proto = TensorProto(dtype=dtype, **values)
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    with pytest.raises(ServingError) as err:
        to_ndarray("x", proto, max_bytes=1 << 20)
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    assert "Input x" in err.value.message and "--max_request_bytes" in err.value.message


def test_negative_dims_are_a_parse_error() -> None:
    proto = TensorProto(dtype=1, float_val=[1.0])
    proto.tensor_shape.dim.add(size=-3)
    with pytest.raises(ServingError) as err:
        to_ndarray("x", proto, max_bytes=1 << 20)
    assert err.value.code == Code.INVALID_ARGUMENT and "tensor parsing error: x" in err.value.message


def test_grpc_refuses_a_few_bytes_that_decode_to_gigabytes(tmp_path: Path) -> None:
    write_model(str(tmp_path / "m" / "1"), {"signatures": SIGNATURES})
    options = ServerOptions(models=(ModelConfig("m", str(tmp_path / "m"), platform="memory"),),
                            max_request_bytes=1 << 20)
    with run_server(options) as server, server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(1.0, shape=[1]))
        request.inputs["x"].tensor_shape.dim[0].size = 2**28  # 1 GiB of float32 from one float_val
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "decodes to 1073741824 bytes" in err.value.details()
        request.inputs["x"].tensor_shape.dim[0].size = 4
        assert list(stub.Predict(request, timeout=TIMEOUT).outputs["y"].float_val) == [1.0] * 4


def test_a_polled_config_caught_empty_keeps_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(str(tmp_path / "m" / "1"), {"signatures": SIGNATURES})
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" '
                      'model_platform: "memory" } }')
    options = ServerOptions(
        models=tuple(parse_model_server_config(config.read_text())),
        lifecycle=LifecycleOptions(model_config_file=str(config), model_config_file_poll_wait_seconds=0.1),
    )
    url_of = lambda server: f"{server.rest_url}/v1/models/m:predict"  # noqa: E731
    with caplog.at_level(logging.ERROR), run_server(options) as server:
        config.write_text("")  # what `>` or an editor leaves for a moment
        deadline = time.monotonic() + 10
        while not any("is empty" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the empty config was not noticed"
            time.sleep(0.05)
        assert requests.post(url_of(server), json={"instances": [1.0]}, timeout=TIMEOUT).status_code == 200
        config.write_text("model_config_list {}")  # an explicit empty list still means "serve nothing"
        deadline = time.monotonic() + 10
        while requests.post(url_of(server), json={"instances": [1.0]}, timeout=TIMEOUT).status_code != 404:
            assert time.monotonic() < deadline, "an explicit empty model list was not applied"
            time.sleep(0.05)


def test_parse_errors_say_tf_servings_words_and_ours() -> None:
    with pytest.raises(ConfigError) as err:
        parse_model_server_config('model_config_list { config { nam: "m" } }', source="models.config")
    text = str(err.value)
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in text
    assert text.startswith("models.config:1:") and "nam" in text


def test_rank0_string_outputs_encode_over_rest_and_grpc(tmp_path: Path) -> None:
    class Scalars(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"label": tf.constant("caf\u00e9"), "count": tf.size(x), "y": x * 2.0}

    module = Scalars()
    tf.saved_model.save(module, str(tmp_path / "s" / "1"), signatures={"serving_default": module.serve})
    options = ServerOptions(models=(ModelConfig("s", str(tmp_path / "s")),))
    with run_server(options) as server:
        r = requests.post(f"{server.rest_url}/v1/models/s:predict", json={"inputs": {"x": [1.0, 2.0]}},
                          timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.json() == {"outputs": {"count": 2, "label": "caf\u00e9", "y": [2.0, 4.0]}}
        with server.channel() as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "s"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=TIMEOUT)
        assert tf.make_ndarray(response.outputs["label"]) == "caf\u00e9".encode()


DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
          np.uint64, np.bool_, object, np.complex64]


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("row_format", [False, True], ids=["columnar", "row"])
def test_every_output_dtype_and_rank_encodes_or_is_a_clear_error(dtype: type, rank: int, row_format: bool) -> None:
    """No 5xx from the JSON codec: every output either encodes to JSON that parses, or is a ServingError."""
    shape = (2,) * rank
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    array = np.vectorize(lambda v: f"s{v}".encode(), otypes=[object])(values) if dtype is object \
        else values.astype(dtype)
    for outputs in ({"a": array}, {"a": array, "b_bytes": np.array(b"\xff", dtype=object)}):
        try:
            body = json_codec.encode_predict(outputs, row_format)
        except ServingError as exc:
            assert exc.code == Code.INVALID_ARGUMENT
            continue
        json.loads(body)


def test_base_paths_outside_the_allowed_roots_are_refused(tmp_path: Path) -> None:
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from pyserving.errors import StartupError

    root = tmp_path / "models"
    write_model(str(root / "m" / "1"), {"signatures": SIGNATURES})
    write_model(str(tmp_path / "elsewhere" / "1"), {"signatures": SIGNATURES})
    lifecycle = LifecycleOptions(allowed_base_paths=(str(root),))
    served = ModelConfig("m", str(root / "m"), platform="memory")
    with pytest.raises(StartupError, match="outside the directories"):
        with run_server(ServerOptions(models=(ModelConfig("x", str(root / ".." / "elsewhere"), platform="memory"),),
                                      lifecycle=lifecycle)):
            pass
    with run_server(ServerOptions(models=(served,), lifecycle=lifecycle)) as server, server.channel() as channel:
        request = model_management_pb2.ReloadConfigRequest()
        for name, base in (("m", str(root / "m")), ("x", "/root")):
            request.config.model_config_list.config.add(name=name, base_path=base, model_platform="memory")
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request,
                                                                                             timeout=TIMEOUT)
        assert response.status.error_code == Code.PERMISSION_DENIED
        assert "--model_base_path_prefix" in response.status.error_message
        listed = requests.get(f"{server.rest_url}/v1/models", timeout=TIMEOUT).json()["models"]
        assert [m["name"] for m in listed] == ["m"]
        assert requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [1.0]},
                             timeout=TIMEOUT).status_code == 200


def test_an_auth_file_caught_empty_keeps_its_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(str(tmp_path / "m" / "1"), {"signatures": SIGNATURES})
    auth = tmp_path / "auth.config"
    key, other = "k" * 32, "o" * 32

    def policy(secret: str) -> str:
        return f'api_key {{ name: "a" sha256: "{hashlib.sha256(secret.encode()).hexdigest()}" scope: "*:predict" }}'

    auth.write_text(policy(key))
    options = ServerOptions(models=(ModelConfig("m", str(tmp_path / "m"), platform="memory"),),
                            auth_config_file=str(auth), auth_poll_seconds=0.1)

    def status(server: object, secret: str) -> int:
        return requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [1.0]},  # type: ignore[attr-defined]
                             headers={"X-API-Key": secret}, timeout=TIMEOUT).status_code

    with caplog.at_level(logging.ERROR), run_server(options) as server:
        assert status(server, key) == 200
        auth.write_text("")  # mid-write: must not become "no keys at all"
        deadline = time.monotonic() + 10
        while not any("is empty" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the empty auth file was not noticed"
            time.sleep(0.05)
        assert status(server, key) == 200
        auth.write_text(policy(other))  # the finished write takes effect
        deadline = time.monotonic() + 10
        while status(server, other) != 200:
            assert time.monotonic() < deadline, "the new auth file was not applied"
            time.sleep(0.05)
        assert status(server, key) in (401, 403)


def test_a_version_batching_file_caught_empty_fails_the_load_not_batches_with_defaults(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "batching_params.pbtxt").write_text("")
    with pytest.raises(ConfigError) as err:
        batching_for_version(ModelConfig("m", str(tmp_path / "m")), str(version), global_options=None,
                             per_model_files=True)
    assert "write in progress" in str(err.value)
    (version / "batching_params.pbtxt").write_text("# TF Serving's defaults\n")
    assert batching_for_version(ModelConfig("m", str(tmp_path / "m")), str(version), global_options=None,
                                per_model_files=True) is not None


def test_tensorflow_node_names_stay_out_of_predict_errors(tmp_path: Path) -> None:
    class Add(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32)])
        def add(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": a + b}

    module = Add()
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.add})
    with run_server(ServerOptions(models=(ModelConfig("m", str(tmp_path / "m")),))) as server:
        r = requests.post(f"{server.rest_url}/v1/models/m:predict",
                          json={"inputs": {"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}}, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("Incompatible shapes: [2] vs. [3]") and "{{" not in error and "node" not in error, error
