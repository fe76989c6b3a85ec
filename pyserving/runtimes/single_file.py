"""When a version directory whose model is one file (model.onnx, model.pt, model.tflite, model.py) is complete.

Such files are usually copied in place, so a poll can see one half-written. There is no manifest to check it
against (unlike a SavedModel's variables shards), so the directory must have stopped changing for SETTLE_S.
"""

from __future__ import annotations

import os
import time

SETTLE_S = 2.0
"""How long nothing in the version directory may have changed before its model file is loaded."""
INCOMPLETE_GRACE_S = 30.0
"""A directory still without its model file after this long is handed to the loader, which says what is wrong."""


def newest_mtime(path: str) -> float:
    """The latest modification time of `path` and everything under it (a model may keep external data files)."""
    newest = os.stat(path).st_mtime
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:  # removed while we walk: the next poll sees the new state
                pass
    return newest


def model_file_is_complete(version_dir: str, model_files: tuple[str, ...], *, now: float | None = None,
                           also: tuple[str, ...] = ()) -> bool:
    """Whether one of `model_files` (and each of `also`) is in `version_dir` and nothing there changed for SETTLE_S
    (or the directory has been left incomplete for INCOMPLETE_GRACE_S: broken, not being written)."""
    now = time.time() if now is None else now
    try:
        names = set(os.listdir(version_dir))
        age = now - newest_mtime(version_dir)
    except OSError:
        return False
    if names.intersection(model_files) and names.issuperset(also):
        return age > SETTLE_S
    return age > INCOMPLETE_GRACE_S


def find_model_file(version_dir: str, model_files: tuple[str, ...]) -> str | None:
    """The first of `model_files` present in `version_dir`, as a path."""
    for name in model_files:
        path = os.path.join(version_dir, name)
        if os.path.isfile(path):
            return path
    return None
