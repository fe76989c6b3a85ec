"""The "onnx" platform served end to end: graphs built with onnx.helper, served by a real server, asked over TF
Serving's REST and gRPC."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from conftest import run_server  # noqa: E402
from pyserving.errors import Code, ServingError  # noqa: E402
from pyserving.options import BatchingOptions, LifecycleOptions, ModelConfig, RuntimeOptions, ServerOptions  # noqa: E402
from pyserving.runtimes.onnx import OnnxRuntime  # noqa: E402
from pyserving.runtimes.single_file import INCOMPLETE_GRACE_S, SETTLE_S  # noqa: E402
from runtime_clients import (grpc_metadata, grpc_predict, rest_metadata, rest_predict, settled,  # noqa: E402
                             version_status, wait_for)


def write_affine(version_dir: Path, scale: float = 0.5, offset: float = 2.0) -> Path:
    """y = scale * x + offset on a [batch, 1] float input, plus k = y truncated to int64 (a second dtype)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["scaled"]),
         helper.make_node("Add", ["scaled", "offset"], ["y"]),
         helper.make_node("Cast", ["y"], ["k"], to=TensorProto.INT64)],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
                     helper.make_tensor("offset", TensorProto.FLOAT, [], [offset])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every ONNX Runtime >= 1.17 reads
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    return settled(version_dir)


def onnx_options(base: Path, **kw: object) -> ServerOptions:
    batching = kw.pop("batching", None)
    model = ModelConfig(name="m", base_path=str(base), platform="onnx", batching=batching)  # type: ignore[arg-type]
    return ServerOptions(models=(model,), **kw)  # type: ignore[arg-type]


EXPECTED_SIGNATURE = {
    "serving_default": {
        "inputs": {"x": {"dtype": "DT_FLOAT", "name": "x",
                         "tensorShape": {"dim": [{"size": "-1"}, {"size": "1"}]}}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y",
                          "tensorShape": {"dim": [{"size": "-1"}, {"size": "1"}]}},
                    "k": {"dtype": "DT_INT64", "name": "k",
                          "tensorShape": {"dim": [{"size": "-1"}, {"size": "1"}]}}},
        "methodName": "tensorflow/serving/predict",
    }
}


def test_served_over_rest_and_grpc_with_tf_serving_metadata(tmp_path: Path) -> None:
    write_affine(tmp_path / "m" / "1")
    with run_server(onnx_options(tmp_path / "m")) as server:
        response = rest_predict(server, "m", {"instances": [[1.0], [3.0]]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [{"y": [2.5], "k": [2]}, {"y": [3.5], "k": [3]}]}
        columnar = rest_predict(server, "m", {"inputs": {"x": [[4.0]]}})
        assert columnar.json() == {"outputs": {"y": [[4.0]], "k": [[4]]}}

        out = grpc_predict(server, "m", {"x": np.array([[1.0], [2.0], [4.0]], np.float32)})
        np.testing.assert_array_equal(out["y"], np.array([[2.5], [3.0], [4.0]], np.float32))
        assert out["k"].tolist() == [[2], [3], [4]]

        assert grpc_metadata(server, "m") == EXPECTED_SIGNATURE
        rest = rest_metadata(server, "m")["serving_default"]
        assert rest["method_name"] == "tensorflow/serving/predict"
        assert rest["inputs"]["x"] == {"dtype": "DT_FLOAT", "name": "x",
                                       "tensor_shape": {"dim": [{"size": "-1", "name": ""},
                                                                {"size": "1", "name": ""}],
                                                        "unknown_rank": False}}


def test_wrong_dtype_and_shape_are_the_requests_fault(tmp_path: Path) -> None:
    write_affine(tmp_path / "m" / "1")
    with run_server(onnx_options(tmp_path / "m")) as server:
        import grpc

        with pytest.raises(grpc.RpcError) as wrong_type:
            grpc_predict(server, "m", {"x": np.array([[1.0]], np.float64)})
        assert wrong_type.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Expects arg[0] to be float but double is provided" in wrong_type.value.details()
        wrong_rank = rest_predict(server, "m", {"inputs": {"x": [1.0, 2.0]}})
        assert wrong_rank.status_code == 400
        assert "error" in wrong_rank.json()


def test_a_broken_model_is_a_clear_load_error(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ServingError) as broken:
        OnnxRuntime().load(str(version), RuntimeOptions())
    assert broken.value.code == Code.INVALID_ARGUMENT
    assert "Cannot load ONNX model" in broken.value.message and "model.onnx" in broken.value.message

    (version / "model.onnx").unlink()
    with pytest.raises(ServingError) as missing:
        OnnxRuntime().load(str(version), RuntimeOptions())
    assert missing.value.code == Code.NOT_FOUND
    assert "Could not find model.onnx" in missing.value.message


def test_the_parallelism_flags_reach_the_session(tmp_path: Path) -> None:
    write_affine(tmp_path / "1")
    servable = OnnxRuntime().load(str(tmp_path / "1"), RuntimeOptions(intra_op_parallelism=1,
                                                                       inter_op_parallelism=1))
    try:
        out = servable.run("serving_default", {"x": np.ones((2, 1), np.float32)}, ["y"])
        assert out["y"].tolist() == [[2.5], [2.5]]
    finally:
        servable.unload()


def test_a_version_being_written_waits_until_it_settles(tmp_path: Path) -> None:
    runtime = OnnxRuntime()
    version = tmp_path / "1"
    version.mkdir()
    now = time.time()
    assert not runtime.is_complete(str(version), now=now)  # nothing there yet
    (version / "model.onnx").write_bytes(b"half")
    assert not runtime.is_complete(str(version), now=time.time())  # just written: may still be growing
    assert runtime.is_complete(str(version), now=time.time() + SETTLE_S + 1)
    os.remove(version / "model.onnx")
    (version / "notes.txt").write_text("no model here")
    assert not runtime.is_complete(str(version), now=time.time() + SETTLE_S + 1)
    assert runtime.is_complete(str(version), now=time.time() + INCOMPLETE_GRACE_S + 1)  # broken: let load say so


def test_batching_serves_each_caller_its_own_rows(tmp_path: Path) -> None:
    write_affine(tmp_path / "m" / "1", scale=1.0, offset=0.0)
    batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=2)
    with run_server(onnx_options(tmp_path / "m", batching=batching)) as server:
        def call(i: int) -> list[float]:
            response = rest_predict(server, "m", {"inputs": {"x": [[float(i)], [float(i) + 0.5]]}})
            assert response.status_code == 200, response.text
            return [row[0] for row in response.json()["outputs"]["y"]]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(24)))
        assert results == [[float(i), i + 0.5] for i in range(24)]
        from pyserving.core.ids import ServableRequest

        with server.server.manager.lease(ServableRequest("m")) as lease:
            assert lease.batcher is not None
            assert any(size > 2 for size in lease.batcher.batch_sizes), dict(lease.batcher.batch_sizes)


