"""Structured logs: one JSON object per line on stderr (timestamp, level, logger, event and the record's fields),
and with --log_dir the same lines in size-rotated files there."""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import os
import sys
from typing import Any

import orjson

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
          "ERROR": logging.ERROR, "FATAL": logging.CRITICAL,
          # glog/absl numeric severities, as TF Serving's tooling writes them
          "0": logging.INFO, "1": logging.WARNING, "2": logging.ERROR, "3": logging.CRITICAL}


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


def configure(verbosity: str = "INFO", log_dir: str = "") -> None:
    """Route every logger (ours, uvicorn's, grpc's) through JSON lines on stderr, and into log_dir if given."""
    level = LEVELS.get(verbosity.upper())
    if level is None:
        raise ValueError(f"--verbosity={verbosity}: use DEBUG, INFO, WARNING or ERROR")
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            os.path.join(log_dir, "pyserving.log"), maxBytes=64 << 20, backupCount=5, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
