"""Platform name -> runtime class, imported on first use so `pyserving --help` never imports TensorFlow."""

from __future__ import annotations

import importlib

from pyserving.errors import Code, ServingError
from pyserving.runtimes.base import Runtime

RUNTIMES: dict[str, str] = {
    "tensorflow": "pyserving.runtimes.tensorflow:TensorFlowRuntime",
}

_loaded: dict[str, Runtime] = {}


def get_runtime(platform: str) -> Runtime:
    """The runtime for `platform`, created once per process."""
    runtime = _loaded.get(platform)
    if runtime is None:
        target = RUNTIMES.get(platform)
        if target is None:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Unsupported model_platform: {platform!r}. Supported platforms: {', '.join(sorted(RUNTIMES))}.",
            )
        module_name, _, class_name = target.partition(":")
        runtime = getattr(importlib.import_module(module_name), class_name)()
        _loaded[platform] = runtime
    return runtime
