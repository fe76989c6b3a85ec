"""assets.extra/tf_serving_warmup_requests is replayed for ONNX, python, PyTorch and TFLite versions as for
SavedModels (the reader is TensorFlow-free, codecs.tfrecord), through a real server; and load errors that waiting
cannot fix are not retried."""

from __future__ import annotations

import logging
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TESTDATA, run_server
from pyserving.codecs.tfrecord import TFRecordWriter
from pyserving.codecs.tfserving.protos import predict_pb2, prediction_log_pb2
from pyserving.codecs.tfserving.tensor import to_proto
from pyserving.core.manager import ModelManager
from pyserving.core.states import ServableState
from pyserving.errors import Code, PermanentError, StartupError
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions, ServerOptions
from pyserving.runtimes.base import import_framework
from pyserving.runtimes.registry import get_runtime
from pyserving.runtimes.tensorflow_warmup import WARMUP_FILE
from runtime_clients import grpc_predict, rest_predict, settled
from test_onnx import write_affine  # skips this module where onnx or onnxruntime is missing

COUNTING_MODEL = '''
import numpy as np


class Model:
    signatures = {
        "serving_default": {"inputs": {"x": {"dtype": "float32", "shape": [-1, 1]}},
                            "outputs": {"y": {"dtype": "float32", "shape": [-1, 1]}}},
        "count": {"method": "count", "inputs": {}, "outputs": {"calls": {"dtype": "int64", "shape": []}}},
    }

    def load(self, path):
        self.calls = 0

    def predict(self, inputs):
        self.calls += 1
        return {"y": inputs["x"] * 2}

    def count(self, inputs):
        return {"calls": np.int64(self.calls)}
'''


def write_warmup(version_dir: Path, *inputs: dict[str, np.ndarray]) -> Path:
    """One predict record per `inputs`, written without TensorFlow."""
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with TFRecordWriter(str(path)) as writer:
        for tensors in inputs:
            request = predict_pb2.PredictRequest()
            for alias, value in tensors.items():
                request.inputs[alias].CopyFrom(to_proto(value))
            entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(entry.SerializeToString())
    return path


def write_counting_model(version_dir: Path) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(textwrap.dedent(COUNTING_MODEL))
    return version_dir


def python_server(base: Path, iterations: int = 0) -> ServerOptions:
    model = ModelConfig(name="m", base_path=str(base), platform="python")
    return ServerOptions(models=(model,), runtime=RuntimeOptions(
        allow_python_models=True, num_request_iterations_for_warmup=iterations))


@pytest.mark.parametrize(("iterations", "expected"), [(0, 2), (3, 6)])
def test_python_model_replays_each_record_iterations_times(tmp_path: Path, iterations: int, expected: int) -> None:
    version = write_counting_model(tmp_path / "m" / "1")
    write_warmup(version, {"x": np.array([[1.0]], np.float32)}, {"x": np.array([[2.0], [3.0]], np.float32)})
    settled(version)
    with run_server(python_server(tmp_path / "m", iterations)) as server:
        # the model's own counter, read through the API: the warm-up calls happened before it served
        assert grpc_predict(server, "m", {}, signature="count")["calls"] == expected
        assert rest_predict(server, "m", {"instances": [[1.5]]}).json() == {"predictions": [[3.0]]}
        assert grpc_predict(server, "m", {}, signature="count")["calls"] == expected + 1


def test_python_model_without_warmup_file_loads_uncounted(tmp_path: Path) -> None:
    settled(write_counting_model(tmp_path / "m" / "1"))
    with run_server(python_server(tmp_path / "m")) as server:
        assert grpc_predict(server, "m", {}, signature="count")["calls"] == 0


def onnx_server(base: Path) -> ServerOptions:
    # no retries: a failed load fails the start at once
    return ServerOptions(models=(ModelConfig(name="m", base_path=str(base), platform="onnx"),),
                         lifecycle=LifecycleOptions(max_num_load_retries=0))


def test_onnx_model_replays_its_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = tmp_path / "m" / "1"
    write_affine(version)
    path = write_warmup(version, {"x": np.array([[1.0]], np.float32)}, {"x": np.array([[4.0]], np.float32)})
    settled(version)
    with caplog.at_level(logging.INFO, logger="pyserving.warmup"), run_server(onnx_server(tmp_path / "m")) as server:
        assert rest_predict(server, "m", {"instances": [[2.0]]}).json()["predictions"] == [{"y": [3.0], "k": [3]}]
    assert f"Finished reading warmup data for model at {path}. Number of warmup records read: 2." in caplog.text


