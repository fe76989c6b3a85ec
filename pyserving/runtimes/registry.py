"""Platform name -> runtime object, imported on first use so `pyserving --help` never imports TensorFlow."""

from __future__ import annotations

import importlib

from pyserving.errors import Code, ServingError
from pyserving.platforms import PLATFORMS
from pyserving.runtimes.base import Runtime

_loaded: dict[str, Runtime] = {}


def get_runtime(platform: str) -> Runtime:
    """The runtime for `platform`, created once per process."""
    runtime = _loaded.get(platform)
    if runtime is None:
        target = PLATFORMS.get(platform)
        if target is None:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Unsupported model_platform: {platform!r}. Supported platforms: {', '.join(sorted(PLATFORMS))}.",
            )
        module_name, _, class_name = target.partition(":")
        runtime = getattr(importlib.import_module(module_name), class_name)()
        _loaded[platform] = runtime
    return runtime


def prepare_runtime(platform: str) -> None:
    """Do a runtime's one-time work (importing its framework) before models load; see Server.start."""
    prepare = getattr(get_runtime(platform), "prepare", None)
    if prepare is not None:
        prepare()
