"""The "memory" platform: a model described by a JSON file, run with numpy alone.

It exists so the server can be tested (and its own cost measured) without any framework: core tests, canary and
lifecycle tests, benchmarks of pure server overhead. A version directory holds `model.json`:

    {"signatures": {"serving_default": {
        "inputs":  {"x": {"dtype": "DT_FLOAT", "shape": [-1, 1]}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 1]}},
        "method_name": "tensorflow/serving/predict"}},
     "function": "affine", "scale": 0.5, "offset": 2.0, "delay_ms": 0}

Every output of a signature is `scale * input + offset` of its first input (cast to the output's dtype),
computed after sleeping `delay_ms`. `"fail_above": 0.5` makes a call whose input holds a value >= 0.5 fail with
INVALID_ARGUMENT (a model that refuses some inputs, for rollback tests). `"function": "identity"` is scale 1,
offset 0. A missing or unreadable file is a load error, like a SavedModel without saved_model.pb.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import PREDICT_METHOD, RunFn, Signature, TensorSpec

MODEL_FILE = "model.json"
INCOMPLETE_GRACE_S = 30.0


def _spec(alias: str, raw: Mapping[str, Any]) -> TensorSpec:
    shape = raw.get("shape")
    return TensorSpec(
        dtype=DType[raw.get("dtype", "DT_FLOAT")],
        shape=None if shape is None else tuple(None if d is None or d < 0 else int(d) for d in shape),
        tensor_name=raw.get("tensor_name", f"{alias}:0"),
    )


def write_model(version_dir: str, spec: Mapping[str, Any]) -> None:
    """Write a memory model's version directory (tests and benchmarks build models with this)."""
    os.makedirs(version_dir, exist_ok=True)
    tmp = os.path.join(version_dir, f".{MODEL_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    os.replace(tmp, os.path.join(version_dir, MODEL_FILE))


class MemoryServable:
    """Thread-safe: `run` keeps no state but a call counter."""

    def __init__(self, path: str) -> None:
        self._path = path
        file = os.path.join(path, MODEL_FILE)
        try:
            with open(file, encoding="utf-8") as f:
                spec = json.load(f)
            self.signatures: Mapping[str, Signature] = {
                name: Signature(
                    name=name,
                    method_name=raw.get("method_name", PREDICT_METHOD),
                    inputs={k: _spec(k, v) for k, v in raw["inputs"].items()},
                    outputs={k: _spec(k, v) for k, v in raw["outputs"].items()},
                )
                for name, raw in spec["signatures"].items()
            }
            function = spec.get("function", "affine")
            if function not in ("affine", "identity"):
                raise ValueError(f'unknown function "{function}"; use "affine" or "identity"')
            affine = function == "affine"
            self._scale = float(spec.get("scale", 1.0)) if affine else 1.0
            self._offset = float(spec.get("offset", 0.0)) if affine else 0.0
            self._delay_s = float(spec.get("delay_ms", 0)) / 1000
            self._fail_above = spec.get("fail_above")
        except FileNotFoundError:
            raise ServingError(
                Code.NOT_FOUND, f"Could not find {MODEL_FILE} at supplied export directory path: {path}."
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServingError(Code.INVALID_ARGUMENT, f"Cannot read memory model {file}: {exc!r}") from None
        self._lock = threading.Lock()
        self.calls = 0

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls += 1
        if self._delay_s:
            time.sleep(self._delay_s)
        sig = self.signatures[signature]
        for i, (alias, spec) in enumerate(sig.inputs.items()):
            array = inputs.get(alias)
            if array is not None and (array.dtype.kind == "O") != (spec.dtype == DType.DT_STRING):
                sent = "string" if array.dtype.kind == "O" else DType.from_numpy(array.dtype).short_name
                # TF's words when a Session is fed the wrong type
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"Expects arg[{i}] to be {spec.dtype.short_name} but {sent} is provided")
        first = inputs[next(iter(sig.inputs))] if sig.inputs else np.zeros(0, np.float32)
        if self._fail_above is not None and first.size and np.any(first >= self._fail_above):
            raise ServingError(Code.INVALID_ARGUMENT, f"memory model refuses inputs >= {self._fail_above}")
        out: dict[str, np.ndarray] = {}
        for key in output_keys:
            dtype = sig.outputs[key].dtype
            if dtype == DType.DT_STRING:
                out[key] = first.copy()
            else:
                out[key] = (first * self._scale + self._offset).astype(dtype.numpy)
        return out

    def warm_up(self, run: RunFn, iterations: int) -> int:
        from pyserving.runtimes.tensorflow_warmup import warm_up

        return warm_up(self.signatures, run, self._path, iterations)

    def unload(self) -> None:
        pass


class MemoryRuntime:
    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        # write_model replaces the file atomically: it is there whole or not at all. A directory still without it
        # after INCOMPLETE_GRACE_S is broken: hand it to the loader, which says so.
        if os.path.isfile(os.path.join(version_dir, MODEL_FILE)):
            return True
        try:
            age = (time.time() if now is None else now) - os.stat(version_dir).st_mtime
        except OSError:
            return False
        return age > INCOMPLETE_GRACE_S

    def load(self, path: str, options: RuntimeOptions) -> MemoryServable:
        return MemoryServable(path)
