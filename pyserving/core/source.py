"""FileSystemSource: finds version directories under each model's base path and reports the aspired versions.

Leaving a version out of a report means "unload it" (reconciliation, not commands). Polling on a timer is the
lifecycle's job; `poll_once()` is the whole step, so tests can drive it deterministically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from pyserving.core.version_policy import aspired_versions
from pyserving.options import ModelConfig

log = logging.getLogger("pyserving.source")

AspiredCallback = Callable[[str, Mapping[int, str]], None]
CompletenessCheck = Callable[[ModelConfig, str], bool]
"""(model, version directory) -> whether it is completely written: the model's runtime knows its files."""


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


class FileSystemSource:
    """Reports, for each configured model, the version directories its version policy aspires to."""

    def __init__(
        self, models: Sequence[ModelConfig], on_aspired: AspiredCallback, is_complete: CompletenessCheck
    ) -> None:
        self._models = list(models)
        self._on_aspired = on_aspired
        self._is_complete = is_complete
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
                if path in known or self._is_complete(model, path):
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
