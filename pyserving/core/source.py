"""FileSystemSource: finds version directories under each model's base path and reports the aspired versions.

Leaving a version out of a report means "unload it" (reconciliation, not commands). Polling on a timer is the
lifecycle's job; `poll_once()` is the whole step, so tests can drive it deterministically.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence

from pyserving.core.version_policy import aspired_versions
from pyserving.options import ModelConfig

log = logging.getLogger("pyserving.source")

AspiredCallback = Callable[[str, Mapping[int, str]], None]


def versions_on_disk(base_path: str) -> dict[int, str]:
    """Numeric children of `base_path` (``1``, ``0001``): version -> directory. Other names are ignored."""
    found: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            if not entry.is_dir():
                continue
            # TF Serving's safe_strto64: ASCII digits only (int() would also take "+3", "1_000" and "١٢").
            if not (entry.name.isascii() and entry.name.isdigit()):
                continue
            version = int(entry.name)
            if version in found:
                log.warning(
                    "Two directories name version %d of %s (%s and %s); serving %s",
                    version, base_path, found[version], entry.path, found[version],
                )
                continue
            found[version] = entry.path
    return found


SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_SHARD = re.compile(r"variables\.data-(\d+)-of-(\d+)$")
SETTLE_S = 2.0
"""A version directory without variables/ must be this old before it is loaded (a copy may still be writing)."""
INCOMPLETE_GRACE_S = 30.0
"""An incomplete version directory untouched for this long is handed to the loader, which says what is wrong."""


def _newest_mtime(path: str) -> float:
    newest = os.stat(path).st_mtime
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def is_complete(path: str, *, now: float | None = None) -> bool:
    """Whether a version directory looks fully written: a saved_model.pb and every variables shard it names.

    Exports are usually written in place, file by file, so a poll can see a directory half-way. A directory
    that stays incomplete for INCOMPLETE_GRACE_S is reported anyway: it is broken, not being written, and the
    load error says why.
    """
    now = time.time() if now is None else now
    try:
        names = set(os.listdir(path))
        age = now - _newest_mtime(path)
    except OSError:
        return False
    if age > INCOMPLETE_GRACE_S:
        return True
    if not names.intersection(SAVED_MODEL_FILES):
        return False
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


class FileSystemSource:
    """Reports, for each configured model, the version directories its version policy aspires to."""

    def __init__(self, models: Sequence[ModelConfig], on_aspired: AspiredCallback) -> None:
        self._models = list(models)
        self._on_aspired = on_aspired
        self._waiting: set[str] = set()
        self._complete: dict[str, set[str]] = {}
        self._empty: set[str] = set()

    def set_models(self, models: Sequence[ModelConfig]) -> None:
        self._models = list(models)

    def poll_once(self) -> None:
        for model in self._models:
            try:
                on_disk = versions_on_disk(model.base_path)
            except OSError as exc:
                log.error("Cannot list base path %s of model %s: %s", model.base_path, model.name, exc)
                continue
            if not on_disk:
                # Unlike TF Serving, a base path that momentarily shows no versions unloads nothing.
                if model.name not in self._empty:
                    self._empty.add(model.name)
                    log.warning(
                        "No versions of servable %s found under base path %s. Did you forget to name your leaf "
                        "directory as a number (eg. '/1/')? Versions already loaded keep serving.",
                        model.name, model.base_path,
                    )
                continue
            self._empty.discard(model.name)
            complete = {}
            # A directory found complete is not re-examined on every poll, while it stays on disk.
            known = self._complete.setdefault(model.name, set())
            known.intersection_update(on_disk.values())
            for version, path in on_disk.items():
                if path in known or is_complete(path):
                    complete[version] = path
                    known.add(path)
                    self._waiting.discard(path)
                elif path not in self._waiting:
                    self._waiting.add(path)
                    log.info("Waiting for version directory %s to be completely written before loading it", path)
            if not complete:
                continue
            wanted = aspired_versions(model.version_policy, complete)
            self._on_aspired(model.name, {v: on_disk[v] for v in wanted})
