"""Request logging (TF Serving's logging_config, made to work): sampling, TFRecord PredictionLog and JSON lines
files, rotation, redaction, a bounded queue that drops instead of blocking, and logs that replay as warm-up."""

from __future__ import annotations

import base64
import math
import random
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tensorflow as tf
from conftest import TESTDATA
from tensorflow_serving.apis import prediction_log_pb2

from pyserving.observability.request_log import (
    REDACTED,
    LoggedRequest,
    RequestLogger,
    audit_fields,
    check_logging_options,
)
from pyserving.options import LoggingOptions, RuntimeOptions
from pyserving.runtimes.base import CLASSIFY_METHOD, REGRESS_METHOD
from pyserving.runtimes.tensorflow import TensorFlowRuntime
from pyserving.runtimes.tensorflow_warmup import WARMUP_FILE, warm_up

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
FILE_NAME = re.compile(r"requests\.\d{8}-\d{6}\.(\d+)\.(tfrecord|jsonl)")
NOW = 1_767_225_600.25  # 2026-01-01T00:00:00.25Z


# --- helpers ---------------------------------------------------------------------------------------------------


def options(tmp_path: Path, rate: float = 1.0, kind: str = "tfrecord") -> LoggingOptions:
    return LoggingOptions(sampling_rate=rate, collector_type=kind, filename_prefix=str(tmp_path / "logs" / "requests"))


def predict(i: int = 0, *, code: str = "OK", inputs: Mapping[str, np.ndarray] | None = None,
            outputs: Mapping[str, np.ndarray] | None = None, **kw: Any) -> LoggedRequest:
    x = np.array([[float(i)], [i + 1.0]], np.float32)
    return LoggedRequest(
        model="half", version=123, signature="serving_default", api="predict",
        inputs={"x": x} if inputs is None else inputs,
        outputs=({"y": x * 0.5 + 2} if code == "OK" else None) if outputs is None else outputs,
        latency_s=0.0125, code=code, protocol="grpc", timestamp=NOW + i, request_id=f"r{i}", **kw,
    )


def example(**features: float | bytes) -> bytes:
    feature = {}
    for name, value in features.items():
        if isinstance(value, bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def example_request(api: str, examples: Sequence[bytes], results: Any, signature: str = "") -> LoggedRequest:
    return LoggedRequest(model="half", version=123, signature=signature, api=api,  # type: ignore[arg-type]
                         examples=examples, results=results, latency_s=0.002, protocol="rest", timestamp=NOW)


def log_files(tmp_path: Path) -> list[Path]:
    """The logger's files, oldest first."""
    files = list((tmp_path / "logs").glob("requests.*"))
    matches = [FILE_NAME.fullmatch(path.name) for path in files]
    assert all(matches), files
    return [path for _, path in sorted((int(match[1]), path) for match, path in zip(matches, files) if match)]


def read_tfrecords(tmp_path: Path) -> list[prediction_log_pb2.PredictionLog]:
    return [prediction_log_pb2.PredictionLog.FromString(record)
            for path in log_files(tmp_path) for record in tf.compat.v1.io.tf_record_iterator(str(path))]


def read_jsonl(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in log_files(tmp_path) for line in path.read_bytes().splitlines()]


# --- TFRecord of PredictionLog ---------------------------------------------------------------------------------


def test_tfrecord_logs_every_predict_with_its_tensors_version_latency_and_time(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path))
    assert all(logger.log(predict(i)) for i in range(5))
    logger.close()
    assert (logger.logged, logger.dropped, logger.sampled_out, logger.errors) == (5, 0, 0, 0)
    [path] = log_files(tmp_path)
    assert path.suffix == ".tfrecord"

    entries = read_tfrecords(tmp_path)
    assert len(entries) == 5
    for i, entry in enumerate(entries):
        metadata = entry.log_metadata
        assert (metadata.model_spec.name, metadata.model_spec.version.value) == ("half", 123)
        assert metadata.model_spec.signature_name == "serving_default"
        assert metadata.sampling_config.sampling_rate == 1.0
        assert metadata.timestamp_secs == int(NOW) + i
        request, response = entry.predict_log.request, entry.predict_log.response
        x = np.array([[float(i)], [i + 1.0]], np.float32)
        np.testing.assert_array_equal(tf.make_ndarray(request.inputs["x"]), x)
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), x * 0.5 + 2)
        assert request.model_spec.version.value == 123
        assert audit_fields(entry) == {"api": "predict", "protocol": "grpc", "code": "OK", "latency_ms": 12.5,
                                       "timestamp": NOW + i, "request_id": f"r{i}", "principal": ""}


