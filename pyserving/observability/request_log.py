"""Request logging: a sampled record of each request's inputs, outputs, latency and model version, for audit.

TF Serving's per-model `logging_config { sampling_config { sampling_rate } log_collector_config { type
filename_prefix } }` names a log collector that its open-source build does not have (the config fails to load).
Here it works, with two collectors, chosen by `type`:

* `""` or `"tfrecord"`: TFRecord files of `tensorflow.serving.PredictionLog`, TF Serving's own log format, so a
  log file can be copied to `<version>/assets.extra/tf_serving_warmup_requests` and replayed as warm-up. What
  PredictionLog has no field for (latency, status code, protocol, request id, the sub-second timestamp) rides in
  field `AUDIT_FIELD` of the PredictionLog as a `google.protobuf.Struct`; protobuf parsers skip fields they do not
  know, so TF Serving and `tf.make_ndarray` readers are unaffected. `audit_fields(entry)` reads it back.
* `"jsonl"`: one JSON object per line (see `RequestLogger` for the keys).

Files are `<filename_prefix>.<UTC yyyymmdd-HHMMSS>.<n>.tfrecord|.jsonl`, rotated by size and kept to a count.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import queue
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import orjson

from pyserving.codecs.tfrecord import FRAMING_BYTES, TFRecordWriter
from pyserving.codecs.tfserving.protos import example_pb2, prediction_log_pb2
from pyserving.codecs.tfserving.results import fill_classifications, fill_regressions
from pyserving.codecs.tfserving.tensor import to_proto
from pyserving.config.logging_options import COLLECTOR_TYPES, check_logging_options
from pyserving.options import LoggingOptions

log = logging.getLogger("pyserving.request_log")

Api = Literal["predict", "classify", "regress", "multi_inference"]
AUDIT_FIELD = 424242
"""PredictionLog field number (unused by TF Serving) that holds pyserving's audit fields as a protobuf Struct."""
REDACTED = "<redacted>"
_ERROR_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedRequest:
    """One finished request (failed ones too), as the service saw it.

    * predict: `inputs` and `outputs` are the tensors by alias (DT_STRING as object arrays of bytes); `outputs`
      is None when the request failed.
    * classify / regress: `examples` are the serialized tf.Examples (context merged in); `results` is
      `list[list[tuple[bytes, float]]]` (per example, its (label, score) pairs) or `list[float]`.
    * multi_inference: `examples` as above; `results` is one `(signature_name, method_name, result)` per task,
      `result` as for classify / regress, or None when the request failed before that task ran.

    The arrays are encoded later, on the logger's thread: a caller must not modify them after logging.
    """

    model: str
    version: int
    signature: str
    api: Api
    inputs: Mapping[str, np.ndarray] | None = None
    outputs: Mapping[str, np.ndarray] | None = None
    examples: Sequence[bytes] | None = None
    results: Any = None
    latency_s: float
    code: str = "OK"
    """"OK" or the error code's name ("INVALID_ARGUMENT", ...)."""
    protocol: Literal["rest", "grpc"]
    timestamp: float
    """time.time() when the request arrived."""
    request_id: str = ""
    principal: str = ""
    """Who made the request (API key name or JWT subject; "" without authentication)."""


class _Sink(Protocol):
    """An open log file: a TFRecordWriter or a binary file."""

    def write(self, data: bytes, /) -> Any: ...

    def flush(self) -> Any: ...

    def close(self) -> Any: ...


class _Stop:
    pass


_STOP = _Stop()


