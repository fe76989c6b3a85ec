"""Checks of a model's logging_config (request logs), shared by config parsing and the request logger."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pyserving.options import LoggingOptions

COLLECTOR_TYPES: Mapping[str, str] = {"": "tfrecord", "tfrecord": "tfrecord", "jsonl": "jsonl"}
"""logging_config's log_collector_config.type -> the file format it writes."""


def check_logging_options(options: LoggingOptions) -> None:
    """Raise ValueError, saying what to write instead, if `options` cannot be logged with. Config loading can call
    this to reject a bad logging_config up front."""
    if options.collector_type not in COLLECTOR_TYPES:
        raise ValueError(
            f'logging_config.log_collector_config.type "{options.collector_type}" is not supported; use "tfrecord" '
            '(TF Serving PredictionLog records, also the default when empty) or "jsonl" (JSON lines)'
        )
    prefix = options.filename_prefix
    if not prefix:
        raise ValueError(
            "logging_config.log_collector_config.filename_prefix is required: write the path prefix of the log "
            'files, e.g. filename_prefix: "/var/log/pyserving/my_model/requests"'
        )
    if "://" in prefix:
        raise ValueError(f'logging_config.log_collector_config.filename_prefix "{prefix}" must be a local path; '
                         "file system URIs are not supported for request logs")
    if not os.path.basename(prefix):
        raise ValueError(f'logging_config.log_collector_config.filename_prefix "{prefix}" names a directory; add '
                         f'a file name prefix, e.g. "{os.path.join(prefix, "requests")}"')
    rate = options.sampling_rate
    if not 0.0 <= rate <= 1.0:  # also false for NaN
        raise ValueError(f"logging_config.sampling_config.sampling_rate must be within [0, 1] (the fraction of "
                         f"requests to log); was {rate}")
