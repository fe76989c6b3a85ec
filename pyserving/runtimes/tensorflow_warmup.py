"""TF Serving's warm-up: replay `assets.extra/tf_serving_warmup_requests` before a version serves.

The file is a TFRecord of tensorflow.serving.PredictionLog. Predict, classify, regress and multi-inference records
are replayed (each `iterations` times); any failure fails the load, so a version never serves half-warm. Every
runtime's servable replays it (the manager calls `Servable.warm_up` after a load), and nothing here needs
TensorFlow: the file is read by codecs.tfrecord.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping

from pyserving.codecs.tfrecord import TFRecordError, read_records
from pyserving.codecs.tfserving.examples import serialized_examples
from pyserving.codecs.tfserving.protos import prediction_log_pb2
from pyserving.codecs.tfserving.tensor import to_ndarray
from pyserving.errors import Code, ServingError
from pyserving.runtimes.base import RunFn, Signature, check_inputs, examples_tensor, find_signature, select_outputs

log = logging.getLogger("pyserving.warmup")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def _records(path: str) -> Iterator[bytes]:
    try:
        yield from read_records(path)
    except (TFRecordError, OSError) as exc:
        why = str(exc) if isinstance(exc, TFRecordError) else exc.strerror or str(exc)
        raise ServingError(
            Code.DATA_LOSS,
            f"Failed to read warmup record from {path}: {why}. Please verify your warmup data is in "
            "TFRecord format.",
        ) from None


def _replay(signatures: Mapping[str, Signature], run: RunFn, entry: prediction_log_pb2.PredictionLog) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        sig = find_signature(signatures, request.model_spec.signature_name)
        check_inputs(sig, request.inputs)  # TF Serving replays through its Predict path, with its wording
        outputs = select_outputs(sig, request.output_filter)
        inputs = {alias: to_ndarray(alias, proto) for alias, proto in request.inputs.items()}
        run(sig.name, inputs, outputs)
    elif kind in ("classify_log", "regress_log"):
        request = getattr(entry, kind).request
        sig = find_signature(signatures, request.model_spec.signature_name)
        run(sig.name, {next(iter(sig.inputs)): examples_tensor(serialized_examples(request.input))}, sorted(sig.outputs))
    elif kind == "multi_inference_log":
        request = entry.multi_inference_log.request
        batch = examples_tensor(serialized_examples(request.input))
        for task in request.tasks:
            sig = find_signature(signatures, task.model_spec.signature_name)
            run(sig.name, {next(iter(sig.inputs)): batch}, sorted(sig.outputs))
    else:
        raise ServingError(Code.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")


def warm_up(signatures: Mapping[str, Signature], run: RunFn, model_dir: str, iterations: int) -> int:
    """Replay the version's warm-up records; returns how many records there were (0 without a file)."""
    path = os.path.join(model_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        log.info("No warmup data file found at %s", path)
        return 0
    count = 0
    for record in _records(path):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
            )
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(record)
        except Exception:
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to parse warmup record {count} of {path} as a PredictionLog") from None
        try:
            for _ in range(max(iterations, 1)):
                _replay(signatures, run, entry)
        except ServingError as exc:
            raise ServingError(exc.code, f"Warmup record {count} of {path} failed: {exc.message}") from None
        except Exception as exc:
            raise ServingError(
                Code.INVALID_ARGUMENT, f"Warmup record {count} of {path} failed: {type(exc).__name__}: {exc}"
            ) from None
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, count)
    return count