class RequestLogger:
    """Writes one model's sampled requests to rotating files. Owns its queue, its writer thread and its files.

    Concurrency: `log()` is for the event loop (any thread works; the counters it keeps are then approximate): it
    samples, then `put_nowait`s onto a queue bounded in records (`queue_size`) and in tensor bytes
    (`max_queued_bytes`), so it never blocks and never raises; a full queue drops the record (counted in
    `dropped`). One daemon writer thread encodes and writes; an encoding or I/O failure is
    counted in `errors` and logged (at most once a minute), never raised into a request. `flush()` and `close()`
    block (for tests and shutdown): never call them on the event loop while it serves.

    Files: `<filename_prefix>.<UTC yyyymmdd-HHMMSS>.<n>.<tfrecord|jsonl>`, parent directories created, the first
    one opened on the first record written. A file is rotated before it would exceed `max_file_bytes` (a single
    larger record gets a file of its own); at most `max_files` files with this prefix are kept, counting those of
    earlier runs, and the oldest are deleted. Give each model its own prefix.

    JSON lines carry: model, version, signature, api, protocol, code, latency_ms, timestamp (ISO 8601 UTC),
    request_id, principal, inputs / outputs (alias -> nested lists, bytes as {"b64": ...}), examples (base64 strings),
    results (classify: [[[label, score], ...], ...], labels as text or {"b64": ...}; regress: [value, ...];
    multi_inference: [{"signature", "method", "result"}, ...]); absent parts are null.

    `redact`: input/output aliases (and tf.Example feature names) whose values are never written: JSON shows
    "<redacted>", TFRecord an empty DT_STRING scalar (and an empty feature). A log with redacted inputs no longer
    replays as warm-up.
    """

    def __init__(
        self,
        model: str,
        options: LoggingOptions,
        *,
        max_file_bytes: int = 64 << 20,
        max_files: int = 10,
        queue_size: int = 1024,
        max_queued_bytes: int = 256 << 20,
        redact: Collection[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        check_logging_options(options)
        if min(max_file_bytes, max_files, queue_size, max_queued_bytes) < 1:
            raise ValueError(f"max_file_bytes, max_files, queue_size and max_queued_bytes must be at least 1; were "
                             f"{max_file_bytes}, {max_files}, {queue_size} and {max_queued_bytes}")
        self.model = model
        self.options = options
        self.format = COLLECTOR_TYPES[options.collector_type]
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.redact = frozenset(redact)
        self.logged = 0
        """Records written (writer thread)."""
        self.dropped = 0
        """Sampled-in records not queued because the queue was full or the logger closed (log())."""
        self.sampled_out = 0
        """Records the sampling left out (log())."""
        self.errors = 0
        """Records lost to encoding or I/O failures (writer thread)."""
        self._rate = options.sampling_rate
        self._random = (rng or random.Random()).random
        self._queue: queue.Queue[tuple[LoggedRequest, int] | threading.Event | _Stop] = queue.Queue(queue_size)
        self._max_queued_bytes = max_queued_bytes
        # Tensor bytes queued, as two single-writer totals (log() adds, the writer retires): no lock needed.
        self._bytes_in = 0
        self._bytes_out = 0
        self._closed = False
        self._encode: Callable[[LoggedRequest], bytes] = (
            self._encode_tfrecord if self.format == "tfrecord" else self._encode_jsonl
        )
        self._extension = "." + self.format
        self._framing = FRAMING_BYTES if self.format == "tfrecord" else 0
        self._sink: _Sink | None = None
        self._sink_bytes = 0
        self._files: deque[str] | None = None  # oldest first; None until the first file is opened
        self._next_index = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL_S
        self._thread: threading.Thread | None = None
        if self._rate > 0.0:  # a logger that logs nothing needs no thread
            self._thread = threading.Thread(target=self._write_loop, name=f"request-log:{model}", daemon=True)
            self._thread.start()

    # --- the request path -------------------------------------------------------------------------------------

    def log(self, record: LoggedRequest) -> bool:
        """Sample `record` and queue it for writing. True if it was sampled in and queued. Never blocks or raises."""
        rate = self._rate
        if rate <= 0.0 or (rate < 1.0 and self._random() >= rate):
            self.sampled_out += 1
            return False
        if self._closed:
            self.dropped += 1
            return False
        size = _payload_bytes(record)
        queued = self._bytes_in - self._bytes_out
        if queued and queued + size > self._max_queued_bytes:  # one record alone always fits
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait((record, size))
        except queue.Full:
            self.dropped += 1
            return False
        self._bytes_in += size
        return True

    # --- blocking control (tests, shutdown) -------------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every record queued so far is written and the file flushed, or `timeout_s` passes."""
        if self._thread is None or not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout_s
        done = threading.Event()
        try:
            self._queue.put(done, timeout=max(timeout_s, 0.0))
        except queue.Full:
            log.warning("Request log of model %s: flush timed out after %.1f s (queue full)", self.model, timeout_s)
            return
        if not done.wait(max(deadline - time.monotonic(), 0.0)):
            log.warning("Request log of model %s: flush timed out after %.1f s", self.model, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking records, write those already queued, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(_STOP, timeout=max(timeout_s, 0.0))
        except queue.Full:
            log.warning("Request log of model %s: close timed out with records still queued", self.model)
            return
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            log.warning("Request log of model %s: close timed out after %.1f s", self.model, timeout_s)

    # --- the writer thread ------------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _Stop):
                    return
                if isinstance(item, threading.Event):
                    self._flush_sink()
                    item.set()
                    continue
                record, size = item
                self._write_record(record)
                self._bytes_out += size
                if self._queue.empty():  # a quiet moment: make what was written readable
                    self._flush_sink()
        finally:
            self._close_sink()

    def _write_record(self, record: LoggedRequest) -> None:
        try:
            data = self._encode(record)
        except Exception as exc:
            self._error("could not encode a request", exc)
            return
        try:
            self._write(data)
        except Exception as exc:
            self._close_sink()  # the next record opens a fresh file
            self._error("could not write a request", exc)
            return
        self.logged += 1

    def _error(self, what: str, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.warning("Request log of model %s %s (%d lost so far): %s: %s", self.model, what, self.errors,
                        type(exc).__name__, exc)

    def _write(self, data: bytes) -> None:
        size = len(data) + self._framing
        if self._sink is not None and self._sink_bytes and self._sink_bytes + size > self.max_file_bytes:
            self._close_sink()
        if self._sink is None:
            self._open_sink()
        assert self._sink is not None
        self._sink.write(data)
        self._sink_bytes += size

    def _open_sink(self) -> None:
        prefix = self.options.filename_prefix
        directory = os.path.dirname(prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self._files is None:
            self._files = deque(self._existing_files())
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        while True:
            path = f"{prefix}.{stamp}.{self._next_index}{self._extension}"
            self._next_index += 1
            if not os.path.exists(path):
                break
        sink: _Sink
        if self.format == "tfrecord":
            sink = TFRecordWriter(path)
        else:
            sink = open(path, "xb")  # noqa: SIM115 - closed by _close_sink
        self._sink, self._sink_bytes = sink, 0
        self._files.append(path)
        while len(self._files) > self.max_files:
            oldest = self._files.popleft()
            try:
                os.remove(oldest)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("Request log of model %s could not delete old log file %s: %s", self.model, oldest, exc)

    def _existing_files(self) -> list[str]:
        """Log files an earlier run left with this prefix, oldest first: they count towards max_files."""
        prefix = self.options.filename_prefix
        directory = os.path.dirname(prefix) or "."
        stem = re.escape(os.path.basename(prefix))
        pattern = re.compile(stem + r"\.(\d{8}-\d{6})\.(\d+)" + re.escape(self._extension))
        found: list[tuple[str, int, str]] = []
        for name in os.listdir(directory):
            match = pattern.fullmatch(name)
            if match:
                found.append((match.group(1), int(match.group(2)), os.path.join(os.path.dirname(prefix), name)))
        if found:  # keep numbering past theirs, so names sort oldest first even within one second
            self._next_index = max(self._next_index, 1 + max(index for _, index, _ in found))
        return [path for _, _, path in sorted(found)]

    def _flush_sink(self) -> None:
        if self._sink is not None:
            try:
                self._sink.flush()
            except Exception as exc:
                log.warning("Request log of model %s could not flush: %s", self.model, exc)

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception as exc:
                log.warning("Request log of model %s could not close its file: %s", self.model, exc)

    # --- encoding: TFRecord of PredictionLog ------------------------------------------------------------------

    def _encode_tfrecord(self, record: LoggedRequest) -> bytes:
        from google.protobuf import struct_pb2

        entry = prediction_log_pb2.PredictionLog()
        metadata = entry.log_metadata
        spec = metadata.model_spec
        spec.name = record.model
        spec.version.value = record.version
        spec.signature_name = record.signature
        metadata.sampling_config.sampling_rate = self._rate
        metadata.timestamp_secs = int(record.timestamp)

        def tensor(alias: str, value: np.ndarray) -> Any:
            if alias in self.redact:
                return to_proto(np.array(b"", dtype=object))
            return _tensor_proto(value)

        if record.api == "predict":
            entry.predict_log.SetInParent()  # a failed request with no inputs is still a predict_log
            request = entry.predict_log.request
            request.model_spec.CopyFrom(spec)
            for alias, value in (record.inputs or {}).items():
                request.inputs[alias].CopyFrom(tensor(alias, value))
            response = entry.predict_log.response
            if record.outputs is not None:
                response.model_spec.CopyFrom(spec)
                for alias, value in record.outputs.items():
                    response.outputs[alias].CopyFrom(tensor(alias, value))
        elif record.api in ("classify", "regress"):
            part = entry.classify_log if record.api == "classify" else entry.regress_log
            part.request.model_spec.CopyFrom(spec)
            self._fill_examples(part.request.input, record.examples)
            part.SetInParent()
            if record.results is not None:
                part.response.model_spec.CopyFrom(spec)
                if record.api == "classify":
                    fill_classifications(part.response.result, record.results)
                else:
                    fill_regressions(part.response.result, record.results)
        elif record.api == "multi_inference":
            request = entry.multi_inference_log.request
            self._fill_examples(request.input, record.examples)
            response = entry.multi_inference_log.response
            for signature, method, result in record.results or ():
                task = request.tasks.add(method_name=method)
                task.model_spec.CopyFrom(spec)
                task.model_spec.signature_name = signature
                if result is None:
                    continue
                answer = response.results.add()
                answer.model_spec.CopyFrom(task.model_spec)
                if method.endswith("/classify"):
                    fill_classifications(answer.classification_result, result)
                else:
                    fill_regressions(answer.regression_result, result)
            entry.multi_inference_log.SetInParent()
        else:
            raise ValueError(f"unknown api {record.api!r}")

        audit = struct_pb2.Struct()
        audit.update({"api": record.api, "protocol": record.protocol, "code": record.code,
                      "latency_ms": record.latency_s * 1000.0, "timestamp": record.timestamp,
                      "request_id": record.request_id, "principal": record.principal})
        extra = audit.SerializeToString()
        return entry.SerializeToString() + _AUDIT_TAG + _varint(len(extra)) + extra

    def _fill_examples(self, request_input: Any, examples: Sequence[bytes] | None) -> None:
        target = request_input.example_list
        target.SetInParent()
        for serialized in examples or ():
            example = target.examples.add()
            example.ParseFromString(serialized)
            self._redact_example(example)

    def _redact_example(self, example: Any) -> None:
        if self.redact:
            features = example.features.feature
            for name in self.redact.intersection(features):
                features[name].Clear()

    # --- encoding: JSON lines ---------------------------------------------------------------------------------

    def _encode_jsonl(self, record: LoggedRequest) -> bytes:
        timestamp = datetime.datetime.fromtimestamp(record.timestamp, tz=datetime.UTC)
        doc = {
            "model": record.model,
            "version": record.version,
            "signature": record.signature,
            "api": record.api,
            "protocol": record.protocol,
            "code": record.code,
            "latency_ms": record.latency_s * 1000.0,
            "timestamp": timestamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "request_id": record.request_id,
            "principal": record.principal,
            "inputs": self._json_tensors(record.inputs),
            "outputs": self._json_tensors(record.outputs),
            "examples": self._json_examples(record.examples),
            "results": _json_results(record.api, record.results),
        }
        return orjson.dumps(doc, default=_json_default,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)

    def _json_tensors(self, tensors: Mapping[str, np.ndarray] | None) -> dict[str, Any] | None:
        if tensors is None:
            return None
        return {alias: REDACTED if alias in self.redact else value for alias, value in tensors.items()}

    def _json_examples(self, examples: Sequence[bytes] | None) -> list[str] | None:
        if examples is None:
            return None
        if self.redact:
            redacted = []
            for serialized in examples:
                example = example_pb2.Example.FromString(serialized)
                self._redact_example(example)
                redacted.append(example.SerializeToString())
            examples = redacted
        return [base64.b64encode(e).decode("ascii") for e in examples]


class RequestLoggers:
    """The request logger of each model that has a logging_config. Replaced whole on a config reload, so the
    event loop reads a plain dict; unchanged loggers are kept (their files stay open)."""

    def __init__(self) -> None:
        self._loggers: dict[str, RequestLogger] = {}
        self._options: dict[str, LoggingOptions] = {}

    def get(self, model: str) -> RequestLogger | None:
        return self._loggers.get(model)

    def update(self, models: Sequence[Any]) -> list[RequestLogger]:
        """Loggers for `models` (objects with `name` and `logging`); returns the retired ones, which the caller
        closes off the event loop (closing flushes files)."""
        wanted = {m.name: m.logging for m in models if m.logging is not None and m.logging.sampling_rate > 0}
        loggers: dict[str, RequestLogger] = {}
        for name, options in wanted.items():
            old = self._loggers.get(name)
            if old is not None and self._options.get(name) == options:
                loggers[name] = old
            else:
                loggers[name] = RequestLogger(name, options)
                self._options[name] = options
        retired = [logger for name, logger in self._loggers.items() if loggers.get(name) is not logger]
        self._loggers = loggers
        return retired


def _payload_bytes(record: LoggedRequest) -> int:
    """About how much memory a queued record holds on to (object arrays count their pointers only)."""
    try:
        size = sum(value.nbytes for value in (record.inputs or {}).values())
        size += sum(value.nbytes for value in (record.outputs or {}).values())
        return size + sum(len(example) for example in record.examples or ())
    except Exception:  # not arrays / bytes: the writer will count it as an encoding error
        return 0


def audit_fields(entry: Any) -> dict[str, Any]:
    """What a PredictionLog written here carries beyond TF Serving's fields: api, protocol, code, latency_ms,
    timestamp (seconds since the epoch, as a float), request_id and principal. Empty for a log written elsewhere."""
    from google.protobuf import struct_pb2, unknown_fields

    for field in unknown_fields.UnknownFieldSet(entry):
        if field.field_number == AUDIT_FIELD and field.wire_type == 2:
            audit = struct_pb2.Struct.FromString(field.data)
            return {key: audit[key] for key in audit.keys()}
    return {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_AUDIT_TAG = _varint(AUDIT_FIELD << 3 | 2)  # wire type 2: length-delimited


def _tensor_proto(value: Any) -> Any:
    """Numbers in tensor_content (compact, and what tf.make_tensor_proto writes); strings in string_val."""
    array = np.asarray(value)
    if array.dtype.byteorder not in "=|":  # TensorProto holds native (little-endian) numbers
        array = array.astype(array.dtype.newbyteorder("="))
    return to_proto(array, tensor_content=array.dtype.kind in "biuc" or array.dtype in (np.float32, np.float64))


def _json_label(label: bytes | str) -> Any:
    if isinstance(label, bytes):
        try:
            return label.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(label).decode("ascii")}
    return label


def _json_result(api: str, result: Any) -> Any:
    if result is None:
        return None
    if api.endswith("classify"):
        return [[[_json_label(label), float(score)] for label, score in per_example] for per_example in result]
    return [float(value) for value in result]


def _json_results(api: str, results: Any) -> Any:
    if results is None:
        return None
    if api == "multi_inference":
        return [{"signature": signature, "method": method, "result": _json_result(method, result)}
                for signature, method, result in results]
    return _json_result(api, results)


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: bytes, object / float16 / non-contiguous arrays, numpy scalars."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, complex):
        return [value.real, value.imag]
    raise TypeError(f"cannot write a {type(value).__name__} to a JSON request log")