def test_tfrecord_logs_string_tensors_classify_regress_and_multi_inference(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path, kind=""))  # "" is TF Serving's default: tfrecord
    words = np.array([b"caf\xc3\xa9", b"\xff\x00"], dtype=object)
    tensors = {"mask": np.array([True, False]), "pixels": np.arange(6, dtype=np.uint8).reshape(2, 3).T,
               "half": np.array([1.5], np.float16), "big_endian": np.array([1, 2], ">i4"), "empty": np.zeros((0, 3))}
    logger.log(predict(inputs={"words": words, **tensors}, outputs={"ids": np.array([3, 4], np.int64)}))
    logger.log(example_request("classify", [example(x=1.0), example(x=2.0)],
                               [[(b"yes", 0.75), (b"no", 0.25)], [(b"", 2.0)]], "classify_x_to_y"))
    logger.log(example_request("regress", [example(x=3.0)], [3.5], "regress_x_to_y"))
    logger.log(example_request("multi_inference", [example(x=1.0)],
                               [("classify_x_to_y", CLASSIFY_METHOD, [[(b"", 2.5)]]),
                                ("regress_x_to_y", REGRESS_METHOD, [2.5])]))
    logger.close()
    assert logger.errors == 0
    predicted, classified, regressed, multi = read_tfrecords(tmp_path)

    np.testing.assert_array_equal(tf.make_ndarray(predicted.predict_log.request.inputs["words"]), words)
    for alias, value in tensors.items():
        logged = tf.make_ndarray(predicted.predict_log.request.inputs[alias])
        assert logged.dtype == value.dtype.newbyteorder("=") and logged.shape == value.shape, alias
        np.testing.assert_array_equal(logged, value)
    np.testing.assert_array_equal(tf.make_ndarray(predicted.predict_log.response.outputs["ids"]), [3, 4])
    assert list(classified.classify_log.request.input.example_list.examples[1].features.feature["x"]
                .float_list.value) == [2.0]
    assert classified.classify_log.request.model_spec.signature_name == "classify_x_to_y"
    classes = classified.classify_log.response.result.classifications
    assert [[(c.label, c.score) for c in cs.classes] for cs in classes] == [[("yes", 0.75), ("no", 0.25)], [("", 2.0)]]
    assert [r.value for r in regressed.regress_log.response.result.regressions] == [3.5]
    tasks = multi.multi_inference_log.request.tasks
    assert [(t.model_spec.signature_name, t.method_name) for t in tasks] == [
        ("classify_x_to_y", CLASSIFY_METHOD), ("regress_x_to_y", REGRESS_METHOD)]
    results = multi.multi_inference_log.response.results
    assert results[0].classification_result.classifications[0].classes[0].score == 2.5
    assert results[1].regression_result.regressions[0].value == 2.5
    assert audit_fields(multi)["api"] == "multi_inference"


def test_failed_requests_are_logged_with_their_code(tmp_path: Path) -> None:
    tfrecord = RequestLogger("half", options(tmp_path / "a"))
    jsonl = RequestLogger("half", options(tmp_path / "b", kind="jsonl"))
    for logger in (tfrecord, jsonl):
        assert logger.log(predict(code="INVALID_ARGUMENT"))
        assert logger.log(predict(code="NOT_FOUND", inputs={}))
        assert logger.log(example_request("classify", [example(x=1.0)], None, "classify_x_to_y"))
        logger.close()
        assert (logger.logged, logger.errors) == (3, 0)

    bad_input, no_input, classify = read_tfrecords(tmp_path / "a")
    assert audit_fields(bad_input)["code"] == "INVALID_ARGUMENT"
    assert "x" in bad_input.predict_log.request.inputs and not bad_input.predict_log.response.outputs
    assert no_input.WhichOneof("log_type") == "predict_log"
    assert audit_fields(no_input)["code"] == "NOT_FOUND"
    assert classify.WhichOneof("log_type") == "classify_log"
    assert not classify.classify_log.response.result.classifications

    lines = read_jsonl(tmp_path / "b")
    assert [(line["code"], line["outputs"], line["results"]) for line in lines] == [
        ("INVALID_ARGUMENT", None, None), ("NOT_FOUND", None, None), ("OK", None, None)]


