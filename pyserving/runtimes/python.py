"""The "python" platform: a user's class in `model.py`, run in-process, for pre/post-processing or models that no
runtime covers. Running it runs the user's code in the server, so a server loads it only when started with
--allow_python_models=true.

`model.py` defines a class `Model` (or exactly one class with a `predict` method):

    class Model:
        signatures = {"serving_default": {
            "inputs":  {"x": {"dtype": "DT_FLOAT", "shape": [-1, 1]}},
            "outputs": {"y": {"dtype": "float32", "shape": [-1, 1]}}}}
        thread_safe = False          # optional; True lets the server call predict from several threads at once

        def load(self, path: str) -> None: ...                      # optional; `path` is the version directory
        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
        def unload(self) -> None: ...                               # optional

`signatures` is required, read after `load` (so it may come from the files loaded): the server checks requests
against it and GetModelMetadata reports it. A dtype is TensorFlow's name (DT_FLOAT) or numpy's (float32; "string"
is DT_STRING); -1 or null is an unknown dim. A signature may name the method that serves it with
`"method": "name"` (default `predict`) and its `method_name` (default tensorflow/serving/predict).

The version directory is not put on sys.path (two versions' helper modules would then share one name): model.py
reads its other files through the `path` given to `load`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, PermanentError, ServingError
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import PREDICT_METHOD, RunFn, Signature, TensorSpec
from pyserving.runtimes.single_file import find_model_file, model_file_is_complete

MODEL_FILE = "model.py"
CLASS_NAME = "Model"
FLAG = "--allow_python_models=true"
_module_ids = itertools.count(1)


def _dtype(alias: str, raw: Any) -> DType:
    if isinstance(raw, str) and raw in DType.__members__:
        return DType[raw]
    if raw in ("string", "bytes", "str", "object"):
        return DType.DT_STRING
    try:
        return DType.from_numpy(np.dtype(raw))
    except TypeError:
        raise ValueError(f'tensor "{alias}": dtype {raw!r} is neither a TensorFlow type (DT_FLOAT) nor a numpy '
                         "one (float32)") from None


def _spec(alias: str, raw: Mapping[str, Any]) -> TensorSpec:
    shape = raw.get("shape")
    return TensorSpec(
        dtype=_dtype(alias, raw.get("dtype", "DT_FLOAT")),
        shape=None if shape is None else tuple(None if d is None or d < 0 else int(d) for d in shape),
        tensor_name=str(raw.get("tensor_name", alias)),
    )


def _model_class(module: ModuleType, file: str) -> type:
    cls = getattr(module, CLASS_NAME, None)
    if isinstance(cls, type):
        return cls
    own = [c for _, c in inspect.getmembers(module, inspect.isclass)
           if c.__module__ == module.__name__ and callable(getattr(c, "predict", None))]
    if len(own) != 1:
        found = ", ".join(c.__name__ for c in own) or "none"
        raise ValueError(f"{file} must define a class {CLASS_NAME}, or exactly one class with a predict method "
                         f"(found: {found})")
    return own[0]


def _import(file: str) -> ModuleType:
    # Each version gets its own module name: two versions' model.py (or two models') never share classes or state.
    digest = hashlib.sha1(os.path.abspath(file).encode()).hexdigest()[:12]
    name = f"pyserving_python_model_{digest}_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their classes up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _output(key: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.vectorize(str.encode, otypes=[object])(array) if array.size else array.astype(object)
    elif array.dtype.kind == "S":
        array = array.astype(object)
    return array


class PythonServable:
    """One version's user class, instantiated once. Thread-safe: calls are serialized by a lock unless the class
    declares `thread_safe = True`."""

    def __init__(self, path: str, options: RuntimeOptions) -> None:
        if not options.allow_python_models:
            # Permanent: the flag is read at start-up, so retrying cannot succeed
            raise PermanentError(Code.FAILED_PRECONDITION,
                                 f"Serving a python model runs its code in the server, which this server does not "
                                 f"allow. Start it with {FLAG} to serve {os.path.join(path, MODEL_FILE)}.")
        self._path = path
        file = find_model_file(path, (MODEL_FILE,))
        if file is None:
            raise ServingError(Code.NOT_FOUND,
                               f"Could not find {MODEL_FILE} at supplied export directory path: {path}.")
        self._module: ModuleType | None = None
        try:
            self._module = _import(file)
            self._model = _model_class(self._module, file)()
            load = getattr(self._model, "load", None)
            if callable(load):
                load(path)
            raw = getattr(self._model, "signatures", None)
            if not isinstance(raw, Mapping) or not raw:
                raise ValueError(f"{file}'s class must have `signatures`, a dict of signature name -> "
                                 '{"inputs": {...}, "outputs": {...}}: the server checks requests against it')
            self.signatures: Mapping[str, Signature] = {
                str(name): Signature(
                    name=str(name),
                    method_name=str(sig.get("method_name", PREDICT_METHOD)),
                    inputs={k: _spec(k, v) for k, v in sig["inputs"].items()},
                    outputs={k: _spec(k, v) for k, v in sig["outputs"].items()},
                )
                for name, sig in raw.items()
            }
            self._methods: dict[str, Callable[[dict[str, np.ndarray]], Mapping[str, Any]]] = {}
            for name, sig in raw.items():
                method = getattr(self._model, str(sig.get("method", "predict")), None)
                if not callable(method):
                    raise ValueError(f'signature "{name}" is served by method {sig.get("method", "predict")!r}, '
                                     "which the class does not have")
                self._methods[str(name)] = method
        except ServingError:
            self._forget_module()
            raise
        except Exception as exc:  # the user's code may raise anything while importing or loading
            self._forget_module()
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Cannot load python model {file}: {type(exc).__name__}: {exc}") from None
        self._lock: threading.Lock | None = None if getattr(self._model, "thread_safe", False) else threading.Lock()

    def _forget_module(self) -> None:
        if self._module is not None:
            sys.modules.pop(self._module.__name__, None)
            self._module = None

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        method = self._methods[signature]
        try:
            if self._lock is None:
                result = method(dict(inputs))
            else:
                with self._lock:
                    result = method(dict(inputs))
        except ServingError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # usually an input the code cannot take
            raise ServingError(Code.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            raise ServingError(Code.INTERNAL, f"python model failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, Mapping):
            raise ServingError(Code.INTERNAL, f"python model's {signature} returned {type(result).__name__}, "
                                              "not a dict of output name -> array")
        missing = [key for key in output_keys if key not in result]
        if missing:
            raise ServingError(Code.INTERNAL, f"python model's {signature} returned no output "
                                              f"{', '.join(missing)} (it returned {', '.join(sorted(result))})")
        return {key: _output(key, result[key]) for key in output_keys}

    def warm_up(self, run: RunFn, iterations: int) -> int:
        from pyserving.runtimes.tensorflow_warmup import warm_up

        return warm_up(self.signatures, run, self._path, iterations)

    def unload(self) -> None:
        unload = getattr(self._model, "unload", None)
        try:
            if callable(unload):
                unload()
        finally:
            self._forget_module()


class PythonRuntime:
    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        return model_file_is_complete(version_dir, (MODEL_FILE,), now=now)

    def load(self, path: str, options: RuntimeOptions) -> PythonServable:
        return PythonServable(path, options)
