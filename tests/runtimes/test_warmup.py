"""SavedModel warm-up through the real TensorFlow runtime: assets.extra/tf_serving_warmup_requests is replayed
before a version serves, and any problem with it fails the load (TF Serving's saved_model_warmup semantics)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import TESTDATA
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from pyserving.core.ids import ServableRequest
from pyserving.core.manager import ModelManager
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions
from pyserving.runtimes.registry import get_runtime
from pyserving.runtimes.tensorflow_warmup import MAX_WARMUP_RECORDS, WARMUP_FILE

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
COUNTER = TESTDATA / "saved_model_counter" / "00000123"
PredictionLog = prediction_log_pb2.PredictionLog


@pytest.fixture(autouse=True)
def _needs_testdata(testdata: Path) -> None:
    """Fail with conftest's clear message when TF Serving's test models are missing."""


# --- building warm-up files ------------------------------------------------------------------------------------


def predict_record(signature: str = "", x: Iterable[float] | None = (1.0, 2.0)) -> PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ignored"  # warm-up runs on the version being loaded, whatever the spec names
    if signature:
        request.model_spec.signature_name = signature
    if x is not None:
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[v] for v in x], np.float32)))
    return PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def examples(*xs: float) -> input_pb2.Input:
    out = input_pb2.Input()
    for x in xs:
        example = out.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(x)
    return out


def classify_record() -> PredictionLog:
    request = classification_pb2.ClassificationRequest(input=examples(1.0, 2.0))
    request.model_spec.signature_name = "classify_x_to_y"
    return PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))


def regress_record() -> PredictionLog:
    request = regression_pb2.RegressionRequest(input=examples(3.0))
    request.model_spec.signature_name = "regress_x_to_y"
    return PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def multi_inference_record() -> PredictionLog:
    request = inference_pb2.MultiInferenceRequest(input=examples(1.0, 5.0))
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y", "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.signature_name = signature
        task.method_name = method
    return PredictionLog(multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=request))


def write_records(version_dir: Path, records: Iterable[bytes]) -> Path:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def write_warmup(version_dir: Path, logs: Iterable[PredictionLog]) -> Path:
    return write_records(version_dir, (log.SerializeToString() for log in logs))


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    target = tmp_path / "m" / "1"
    shutil.copytree(HALF_PLUS_TWO, target)
    return target


def load(path: Path, **options: object):  # noqa: ANN201  (a Servable)
    return get_runtime("tensorflow").load(str(path), RuntimeOptions(**options))  # type: ignore[arg-type]


def load_error(path: Path, **options: object) -> ServingError:
    with pytest.raises(ServingError) as info:
        load(path, **options)
    return info.value


# --- replay ----------------------------------------------------------------------------------------------------


def test_every_supported_record_kind_is_replayed(version_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_warmup(version_dir, [predict_record(), predict_record("serving_default"), classify_record(),
                                      regress_record(), multi_inference_record()])
    with caplog.at_level(logging.INFO, logger="pyserving.warmup"):
        servable = load(version_dir)
    try:
        messages = [r.getMessage() for r in caplog.records if r.name == "pyserving.warmup"]
        assert messages == [
            f"Finished reading warmup data for model at {path}. Number of warmup records read: 5."
        ]
        out = servable.run("serving_default", {"x": np.array([[4.0]], np.float32)}, ["y"])
        np.testing.assert_allclose(out["y"], [[4.0]])
    finally:
        servable.unload()


def test_no_warmup_file_loads_and_says_so(version_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pyserving.warmup"):
        load(version_dir).unload()
    assert f"No warmup data file found at {version_dir / WARMUP_FILE}" in caplog.text


def test_empty_warmup_file_is_zero_records(version_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_records(version_dir, [])
    with caplog.at_level(logging.INFO, logger="pyserving.warmup"):
        load(version_dir).unload()
    assert "Number of warmup records read: 0." in caplog.text


# --- failures fail the load --------------------------------------------------------------------------------------


def test_record_for_an_unknown_signature_fails_the_load(version_dir: Path) -> None:
    path = write_warmup(version_dir, [predict_record(), predict_record("no_such_signature")])
    err = load_error(version_dir)
    assert err.code == Code.FAILED_PRECONDITION
    assert err.message == f'Warmup record 2 of {path} failed: Serving signature key "no_such_signature" not found.'


def test_classify_record_for_an_unknown_signature_fails_the_load(version_dir: Path) -> None:
    record = classify_record()
    record.classify_log.request.model_spec.signature_name = "classify_nothing"
    write_warmup(version_dir, [record])
    err = load_error(version_dir)
    assert err.code == Code.FAILED_PRECONDITION
    assert 'Serving signature key "classify_nothing" not found.' in err.message


def test_record_with_a_wrong_input_alias_says_which(version_dir: Path) -> None:
    record = predict_record()
    record.predict_log.request.inputs["z"].CopyFrom(record.predict_log.request.inputs["x"])
    del record.predict_log.request.inputs["x"]
    write_warmup(version_dir, [record])
    err = load_error(version_dir)
    assert err.code == Code.INVALID_ARGUMENT
    assert "Sent extra: {z}. Missing but required: {x}." in err.message


def test_not_a_tfrecord_file_is_data_loss(version_dir: Path) -> None:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir()
    path.write_bytes(b'{"instances": [1.0, 2.0]} is JSON, not a TFRecord\n')
    err = load_error(version_dir)
    assert err.code == Code.DATA_LOSS
    assert str(path) in err.message
    assert err.message.endswith("Please verify your warmup data is in TFRecord format.")


def test_unparseable_record_is_invalid_argument(version_dir: Path) -> None:
    path = write_records(version_dir, [predict_record().SerializeToString(), b"\xff\xff\xff not a PredictionLog"])
    err = load_error(version_dir)
    assert (err.code, err.message) == (
        Code.INVALID_ARGUMENT, f"Failed to parse warmup record 2 of {path} as a PredictionLog"
    )


@pytest.mark.parametrize("kind", ["session_run_log", "predict_streamed_log"])
def test_unsupported_log_types_are_unimplemented(version_dir: Path, kind: str) -> None:
    record = PredictionLog()
    getattr(record, kind).SetInParent()
    write_warmup(version_dir, [record])
    err = load_error(version_dir)
    assert err.code == Code.UNIMPLEMENTED
    assert f"Unsupported log_type for warmup: {kind}" in err.message


def test_more_than_the_maximum_records_is_invalid_argument(version_dir: Path) -> None:
    one = predict_record(x=[1.0]).SerializeToString()
    path = write_records(version_dir, [one] * (MAX_WARMUP_RECORDS + 1))
    assert MAX_WARMUP_RECORDS == 1000
    err = load_error(version_dir)
    assert (err.code, err.message) == (
        Code.INVALID_ARGUMENT, f"Number of warmup records exceeds the maximum (1000) at {path}"
    )


def test_exactly_the_maximum_records_loads(version_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_records(version_dir, [predict_record(x=[1.0]).SerializeToString()] * MAX_WARMUP_RECORDS)
    with caplog.at_level(logging.INFO, logger="pyserving.warmup"):
        load(version_dir).unload()
    assert "Number of warmup records read: 1000." in caplog.text


def test_disabled_warmup_skips_a_broken_file(version_dir: Path) -> None:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir()
    path.write_bytes(b"garbage, not a TFRecord")
    assert load_error(version_dir).code == Code.DATA_LOSS
    servable = load(version_dir, enable_model_warmup=False)
    try:
        out = servable.run("serving_default", {"x": np.array([[0.0]], np.float32)}, ["y"])
        np.testing.assert_allclose(out["y"], [[2.0]])
    finally:
        servable.unload()


def test_warmup_failure_is_a_load_failure_and_is_retried(
    version_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = version_dir.parent / "2"
    shutil.copytree(HALF_PLUS_TWO, good)
    write_warmup(version_dir, [predict_record("no_such_signature")])
    models = [ModelConfig("m", str(version_dir.parent))]
    manager = ModelManager(models, RuntimeOptions(), get_runtime,
                           LifecycleOptions(max_num_load_retries=1, load_retry_interval_s=0))
    try:
        manager.set_aspired_versions("m", {1: str(version_dir)})
        with caplog.at_level(logging.WARNING, logger="pyserving.manager"):
            manager.reconcile_once()
            assert [s.state for s in manager.status("m")] == [ServableState.LOADING]
            manager.reconcile_once()
        [status] = manager.status("m")
        assert status.state == ServableState.END and status.error is not None
        assert status.error.code == Code.FAILED_PRECONDITION
        assert 'Serving signature key "no_such_signature" not found.' in status.error.message
        assert "(attempt 1 of 2)" in caplog.text
        with pytest.raises(ServingError):
            manager.lease(ServableRequest("m"))
    finally:
        manager.unload_all()


# --- replay count ----------------------------------------------------------------------------------------------


def export_counter(target: Path) -> Path:
    """Like TF Serving's saved_model_counter, with a resource variable: `incr_counter` adds 1 and returns the new
    value, `get_counter` reads it."""
    graph = tf.Graph()
    with graph.as_default():
        counter = tf.compat.v1.get_variable("counter", shape=[], dtype=tf.float32,
                                            initializer=tf.compat.v1.zeros_initializer(), use_resource=True)
        with tf.control_dependencies([counter.assign_add(1.0, read_value=False)]):
            incr = tf.identity(counter.read_value())
        value = tf.identity(counter.read_value())
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(target))
            build = tf.compat.v1.saved_model.build_signature_def
            info = tf.compat.v1.saved_model.build_tensor_info
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "incr_counter": build({}, {"output": info(incr)}, "tensorflow/serving/predict"),
                "get_counter": build({}, {"output": info(value)}, "tensorflow/serving/predict"),
            })
            builder.save()
    return target


@pytest.fixture(scope="module")
def counter_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_counter(tmp_path_factory.mktemp("counter") / "export")


@pytest.mark.parametrize(("iterations", "expected"), [(0, 3.0), (1, 3.0), (4, 12.0)])
def test_each_record_is_replayed_num_request_iterations_times(
    counter_export: Path, tmp_path: Path, iterations: int, expected: float
) -> None:
    version_dir = tmp_path / "1"
    shutil.copytree(counter_export, version_dir)
    write_warmup(version_dir, [predict_record("incr_counter", x=None)] * 3)
    servable = load(version_dir, num_request_iterations_for_warmup=iterations)
    try:
        assert float(servable.run("get_counter", {}, ["output"])["output"]) == expected
    finally:
        servable.unload()


def test_tf_serving_counter_model_loads_and_counts_warmup_replays(tmp_path: Path) -> None:
    version_dir = tmp_path / "1"
    shutil.copytree(COUNTER, version_dir)
    write_warmup(version_dir, [predict_record("incr_counter", x=None)] * 2)
    servable = load(version_dir, num_request_iterations_for_warmup=3)
    try:
        assert float(servable.run("get_counter", {}, ["output"])["output"]) == 6.0
    finally:
        servable.unload()