def test_tfrecord_log_is_a_tf_serving_warmup_file(tmp_path: Path, testdata: Path) -> None:
    version_dir = tmp_path / "half" / "00000123"
    shutil.copytree(HALF_PLUS_TWO, version_dir)
    servable = TensorFlowRuntime().load(str(version_dir), RuntimeOptions())
    try:
        logger = RequestLogger("half", options(tmp_path))
        x = np.array([[1.0], [2.0], [5.0]], np.float32)
        outputs = servable.run("serving_default", {"x": x}, ["y"])
        logger.log(predict(inputs={"x": x}, outputs=outputs))
        examples = [example(x=1.0), example(x=2.0)]
        logger.log(example_request("classify", examples, [[(b"", 2.5)], [(b"", 3.0)]], "classify_x_to_y"))
        logger.log(example_request("regress", examples[:1], [2.5], "regress_x_to_y"))
        logger.log(example_request("multi_inference", examples,
                                   [("classify_x_to_y", CLASSIFY_METHOD, [[(b"", 2.5)], [(b"", 3.0)]]),
                                    ("regress_x_to_y", REGRESS_METHOD, [2.5, 3.0])]))
        logger.close()
        [path] = log_files(tmp_path)
        (version_dir / WARMUP_FILE).parent.mkdir(exist_ok=True)
        shutil.copyfile(path, version_dir / WARMUP_FILE)

        replayed: list[tuple[str, dict[str, np.ndarray]]] = []

        def run(signature: str, inputs: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict[str, np.ndarray]:
            result = servable.run(signature, inputs, keys)
            replayed.append((signature, result))
            return result

        assert warm_up(servable.signatures, run, str(version_dir), 1) == 4
        assert [signature for signature, _ in replayed] == [
            "serving_default", "classify_x_to_y", "regress_x_to_y", "classify_x_to_y", "regress_x_to_y"]
        np.testing.assert_array_equal(replayed[0][1]["y"], outputs["y"])
    finally:
        servable.unload()


# --- JSON lines ------------------------------------------------------------------------------------------------


def test_jsonl_lines_carry_the_request(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path, kind="jsonl"))
    words = np.array([[b"caf\xc3\xa9"], [b"\xff"]], dtype=object)
    logger.log(predict(7, inputs={"x": np.array([[1.5]], np.float32), "words": words},
                       outputs={"y": np.array([2.75], np.float64), "half": np.array([1.0], np.float16)}))
    examples = [example(x=1.0)]
    logger.log(example_request("classify", examples, [[(b"yes", 0.75), (b"\xff", 0.25)]], "classify_x_to_y"))
    logger.log(example_request("regress", examples, [3.5], "regress_x_to_y"))
    logger.log(example_request("multi_inference", examples, [("regress_x_to_y", REGRESS_METHOD, [3.5])]))
    logger.close()
    assert (logger.logged, logger.errors) == (4, 0)
    [path] = log_files(tmp_path)
    assert path.suffix == ".jsonl"

    predicted, classified, regressed, multi = read_jsonl(tmp_path)
    b64 = lambda data: {"b64": base64.b64encode(data).decode()}  # noqa: E731
    assert predicted == {
        "model": "half", "version": 123, "signature": "serving_default", "api": "predict", "protocol": "grpc",
        "code": "OK", "latency_ms": 12.5, "timestamp": "2026-01-01T00:00:07.250000Z", "request_id": "r7", "principal": "",
        "inputs": {"x": [[1.5]], "words": [[b64(b"caf\xc3\xa9")], [b64(b"\xff")]]},
        "outputs": {"y": [2.75], "half": [1.0]}, "examples": None, "results": None,
    }
    assert classified["examples"] == [base64.b64encode(examples[0]).decode()]
    assert classified["results"] == [[["yes", 0.75], [b64(b"\xff"), 0.25]]]
    assert (classified["api"], classified["protocol"], classified["inputs"]) == ("classify", "rest", None)
    assert regressed["results"] == [3.5]
    assert multi["results"] == [{"signature": "regress_x_to_y", "method": REGRESS_METHOD, "result": [3.5]}]