def test_onnx_warmup_runs_the_graph_so_a_bad_record_fails_the_load(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    write_affine(version)
    # the right alias with a type the graph refuses: only running the session finds that out
    write_warmup(version, {"x": np.array([[1]], np.int64)})
    settled(version)
    with pytest.raises(StartupError) as info, run_server(onnx_server(tmp_path / "m")):
        pass
    assert "Warmup record 1 of" in str(info.value)
    assert "Expects arg[0] to be float but int64 is provided" in str(info.value)


def test_disabled_warmup_skips_the_records(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    write_affine(version)
    write_warmup(version, {"x": np.array([[1]], np.int64)})  # would fail the load if replayed
    settled(version)
    options = replace(onnx_server(tmp_path / "m"), runtime=RuntimeOptions(enable_model_warmup=False))
    with run_server(options) as server:
        assert rest_predict(server, "m", {"instances": [[2.0]]}).status_code == 200


# --- permanent load errors --------------------------------------------------------------------------------------


def test_python_model_without_the_flag_fails_once_not_retried(tmp_path: Path) -> None:
    version = write_counting_model(tmp_path / "m" / "1")
    manager = ModelManager([ModelConfig("m", str(version.parent), platform="python")], RuntimeOptions(),
                           get_runtime, LifecycleOptions(max_num_load_retries=5, load_retry_interval_s=60))
    try:
        manager.set_aspired_versions("m", {1: str(version)})
        started = time.monotonic()
        manager.reconcile_once()
        [status] = manager.status("m")
        # ended at the first attempt: with retries it would stay LOADING for 5 x 60 s
        assert status.state == ServableState.END
        assert status.error is not None and status.error.code == Code.FAILED_PRECONDITION
        assert "--allow_python_models=true" in status.error.message
        assert time.monotonic() - started < 30
        assert manager.reconcile_once() is False  # nothing left to try
    finally:
        manager.unload_all()


def test_an_ordinary_load_error_is_still_retried(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"not an ONNX graph")
    manager = ModelManager([ModelConfig("m", str(version.parent), platform="onnx")], RuntimeOptions(),
                           get_runtime, LifecycleOptions(max_num_load_retries=1, load_retry_interval_s=0))
    try:
        manager.set_aspired_versions("m", {1: str(version)})
        manager.reconcile_once()
        assert [s.state for s in manager.status("m")] == [ServableState.LOADING]  # waiting for its retry
        manager.reconcile_once()
        [status] = manager.status("m")
        assert status.state == ServableState.END and status.error is not None
        assert not isinstance(status.error, PermanentError)
    finally:
        manager.unload_all()


def test_a_missing_framework_is_permanent_and_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        import_framework("pyserving_no_such_framework", "NoSuchFramework", "nosuch", str(tmp_path))
    assert info.value.code == Code.FAILED_PRECONDITION
    assert info.value.message == (f"Cannot load {tmp_path}: it needs NoSuchFramework, which is not installed: "
                                  "pip install 'pyserving[nosuch]'")
    # a framework that is there but fails to import something of its own is not reported as missing
    broken = tmp_path / "brokenframework"
    broken.mkdir()
    (broken / "__init__.py").write_text("import pyserving_not_a_dependency_of_it\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError):
            import_framework("brokenframework", "Broken", "broken", str(tmp_path))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("brokenframework", None)


def _torch_version(version_dir: Path) -> dict[str, np.ndarray]:
    pytest.importorskip("torch")
    from test_pytorch import write_script

    write_script(version_dir)
    return {"x": np.array([[1.0]], np.float32), "k": np.array([3], np.int64)}


def _tflite_version(version_dir: Path) -> dict[str, np.ndarray]:
    version_dir.mkdir(parents=True)
    shutil.copy(TESTDATA / "saved_model_half_plus_two_tflite" / "00000123" / "model.tflite", version_dir)
    return {"x": np.array([2.0], np.float32)}


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")  # as in test_pytorch
@pytest.mark.parametrize(("platform", "make"), [("pytorch", _torch_version), ("tflite", _tflite_version)])
def test_torch_and_tflite_replay_and_a_bad_record_fails_the_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, platform: str, make: Callable[[Path], dict[str, np.ndarray]],
) -> None:
    good, bad = tmp_path / "good" / "1", tmp_path / "bad" / "1"
    inputs = make(good)
    write_warmup(good, inputs)
    make(bad)
    write_warmup(bad, {**inputs, "x": inputs["x"].astype(np.int64)})  # a type only running the model refuses
    settled(good)
    settled(bad)

    def options(base: Path) -> ServerOptions:
        return ServerOptions(models=(ModelConfig(name="m", base_path=str(base), platform=platform),),
                             lifecycle=LifecycleOptions(max_num_load_retries=0))

    with caplog.at_level(logging.INFO, logger="pyserving.warmup"), run_server(options(good.parent)) as server:
        assert rest_predict(server, "m", {"inputs": {k: v.tolist() for k, v in inputs.items()}}).status_code == 200
    assert "Number of warmup records read: 1." in caplog.text
    with pytest.raises(StartupError) as info, run_server(options(bad.parent)):
        pass
    assert "Warmup record 1 of" in str(info.value)
    assert "Expects arg[0] to be float but int64 is provided" in str(info.value)
