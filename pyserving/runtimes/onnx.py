"""The "onnx" platform: `model.onnx` in the version directory, run by ONNX Runtime.

The graph has no signatures, so it is served as TF Serving serves a model with one: `serving_default`, a predict
signature whose inputs and outputs are the graph's, named as the graph names them. ONNX Runtime is imported by
`load` (or `prepare`), never by importing this module: `is_complete` runs on every poll.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import DEFAULT_SIGNATURE, PREDICT_METHOD, RunFn, Signature, TensorSpec, import_framework
from pyserving.runtimes.single_file import find_model_file, model_file_is_complete

MODEL_FILE = "model.onnx"

# ONNX Runtime's type strings ("tensor(float)") -> TensorFlow's types, as GetModelMetadata reports them
_DTYPES: dict[str, DType] = {
    "float": DType.DT_FLOAT, "double": DType.DT_DOUBLE, "float16": DType.DT_HALF, "bfloat16": DType.DT_BFLOAT16,
    "int8": DType.DT_INT8, "int16": DType.DT_INT16, "int32": DType.DT_INT32, "int64": DType.DT_INT64,
    "uint8": DType.DT_UINT8, "uint16": DType.DT_UINT16, "uint32": DType.DT_UINT32, "uint64": DType.DT_UINT64,
    "bool": DType.DT_BOOL, "string": DType.DT_STRING,
    "complex64": DType.DT_COMPLEX64, "complex128": DType.DT_COMPLEX128,
}


def _dtype(ort_type: str) -> DType:
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    dtype = _DTYPES.get(inner)
    if dtype is None:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"ONNX type {ort_type} cannot be served: only tensors of numeric, bool or string types")
    return dtype


def _spec(arg: Any) -> TensorSpec:
    shape = arg.shape
    # Symbolic dims ("batch", "N") and unknown ones (None) are both unknown to a client.
    dims = None if shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
    return TensorSpec(dtype=_dtype(arg.type), shape=dims, tensor_name=arg.name)


def _providers(options: RuntimeOptions) -> list[Any]:
    import onnxruntime as ort

    providers: list[Any] = []
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda: dict[str, Any] = {}
        if options.gpu_visible_devices:
            cuda["device_id"] = int(options.gpu_visible_devices.split(",")[0])
        providers.append(("CUDAExecutionProvider", cuda))
    providers.append("CPUExecutionProvider")
    return providers


class OnnxServable:
    """One ONNX model. Thread-safe: an ONNX Runtime session may run several calls at once, and `run` keeps no
    state of its own."""

    inline_when_fast = True
    """A call's cost follows its inputs' shapes: small requests may run on the event loop once the model has shown
    itself fast (core/handoff.py Pace)."""

    def __init__(self, path: str, options: RuntimeOptions) -> None:
        ort = import_framework("onnxruntime", "ONNX Runtime", "onnx", path)
        self._path = path
        file = find_model_file(path, (MODEL_FILE,))
        if file is None:
            raise ServingError(Code.NOT_FOUND,
                               f"Could not find {MODEL_FILE} at supplied export directory path: {path}.")
        session_options = ort.SessionOptions()
        # The TF-style parallelism flags; 0 leaves ONNX Runtime's own choice, as it leaves TensorFlow's.
        session_options.intra_op_num_threads = max(options.intra_op_parallelism, 0)
        session_options.inter_op_num_threads = max(options.inter_op_parallelism, 0)
        try:
            self._session = ort.InferenceSession(file, sess_options=session_options,
                                                 providers=_providers(options))
        except Exception as exc:  # ORT raises its own pybind exception types for bad files and graphs
            raise ServingError(Code.INVALID_ARGUMENT, f"Cannot load ONNX model {file}: {exc}") from None
        inputs = {arg.name: _spec(arg) for arg in self._session.get_inputs()}
        outputs = {arg.name: _spec(arg) for arg in self._session.get_outputs()}
        self.signatures: Mapping[str, Signature] = {
            DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, PREDICT_METHOD, inputs, outputs)
        }

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        sig = self.signatures[signature]
        feed: dict[str, np.ndarray] = {}
        for i, (alias, spec) in enumerate(sig.inputs.items()):
            array = inputs[alias]
            if spec.dtype == DType.DT_STRING:
                # ORT's string tensors hold str; requests carry bytes
                array = np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
                                     otypes=[object])(array) if array.size else array.astype(object)
            elif array.dtype != spec.dtype.numpy:
                sent = DType.from_numpy(array.dtype).short_name if array.dtype.kind != "O" else "string"
                # TF's words when a model is fed the wrong type, so clients see one message whatever the runtime
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"Expects arg[{i}] to be {spec.dtype.short_name} but {sent} is provided")
            feed[alias] = array
        try:
            values = self._session.run(list(output_keys), feed)
        except Exception as exc:  # a shape the graph refuses, a failing op: the request's fault
            raise ServingError(Code.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}") from None
        out: dict[str, np.ndarray] = {}
        for key, value in zip(output_keys, values):
            value = np.asarray(value)
            if value.dtype.kind in "OU":
                value = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(value) \
                    if value.size else value.astype(object)
            out[key] = value
        return out

    def warm_up(self, run: RunFn, iterations: int) -> int:
        from pyserving.runtimes.tensorflow_warmup import warm_up

        return warm_up(self.signatures, run, self._path, iterations)

    def unload(self) -> None:
        # Dropping the session frees its arena (and GPU memory); nobody calls run after unload.
        self._session = None  # type: ignore[assignment]


class OnnxRuntime:
    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        return model_file_is_complete(version_dir, (MODEL_FILE,), now=now)

    def prepare(self) -> None:
        """Import ONNX Runtime before models load, so the server can freeze it out of garbage collection (without
        it installed, each ONNX model's load says what to install)."""
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime  # noqa: F401

    def load(self, path: str, options: RuntimeOptions) -> OnnxServable:
        return OnnxServable(path, options)