# --- sampling --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [1.0, 0.1])
def test_sampling_rate_logs_that_fraction(tmp_path: Path, rate: float) -> None:
    n = 2000
    logger = RequestLogger("half", options(tmp_path, rate, "jsonl"), queue_size=n, rng=random.Random(20240501))
    accepted = sum(logger.log(predict(i)) for i in range(n))
    logger.close()
    tolerance = 5 * math.sqrt(n * rate * (1 - rate))  # 5 standard deviations of Binomial(n, rate)
    assert abs(accepted - n * rate) <= tolerance
    assert (logger.logged, logger.sampled_out, logger.dropped) == (accepted, n - accepted, 0)
    ids = [line["request_id"] for line in read_jsonl(tmp_path)]
    assert len(ids) == accepted and ids == sorted(ids, key=lambda rid: int(rid[1:]))


def test_sampling_rate_zero_logs_nothing_and_writes_no_files(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path, 0.0))
    assert not any(logger.log(predict(i)) for i in range(100))
    logger.flush()
    logger.close()
    assert (logger.logged, logger.sampled_out) == (0, 100)
    assert not (tmp_path / "logs").exists()


# --- files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "tfrecord"])
def test_files_rotate_by_size_and_only_the_newest_are_kept(tmp_path: Path, kind: str) -> None:
    logger = RequestLogger("half", options(tmp_path, kind=kind), max_file_bytes=1500, max_files=3)
    for i in range(60):
        logger.log(predict(i))
    logger.close()
    assert (logger.logged, logger.errors) == (60, 0)
    files = log_files(tmp_path)
    assert len(files) == 3
    assert all(path.stat().st_size <= 1500 for path in files)
    if kind == "jsonl":
        ids = [line["request_id"] for line in read_jsonl(tmp_path)]
    else:
        ids = [audit_fields(entry)["request_id"] for entry in read_tfrecords(tmp_path)]
    assert ids == [f"r{i}" for i in range(60 - len(ids), 60)]  # the newest, none missing in between
    assert len(ids) > 3


def test_files_of_an_earlier_run_count_towards_max_files(tmp_path: Path) -> None:
    first = RequestLogger("half", options(tmp_path, kind="jsonl"), max_file_bytes=100, max_files=3)
    for i in range(5):
        first.log(predict(i))
    first.close()
    assert len(log_files(tmp_path)) == 3
    second = RequestLogger("half", options(tmp_path, kind="jsonl"), max_file_bytes=100, max_files=3)
    second.log(predict(5))
    second.close()
    assert [line["request_id"] for line in read_jsonl(tmp_path)] == ["r3", "r4", "r5"]


def test_one_record_larger_than_max_file_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path, kind="jsonl"), max_file_bytes=10)
    for i in range(3):
        logger.log(predict(i))
    logger.close()
    assert [len(path.read_bytes().splitlines()) for path in log_files(tmp_path)] == [1, 1, 1]


# --- redaction -------------------------------------------------------------------------------------------------


SECRET = b"123-45-6789"


def secret_records() -> list[LoggedRequest]:
    ssn = np.array([SECRET], dtype=object)
    return [
        predict(inputs={"x": np.array([1.0], np.float32), "ssn": ssn},
                outputs={"y": np.array([2.5], np.float32), "echo": ssn}),
        example_request("classify", [example(x=1.0, ssn=SECRET)], [[(b"", 2.5)]], "classify_x_to_y"),
    ]


def test_redacted_values_never_reach_a_jsonl_file(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path, kind="jsonl"), redact={"ssn", "echo"})
    for record in secret_records():
        logger.log(record)
    logger.close()
    assert logger.errors == 0
    predicted, classified = read_jsonl(tmp_path)
    assert predicted["inputs"] == {"x": [1.0], "ssn": REDACTED}
    assert predicted["outputs"] == {"y": [2.5], "echo": REDACTED}
    features = tf.train.Example.FromString(base64.b64decode(classified["examples"][0])).features.feature
    assert list(features["x"].float_list.value) == [1.0] and not features["ssn"].bytes_list.value
    assert all(SECRET not in path.read_bytes() and base64.b64encode(SECRET) not in path.read_bytes()
               for path in log_files(tmp_path))


