"""`pip install 'pyserving[onnx,tflite]'` into a fresh venv, without TensorFlow, serves an ONNX model over TF Serving's
REST and gRPC APIs and over V2 (REST and gRPC), with warm-up and request logging, and a TFLite model with LiteRT; a
TensorFlow model added to that server fails once, saying what to install, while the others keep serving.

The venv is made with python3.11 -m venv and filled by pip (PyPI or the machine's index, through pip's cache): about
a minute on a warm cache. The clients run in the test's own environment (requests, TF Serving's gRPC stubs,
tritonclient), and the ONNX model is built there with onnx.helper.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from conftest import GRPC_OPTIONS, REPO, free_port, serve_subprocess
from pyserving.codecs.tfrecord import TFRecordWriter, read_records
from pyserving.codecs.tfserving.protos import predict_pb2, prediction_log_pb2, tensor_pb2
from pyserving.codecs.tfserving.tensor import to_ndarray, to_proto
from pyserving.runtimes.single_file import SETTLE_S

onnx = pytest.importorskip("onnx")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
tritonclient_http = pytest.importorskip("tritonclient.http")
pytest.importorskip("tensorflow_serving")  # TF Serving's own gRPC stubs, as its clients use them
from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2  # noqa: E402
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2 as tf_predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

INSTALL_TIMEOUT_S = 900  # a cold pip cache downloads onnxruntime, numpy, grpcio, ... (~100 MB)
MISSING_TF = "needs TensorFlow, which is not installed: pip install 'pyserving[tensorflow]'"


def _python311() -> str:
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    pytest.fail("python3.11 is needed to make the TensorFlow-free venv")


@pytest.fixture(scope="module")
def tf_free_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding pyserving[onnx,tflite] and nothing else. The sources are copied first: pip builds a local
    project in place, and its build/ and egg-info must not land in the work tree."""
    root = tmp_path_factory.mktemp("tf_free")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "pyserving", src / "pyserving", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = root / "venv"
    started = time.monotonic()
    subprocess.run([_python311(), "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{src}[onnx,tflite]"],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"\nTensorFlow-free venv installed in {time.monotonic() - started:.0f} s")
    return venv