def test_a_new_version_replaces_the_old(tmp_path: Path) -> None:
    base = tmp_path / "m"
    write_affine(base / "1", scale=1.0, offset=1.0)
    options = onnx_options(base, lifecycle=LifecycleOptions(file_system_poll_wait_seconds=0.1))
    with run_server(options) as server:
        assert rest_predict(server, "m", {"inputs": {"x": [[1.0]]}}).json()["outputs"]["y"] == [[2.0]]
        staged = write_affine(tmp_path / "staging", scale=1.0, offset=10.0)
        os.rename(staged, base / "2")
        wait_for(lambda: version_status(server, "m").get(1, ("",))[0] == "END")
        assert version_status(server, "m")[2][0] == "AVAILABLE"
        assert rest_predict(server, "m", {"inputs": {"x": [[1.0]]}}).json()["outputs"]["y"] == [[11.0]]


def test_triton_clients_unchanged(tmp_path: Path) -> None:
    """tritonclient (http with JSON and with binary tensors, grpc with raw contents) against an ONNX model:
    liveness, readiness, metadata and inference, as a Triton server would answer them."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    httpclient = pytest.importorskip("tritonclient.http")
    write_affine(tmp_path / "m" / "1")
    x = np.array([[2.0], [8.0]], np.float32)
    with run_server(onnx_options(tmp_path / "m")) as server:
        http = httpclient.InferenceServerClient(server.rest_url.removeprefix("http://"), network_timeout=30)
        try:
            assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("m")
            metadata = http.get_model_metadata("m")
            assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
            assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {"y": "FP32", "k": "INT64"}
            for binary in (False, True):
                inp = httpclient.InferInput("x", [2, 1], "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                result = http.infer("m", [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary),
                                                         httpclient.InferRequestedOutput("k", binary_data=binary)])
                np.testing.assert_array_equal(result.as_numpy("y"), [[3.0], [6.0]])
                np.testing.assert_array_equal(result.as_numpy("k"), [[3], [6]])
        finally:
            http.close()
        client = grpcclient.InferenceServerClient(server.grpc_target)
        try:
            assert client.is_server_live() and client.is_model_ready("m")
            assert [i.datatype for i in client.get_model_metadata("m").inputs] == ["FP32"]
            inp = grpcclient.InferInput("x", [2, 1], "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer("m", [inp], client_timeout=30)
            np.testing.assert_array_equal(result.as_numpy("y"), [[3.0], [6.0]])
        finally:
            client.close()
