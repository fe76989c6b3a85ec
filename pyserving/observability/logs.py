"""Structured logs: one JSON object per line on stderr (timestamp, level, logger, event and the record's fields),
and with --log_dir the same lines in size-rotated files there.

Frameworks' own chatter (TensorFlow's C++ notices about oneDNN, CUDA and CPU instructions, its deprecation
warnings) reads like errors to a newcomer on a CPU machine; below --verbosity=DEBUG it is kept out of the output
(`quiet_framework`), at DEBUG it is let through."""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
          "ERROR": logging.ERROR, "FATAL": logging.CRITICAL,
          # glog/absl numeric severities, as TF Serving's tooling writes them
          "0": logging.INFO, "1": logging.WARNING, "2": logging.ERROR, "3": logging.CRITICAL}


# Loggers and Python modules of frameworks whose INFO/WARNING output is theirs, not the server's.
FRAMEWORK_LOGGERS = ("tensorflow", "absl", "keras", "h5py", "onnxruntime", "torch")
_FRAMEWORK_MODULES = r"(tensorflow|tf_keras|keras|absl|h5py|onnx|onnxruntime|torch|google\.protobuf)(\.|$)"

_framework_output = False
"""Let frameworks write to stderr as they please (--verbosity=DEBUG, or the user's own TF_CPP_MIN_LOG_LEVEL
below 2). False until configure() says otherwise, so embedding pyserving stays quiet too."""

log = logging.getLogger("pyserving.logs")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        line: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": fields.get("event") or record.getMessage(),
        }
        line.update((k, v) for k, v in fields.items() if k != "event")
        if not fields:
            line["message"] = line.pop("event")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


LOG_DIR_ENV = "PYSERVING_LOG_DIR"
"""--log_dir as the model process hands it to its front-end processes."""


def configure(verbosity: str = "INFO", log_dir: str = "", file_name: str = "pyserving.log") -> None:
    """Route every logger (ours, uvicorn's, grpc's) through JSON lines on stderr, and into log_dir/file_name if
    given. One process per file: a rotating file has one writer, or two would rotate it under each other."""
    level = LEVELS.get(verbosity.upper())
    if level is None:
        raise ValueError(f"--verbosity={verbosity}: use DEBUG, INFO, WARNING or ERROR")
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            os.path.join(log_dir, file_name), maxBytes=64 << 20, backupCount=5, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    _quiet_frameworks(debug=level <= logging.DEBUG)


def _quiet_frameworks(*, debug: bool) -> None:
    global _framework_output
    user_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    # The user's own setting wins; ours only fills it in before TensorFlow is imported.
    _framework_output = debug if user_level is None else user_level.strip() in ("0", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "2")
    for name in FRAMEWORK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.ERROR)
    # Python warnings become log lines (JSON, like every other line); frameworks' ones only at DEBUG.
    logging.captureWarnings(True)
    if not debug:
        warnings.filterwarnings("ignore", module=_FRAMEWORK_MODULES)


@contextmanager
def quiet_framework(what: str) -> Iterator[None]:
    """Run a framework's import (or first device probe) with file descriptor 2 captured, then log what it wrote
    at DEBUG. Needed because TensorFlow's C++ writes some notices before its logging is set up, where
    TF_CPP_MIN_LOG_LEVEL does not reach ("All log messages before absl::InitializeLog() ...", oneDNN, "Could not
    find cuda drivers", "failed call to cuInit"), once per shared library.

    Lines other threads log meanwhile (JSON lines) are written through unchanged. Short: an import's few seconds,
    or a TFLite interpreter's creation at each load. One at a time: fd 2 is the process's, and two overlapping
    swaps could leave it pointing at the other's deleted capture file, losing every later log line.
    """
    if _framework_output:
        yield
        return
    with _fd2_lock:
        with _captured_fd2(what):
            yield


_fd2_lock = threading.RLock()


@contextmanager
def _captured_fd2(what: str) -> Iterator[None]:
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith('{"timestamp"'):
                    sys.stderr.write(line + "\n")
                elif line.strip():
                    # An import that failed may have said why only here: then it is worth more than DEBUG.
                    log.log(logging.WARNING if failed else logging.DEBUG, "%s: %s", what, line)
