"""The "auto" platform: each version directory is served by the runtime its files call for, so one model's
versions may move from one framework to another (a SavedModel today, an ONNX export tomorrow).

It is an explicit choice (`model_platform: "auto"`): TF Serving's default, an empty model_platform, stays
"tensorflow". Detection looks only at file names, in this order: saved_model.pb(txt) -> tensorflow (which serves
model.tflite instead under --prefer_tflite_model), model.onnx -> onnx, model.pt2 / model.pt -> pytorch,
model.tflite -> tflite, model.py -> python (still only with --allow_python_models), model.json -> memory.
"""

from __future__ import annotations

import os
import time

from pyserving.errors import Code, ServingError
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import Servable
from pyserving.runtimes.registry import get_runtime
from pyserving.runtimes.single_file import INCOMPLETE_GRACE_S, newest_mtime

DETECTION: tuple[tuple[str, str], ...] = (
    ("saved_model.pb", "tensorflow"),
    ("saved_model.pbtxt", "tensorflow"),
    ("model.onnx", "onnx"),
    ("model.pt2", "pytorch"),
    ("model.pt", "pytorch"),
    ("model.tflite", "tflite"),
    ("model.py", "python"),
    ("model.json", "memory"),
)


def detect_platform(version_dir: str) -> str | None:
    """The platform whose model file `version_dir` holds, or None when it holds none of them (yet)."""
    try:
        names = set(os.listdir(version_dir))
    except OSError:
        return None
    return next((platform for file, platform in DETECTION if file in names), None)


class AutoRuntime:
    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        platform = detect_platform(version_dir)
        if platform is not None:
            return get_runtime(platform).is_complete(version_dir, now=now)
        # No model file yet: being written, unless it has stayed so long that it is broken (load says why)
        try:
            age = (time.time() if now is None else now) - newest_mtime(version_dir)
        except OSError:
            return False
        return age > INCOMPLETE_GRACE_S

    def load(self, path: str, options: RuntimeOptions) -> Servable:
        platform = detect_platform(path)
        if platform is None:
            files = ", ".join(dict.fromkeys(file for file, _ in DETECTION))
            raise ServingError(Code.NOT_FOUND, f"model_platform auto found no model in {path}: it looks for one "
                                               f"of {files}.")
        return get_runtime(platform).load(path, options)