def write_affine(version_dir: Path) -> None:
    """y = 0.5 * x + 2 on a [batch, 1] float input."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "offset"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("offset", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    warmup = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    warmup.parent.mkdir()
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(to_proto(np.array([[1.0]], np.float32)))
    with TFRecordWriter(str(warmup)) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    past = time.time() - SETTLE_S - 5  # written a while ago: the first poll loads it, without a settle wait
    for path in [version_dir, *version_dir.rglob("*")]:
        os.utime(path, (past, past))


def model_entry(name: str, base_path: Path, platform: str, extra: str = "") -> str:
    return f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "{platform}" {extra} }}'


@pytest.fixture(scope="module")
def served(tf_free_venv: Path, tmp_path_factory: pytest.TempPathFactory, testdata: Path,
           ) -> Iterator[tuple[str, str, Path, Path]]:
    """(REST URL, gRPC target, the server's stderr, the request log prefix) of the venv's `pyserving serve`."""
    root = tmp_path_factory.mktemp("tf_free_models")
    write_affine(root / "affine" / "1")
    logs = root / "logs" / "affine"
    config = root / "models.config"
    config.write_text("model_config_list { " + model_entry(
        "affine", root / "affine", "onnx",
        f'logging_config {{ sampling_config {{ sampling_rate: 1.0 }} '
        f'log_collector_config {{ type: "tfrecord" filename_prefix: "{logs}" }} }}')
        # TF Serving's TFLite test model with SignatureDef metadata: LiteRT's flatbuffer schema reads it
        + model_entry("lite", testdata / "saved_model_half_plus_two_tflite_with_sigdef", "tflite") + " }")
    rest, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{rest}"
    stderr = root / "server.log"

    def ready() -> bool:
        for model in ("affine", "lite"):
            body = requests.get(f"{url}/v1/models/{model}", timeout=5).json()
            if body.get("model_version_status", [{}])[0].get("state") != "AVAILABLE":
                return False
        return True

    flags = [f"--port={grpc_port}", f"--rest_api_port={rest}", f"--model_config_file={config}", "--host=127.0.0.1"]
    started = time.monotonic()
    with serve_subprocess(flags, stderr, ready, command=[str(tf_free_venv / "bin" / "pyserving")]):
        print(f"\nTensorFlow-free server up in {time.monotonic() - started:.1f} s")
        yield url, f"127.0.0.1:{grpc_port}", stderr, logs


def test_the_venv_has_no_tensorflow(tf_free_venv: Path) -> None:
    probe = subprocess.run([str(tf_free_venv / "bin" / "python"), "-c", "import tensorflow"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr


def test_tf_serving_rest_and_grpc(served: tuple[str, str, Path, Path]) -> None:
    url, target, stderr, _ = served
    assert "Number of warmup records read: 1." in stderr.read_text()  # replayed before it served
    r = requests.post(f"{url}/v1/models/affine:predict", json={"instances": [[1.0], [4.0]]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.5], [4.0]]}
    request = tf_predict_pb2.PredictRequest()
    request.model_spec.name = "affine"
    request.inputs["x"].CopyFrom(tf_tensor_pb2.TensorProto.FromString(
        to_proto(np.array([[6.0]], np.float32)).SerializeToString()))
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    y = to_ndarray("y", tensor_pb2.TensorProto.FromString(response.outputs["y"].SerializeToString()))
    np.testing.assert_array_equal(y, [[5.0]])
    assert response.model_spec.version.value == 1


def test_tflite_model_with_litert(served: tuple[str, str, Path, Path]) -> None:
    url, _, _, _ = served
    r = requests.post(f"{url}/v1/models/lite:predict", json={"instances": [1.0, 2.0, 5.0]}, timeout=30)
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    metadata = requests.get(f"{url}/v1/models/lite/metadata", timeout=30).json()["metadata"]
    assert metadata["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]["name"] == "tflite_input"


def test_v2_rest_and_grpc(served: tuple[str, str, Path, Path]) -> None:
    url, target, _, _ = served
    x = np.array([[2.0], [8.0]], np.float32)
    http = tritonclient_http.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
    try:
        inp = tritonclient_http.InferInput("x", [2, 1], "FP32")
        inp.set_data_from_numpy(x)
        result = http.infer("affine", [inp])
        np.testing.assert_array_equal(result.as_numpy("y"), [[3.0], [6.0]])
    finally:
        http.close()
    client = tritonclient_grpc.InferenceServerClient(target)
    try:
        assert client.is_model_ready("affine")
        inp = tritonclient_grpc.InferInput("x", [2, 1], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("affine", [inp], client_timeout=30)
        np.testing.assert_array_equal(result.as_numpy("y"), [[3.0], [6.0]])
    finally:
        client.close()


def test_a_tensorflow_model_fails_once_saying_what_to_install(
    served: tuple[str, str, Path, Path], testdata: Path,
) -> None:
    url, target, stderr, _ = served
    root = stderr.parent
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(
        "model_config_list { "
        + model_entry("affine", root / "affine", "onnx")
        + model_entry("lite", testdata / "saved_model_half_plus_two_tflite_with_sigdef", "tflite")
        + model_entry("half", testdata / "saved_model_half_plus_two_cpu", "tensorflow")
        + " }", request.config)
    started = time.monotonic()
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        # the default --max_num_load_retries=5, 60 s apart: a retried failure would outlast this deadline
        reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    assert time.monotonic() - started < 30
    assert reply.status.error_code != 0
    assert MISSING_TF in reply.status.error_message
    status = requests.get(f"{url}/v1/models/half", timeout=10).json()["model_version_status"][0]
    assert status["state"] == "END"
    assert MISSING_TF in status["status"]["error_message"]
    r = requests.post(f"{url}/v1/models/affine:predict", json={"instances": [[0.0]]}, timeout=30)
    assert r.json() == {"predictions": [[2.0]]}
    log = stderr.read_text()
    assert log.count(MISSING_TF) >= 1 and "retrying" not in log


def test_request_log_is_tfrecord_that_tensorflow_reads(served: tuple[str, str, Path, Path]) -> None:
    url, _, _, prefix = served
    r = requests.post(f"{url}/v1/models/affine:predict", json={"instances": [[10.0]]}, timeout=30)
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    while True:  # the log is written by its own thread, flushed within a second or so
        records = [prediction_log_pb2.PredictionLog.FromString(data)
                   for path in sorted(prefix.parent.glob(prefix.name + ".*.tfrecord"))
                   for data in read_records(str(path))]
        inputs = [to_ndarray("x", rec.predict_log.request.inputs["x"]).tolist() for rec in records]
        if [[10.0]] in inputs:
            break
        assert time.monotonic() < deadline, f"request not logged; logged: {inputs}"
        time.sleep(0.2)
    tf = pytest.importorskip("tensorflow")  # the test's environment reads it with TensorFlow's own reader
    files = sorted(str(p) for p in prefix.parent.glob(prefix.name + ".*.tfrecord"))
    read_by_tf = [bytes(t.numpy()) for t in tf.data.TFRecordDataset(files)]
    assert len(read_by_tf) >= len(records)