def test_redacted_tensors_are_empty_strings_in_tfrecord(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path), redact=("ssn", "echo"))
    for record in secret_records():
        logger.log(record)
    logger.close()
    assert logger.errors == 0
    predicted, classified = read_tfrecords(tmp_path)
    for tensor in (predicted.predict_log.request.inputs["ssn"], predicted.predict_log.response.outputs["echo"]):
        assert tensor.dtype == tf.string.as_datatype_enum and tf.make_ndarray(tensor) == b""
    assert tf.make_ndarray(predicted.predict_log.request.inputs["x"]).tolist() == [1.0]
    features = classified.classify_log.request.input.example_list.examples[0].features.feature
    assert list(features["x"].float_list.value) == [1.0] and not features["ssn"].bytes_list.value
    assert all(SECRET not in path.read_bytes() for path in log_files(tmp_path))


# --- never in the way of requests ------------------------------------------------------------------------------


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    # Each record takes the writer milliseconds to encode; logging 1000 of them takes the caller far less.
    big = predict(inputs={"x": np.random.default_rng(0).random((300_000,), np.float32)})
    logger = RequestLogger("half", options(tmp_path, kind="jsonl"), queue_size=1)
    started = time.perf_counter()
    accepted = [logger.log(big) for _ in range(1000)]
    elapsed = time.perf_counter() - started
    logger.close(timeout_s=30)
    assert elapsed < 0.5
    assert logger.dropped > 0 and logger.dropped == accepted.count(False)
    assert logger.logged == accepted.count(True) and logger.errors == 0
    assert len(read_jsonl(tmp_path)) == logger.logged


def test_queued_tensor_bytes_are_bounded_too(tmp_path: Path) -> None:
    # 1.2 MB a record, 2 MB allowed: while the writer encodes the first (milliseconds), the second must wait out.
    big = predict(inputs={"x": np.random.default_rng(0).random((300_000,), np.float32)})
    logger = RequestLogger("half", options(tmp_path, kind="jsonl"), max_queued_bytes=2_000_000)
    accepted = [logger.log(big), logger.log(big)]
    logger.close(timeout_s=30)
    assert accepted == [True, False]  # one record alone always fits, however big
    assert (logger.logged, logger.dropped) == (1, 1)


def test_encoding_failures_are_counted_and_the_logger_keeps_going(tmp_path: Path) -> None:
    tfrecord = RequestLogger("half", options(tmp_path / "a"))
    assert tfrecord.log(example_request("classify", [b"\x0a\xff not a tf.Example"], None))
    tfrecord.log(predict(1))
    tfrecord.close()
    assert (tfrecord.errors, tfrecord.logged) == (1, 1)
    assert audit_fields(read_tfrecords(tmp_path / "a")[0])["request_id"] == "r1"

    jsonl = RequestLogger("half", options(tmp_path / "b", kind="jsonl"))
    assert jsonl.log(predict(0, outputs={"y": np.array([object()], dtype=object)}))
    jsonl.log(predict(1))
    jsonl.close()
    assert (jsonl.errors, jsonl.logged) == (1, 1)
    assert [line["request_id"] for line in read_jsonl(tmp_path / "b")] == ["r1"]


def test_flush_makes_queued_records_readable_and_log_after_close_is_refused(tmp_path: Path) -> None:
    logger = RequestLogger("half", options(tmp_path, kind="jsonl"))
    logger.log(predict(0))
    logger.log(predict(1))
    logger.flush()
    assert [line["request_id"] for line in read_jsonl(tmp_path)] == ["r0", "r1"]
    logger.close()
    logger.close()
    assert logger.log(predict(2)) is False
    assert (logger.logged, logger.dropped) == (2, 1)


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "prefix", "rate", "message"), [
    ("parquet", "/tmp/x/requests", 1.0, '"tfrecord" .* or "jsonl"'),
    ("", "", 1.0, "filename_prefix is required: write the path prefix"),
    ("jsonl", "/tmp/logs/", 1.0, "names a directory; add a file name prefix"),
    ("", "gs://bucket/requests", 1.0, "must be a local path"),
    ("", "/tmp/x/requests", 1.5, r"within \[0, 1\]"),
    ("", "/tmp/x/requests", float("nan"), r"within \[0, 1\]"),
])
def test_bad_logging_options_are_rejected_saying_what_to_write(kind: str, prefix: str, rate: float,
                                                                message: str) -> None:
    bad = LoggingOptions(sampling_rate=rate, collector_type=kind, filename_prefix=prefix)
    with pytest.raises(ValueError, match=message):
        check_logging_options(bad)
    with pytest.raises(ValueError, match=message):
        RequestLogger("half", bad)
