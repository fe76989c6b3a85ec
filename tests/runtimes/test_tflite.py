"""TFLite models: TF Serving's own test models with --prefer_tflite_model, answering as TF Serving answers, and
the "tflite" platform with a model converted in the test (TFLite signature runners)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import TESTDATA, run_server
from pyserving.config.flags import parse_flags, server_options
from pyserving.options import BatchingOptions, LifecycleOptions, ModelConfig, RuntimeOptions, ServerOptions
from pyserving.runtimes.single_file import SETTLE_S
from pyserving.runtimes.tensorflow import TensorFlowRuntime
from runtime_clients import grpc_metadata, grpc_predict, rest_metadata, rest_predict, settled

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_tflite"
WITH_SIGDEF = TESTDATA / "saved_model_half_plus_two_tflite_with_sigdef"


@pytest.fixture(autouse=True)
def _needs_testdata(testdata: Path) -> None:
    """Fail with conftest's clear message when TF Serving's test models are missing."""


def prefer_tflite(base: Path, **kw: object) -> ServerOptions:
    runtime = RuntimeOptions(prefer_tflite_model=True, num_tflite_pools=2)
    model = ModelConfig(name="default", base_path=str(base), batching=kw.pop("batching", None))  # type: ignore[arg-type]
    lifecycle = LifecycleOptions(max_num_load_retries=0)  # a load error fails the test now, not after retries
    return ServerOptions(models=(model,), runtime=runtime, lifecycle=lifecycle, **kw)  # type: ignore[arg-type]


def shape(*dims: int) -> dict[str, object]:
    return {"dim": [{"size": str(d)} for d in dims]}


@pytest.mark.parametrize(("base", "input_tensor"), [(HALF_PLUS_TWO, "x"), (WITH_SIGDEF, "tflite_input")])
def test_tf_serving_tflite_models_answer_as_tf_serving(base: Path, input_tensor: str) -> None:
    with run_server(prefer_tflite(base)) as server:
        # tensorflow_model_server_test's testPredictTflite / ...WithSigDef: x = [2.0] gives y = [3.0]
        out = grpc_predict(server, "default", {"x": np.array([2.0], np.float32)})
        assert out["y"].tolist() == [3.0]
        assert rest_predict(server, "default", {"instances": [1.0, 2.0, 5.0]}).json() == \
            {"predictions": [2.5, 3.0, 4.5]}
        assert grpc_metadata(server, "default") == {"serving_default": {
            "inputs": {"x": {"dtype": "DT_FLOAT", "name": input_tensor, "tensorShape": shape(1, 1)}},
            "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y", "tensorShape": shape(1, 1)}},
            "methodName": "tensorflow/serving/predict",
        }}
        assert rest_metadata(server, "default")["serving_default"]["inputs"]["x"]["name"] == input_tensor


def test_concurrent_calls_and_batching_share_the_interpreter_pool() -> None:
    batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=10_000, num_batch_threads=2)
    for options in (prefer_tflite(HALF_PLUS_TWO), prefer_tflite(HALF_PLUS_TWO, batching=batching)):
        with run_server(options) as server:
            def call(i: int) -> list[float]:
                response = rest_predict(server, "default", {"instances": [[float(i)], [float(i + 1)]]})
                assert response.status_code == 200, response.text
                return response.json()["predictions"]

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                assert list(pool.map(call, range(32))) == [[[i / 2 + 2], [(i + 1) / 2 + 2]] for i in range(32)]


def test_the_tflite_flags_reach_the_runtime(tmp_path: Path) -> None:
    values, _ = parse_flags(["--prefer_tflite_model", "--num_tflite_pools=3", "--num_tflite_interpreters_per_pool=2",
                             f"--model_base_path={tmp_path}"])
    runtime = server_options(values).runtime
    assert (runtime.prefer_tflite_model, runtime.num_tflite_pools, runtime.num_tflite_interpreters_per_pool) == \
        (True, 3, 2)


def test_a_tflite_only_version_is_complete_once_settled(tmp_path: Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.tflite").write_bytes((HALF_PLUS_TWO / "00000123" / "model.tflite").read_bytes())
    runtime = TensorFlowRuntime()
    assert not runtime.is_complete(str(version), now=time.time())
    assert runtime.is_complete(str(version), now=time.time() + SETTLE_S + 1)


def test_signature_runners_of_a_converted_model(tmp_path: Path) -> None:
    class Scaler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"total": tf.reduce_sum(features, axis=1), "doubled": features * 2.0}

    module = Scaler()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.tflite").write_bytes(converter.convert())
    settled(version)
    model = ModelConfig(name="m", base_path=str(tmp_path / "m"), platform="tflite")
    with run_server(ServerOptions(models=(model,))) as server:
        metadata = grpc_metadata(server, "m")["serving_default"]
        assert metadata["inputs"]["features"]["tensorShape"] == shape(-1, 2)
        assert set(metadata["outputs"]) == {"total", "doubled"}
        response = rest_predict(server, "m", {"inputs": {"features": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}})
        assert response.status_code == 200, response.text
        assert response.json() == {"outputs": {"total": [3.0, 7.0, 11.0],
                                               "doubled": [[2.0, 4.0], [6.0, 8.0], [10.0, 12.0]]}}
        import grpc

        with pytest.raises(grpc.RpcError) as wrong_type:
            grpc_predict(server, "m", {"features": np.ones((1, 2), np.float64)})
        assert wrong_type.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Expects arg[0] to be float but double is provided" in wrong_type.value.details()
