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


def versions_on_disk(base_path: str) -> dict[int, str]:
    """Numeric children of `base_path` (``1``, ``0001``): version -> directory. Other names are ignored."""
    found: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            if not entry.is_dir():
                continue
            try:
                version = int(entry.name)
            except ValueError:
                continue
            if version < 0:
                continue
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

    def __init__(self, models: Sequence[ModelConfig], on_aspired: AspiredCallback) -> None:
        self._models = list(models)
        self._on_aspired = on_aspired

    def poll_once(self) -> None:
        for model in self._models:
            try:
                on_disk = versions_on_disk(model.base_path)
            except OSError as exc:
                log.error("Cannot list base path %s of model %s: %s", model.base_path, model.name, exc)
                continue
            if not on_disk:
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget to name your leaf "
                    "directory as a number (eg. '/1/')?", model.name, model.base_path,
                )
                continue
            wanted = aspired_versions(model.version_policy, on_disk)
            self._on_aspired(model.name, {v: on_disk[v] for v in wanted})
