"""The TensorFlow runtime: SavedModels, served the way TF Serving serves them.

This module stays free of TensorFlow (it decides when a version directory is complete, on every poll); `load`
imports the framework, in `tensorflow_session`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time

from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import Servable, import_framework
from pyserving.runtimes.single_file import INCOMPLETE_GRACE_S, SETTLE_S, newest_mtime

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
TFLITE_FILE = "model.tflite"
_SHARD = re.compile(r"variables\.data-(\d+)-of-(\d+)$")


def saved_model_is_complete(path: str, *, now: float | None = None) -> bool:
    """Whether a version directory looks fully written: a saved_model.pb and every variables shard it names.

    Exports are usually written in place, file by file, so a poll can see a directory half-way. A directory
    that stays incomplete for INCOMPLETE_GRACE_S is reported anyway: it is broken, not being written, and the
    load error says why.
    """
    now = time.time() if now is None else now
    try:
        names = set(os.listdir(path))
        age = now - newest_mtime(path)
    except OSError:
        return False
    if age > INCOMPLETE_GRACE_S:
        return True
    if not names.intersection(SAVED_MODEL_FILES):
        # A TFLite-only version (served with --prefer_tflite_model): one file, complete once it stopped changing
        return TFLITE_FILE in names and age > SETTLE_S
    variables = os.path.join(path, "variables")
    files = set(os.listdir(variables)) if os.path.isdir(variables) else set()
    if not files:  # a graph without variables (or variables/ not written yet): wait for the writes to settle
        return age > SETTLE_S
    if "variables.index" not in files:
        return False
    shards = [m for m in map(_SHARD.match, files) if m]
    if not shards:
        return False
    total = int(shards[0].group(2))
    return {int(m.group(1)) for m in shards if int(m.group(2)) == total} == set(range(total))


class TensorFlowRuntime:
    """Loads SavedModels (TF1 and TF2) with the tag set from --saved_model_tags."""

    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        return saved_model_is_complete(version_dir, now=now)

    def prepare(self) -> None:
        """Import TensorFlow now (~2 s, ~300k objects), so that the server can freeze it out of garbage collection
        before any model is loaded. Without TensorFlow installed this does nothing: each TensorFlow model's load
        then fails, naming the model and what to install, while the other models serve."""
        if importlib.util.find_spec("tensorflow") is not None:
            import pyserving.runtimes.tensorflow_session  # noqa: F401

    def load(self, path: str, options: RuntimeOptions) -> Servable:
        if options.prefer_tflite_model and os.path.isfile(os.path.join(path, TFLITE_FILE)):
            # TF Serving's --prefer_tflite_model: model.tflite when there is one, else the SavedModel
            from pyserving.runtimes.tflite import TfLiteServable

            return TfLiteServable(path, options)
        import_framework("tensorflow", "TensorFlow", "tensorflow", path)
        from pyserving.runtimes.tensorflow_session import TensorFlowServable

        return TensorFlowServable(path, options)
