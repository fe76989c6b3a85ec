"""The "tflite" platform, and `--prefer_tflite_model` for "tensorflow" models: `model.tflite` in the version
directory, run by TensorFlow's Lite interpreter, answering as TF Serving's TfLiteSession answers:

* a model carrying TF SignatureDefs in its "signature_defs_metadata" (TFLite's signature_def_util) is served with
  them: aliases and method name from the SignatureDef, tensors matched by name without ":0";
* a model with TFLite's own signature runners is served with one signature per runner key (a single one as
  `serving_default`, the key TF Serving gives the model's only signature);
* a model with neither gets TF Serving's default naming: one `serving_default` predict signature whose aliases are
  the TFLite tensor names.

An interpreter runs one call at a time (TF Serving locks its session). Calls run on a pool of interpreters, made
as concurrent calls need them, up to --num_tflite_pools x --num_tflite_interpreters_per_pool.

The interpreter comes from LiteRT (`pip install 'pyserving[tflite]'`, the ai-edge-litert package, a few tens of MB)
when it is installed, else from TensorFlow's tf.lite: both are the same interpreter and both ship the flatbuffer
schema the SignatureDef metadata is read with. (tflite_runtime, LiteRT's deprecated predecessor, ships no schema,
so it is not used.) The framework is imported by `load`, never by importing this module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import queue
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.observability.logs import quiet_framework
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import (DEFAULT_SIGNATURE, PREDICT_METHOD, RunFn, Signature, TensorSpec,
                                     missing_framework)
from pyserving.runtimes.single_file import model_file_is_complete

MODEL_FILE = "model.tflite"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"


def _tf_name(name: str) -> str:
    # TF tensor names carry ":0"; TFLite's do not (TF Serving's TfToTfLiteTensorName)
    return name.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class _Lite:
    """Where the interpreter and the model schema come from."""

    interpreter: Callable[..., Any]
    schema: ModuleType


def _lite(path: str) -> _Lite:
    """LiteRT when it is installed, else TensorFlow's tf.lite; neither: a permanent load error naming the extra."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert import schema_py_generated
        from ai_edge_litert.interpreter import Interpreter

        return _Lite(Interpreter, schema_py_generated)
    if importlib.util.find_spec("tensorflow") is None:
        raise missing_framework("LiteRT (the ai-edge-litert package) or TensorFlow", "tflite", path)
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated

    def interpreter(**kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # TF 2.20+ points at ai_edge_litert; tf.lite is what ships with the TensorFlow we already have
            warnings.simplefilter("ignore")
            return tf.lite.Interpreter(**kwargs)

    return _Lite(interpreter, schema_py_generated)


def _metadata_signature_defs(content: bytes, schema_fb: ModuleType) -> dict[str, Any]:
    """The TF SignatureDefs TFLite's signature_def_util stores in the model's metadata: a flexbuffer map of
    signature key -> serialized tensorflow.SignatureDef. Empty when the model has none."""
    from flatbuffers import flexbuffers

    from pyserving.codecs.tfserving.protos import meta_graph_pb2

    model = schema_fb.Model.GetRootAsModel(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != SIGNATURE_DEFS_METADATA.encode():
            continue
        root = flexbuffers.GetRoot(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()).AsMap
        # the values are flexbuffer strings holding binary protos: read their bytes, never decode them as text
        return {str(key.AsKey): meta_graph_pb2.SignatureDef.FromString(bytes(value.AsStringBytes))
                for key, value in zip(root.Keys, root.Values)}
    return {}


@dataclass(frozen=True, slots=True)
class _Binding:
    """How a signature's aliases reach an interpreter: tensor indices, or a signature runner's own names."""

    runner_key: str | None
    inputs: Mapping[str, int | str]
    outputs: Mapping[str, int | str]


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    dtype = DType.from_numpy(np.dtype(detail["dtype"]))
    shape = detail.get("shape_signature", detail["shape"])
    return TensorSpec(dtype=dtype, shape=tuple(None if d < 0 else int(d) for d in shape),
                      tensor_name=str(detail["name"]))


class TfLiteServable:
    """One TFLite model. Thread-safe: each call takes an interpreter of its own from the pool."""

    def __init__(self, path: str, options: RuntimeOptions) -> None:
        self._path = path
        file = os.path.join(path, MODEL_FILE)
        try:
            with open(file, "rb") as f:
                self._content = f.read()
        except FileNotFoundError:
            raise ServingError(Code.NOT_FOUND,
                               f"Could not find {MODEL_FILE} at supplied export directory path: {path}.") from None
        self._threads = options.intra_op_parallelism if options.intra_op_parallelism > 0 else None
        # The import (TensorFlow's notices) and the first interpreter (LiteRT's "Created TensorFlow Lite XNNPACK
        # delegate" INFO line) write straight to stderr: logged at DEBUG instead, as TensorFlow's import is.
        with quiet_framework("tflite"):
            self._lite = _lite(path)
        try:
            with quiet_framework("tflite"):
                interpreter = self._new_interpreter()
            sigdefs = _metadata_signature_defs(self._content, self._lite.schema)
        except Exception as exc:  # TFLite raises ValueError/RuntimeError for bad flatbuffers
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Cannot load TFLite model {file}: {type(exc).__name__}: {exc}") from None
        self.signatures, self._bindings = self._describe(interpreter, sigdefs, file)
        cpus = os.cpu_count() or 1
        self._limit = max(options.num_tflite_pools or cpus, 1) * max(options.num_tflite_interpreters_per_pool, 1)
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._idle.put(interpreter)
        self._made = 1
        self._lock = threading.Lock()

    def _new_interpreter(self) -> Any:
        interpreter = self._lite.interpreter(model_content=self._content, num_threads=self._threads)
        interpreter.allocate_tensors()
        return interpreter

    @staticmethod
    def _describe(interpreter: Any, sigdefs: Mapping[str, Any], file: str
                  ) -> tuple[dict[str, Signature], dict[str, _Binding]]:
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        if sigdefs:
            if len(sigdefs) > 1:  # TF Serving's TfLiteSession refuses these too
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"Multiple SignatureDefs found in TfLite model {file}: {', '.join(sorted(sigdefs))}")
            sigdef = next(iter(sigdefs.values()))
            aliases: dict[str, str] = {}
            for alias, info in [*sigdef.inputs.items(), *sigdef.outputs.items()]:
                aliases[_tf_name(info.name)] = alias

            def side(details: Mapping[str, Any], kind: str) -> dict[str, Any]:
                missing = [name for name in details if name not in aliases]
                if missing:
                    raise ServingError(Code.INTERNAL, f"Cannot find signature def {kind} name from tflite {kind} "
                                                      f"tensor {missing[0]} in {file}")
                return {aliases[name]: d for name, d in details.items()}

            ins, outs = side(inputs, "input"), side(outputs, "output")
            sig = Signature(DEFAULT_SIGNATURE, sigdef.method_name or PREDICT_METHOD,
                            {a: _spec(d) for a, d in ins.items()}, {a: _spec(d) for a, d in outs.items()})
            binding = _Binding(None, {a: d["index"] for a, d in ins.items()}, {a: d["index"] for a, d in outs.items()})
            return {DEFAULT_SIGNATURE: sig}, {DEFAULT_SIGNATURE: binding}
        runners = interpreter.get_signature_list()
        if runners:
            signatures: dict[str, Signature] = {}
            bindings: dict[str, _Binding] = {}
            for key in runners:
                name = DEFAULT_SIGNATURE if len(runners) == 1 else key
                runner = interpreter.get_signature_runner(key)
                ins, outs = runner.get_input_details(), runner.get_output_details()
                signatures[name] = Signature(name, PREDICT_METHOD, {a: _spec(d) for a, d in ins.items()},
                                             {a: _spec(d) for a, d in outs.items()})
                bindings[name] = _Binding(key, {a: a for a in ins}, {a: a for a in outs})
            return signatures, bindings
        sig = Signature(DEFAULT_SIGNATURE, PREDICT_METHOD, {n: _spec(d) for n, d in inputs.items()},
                        {n: _spec(d) for n, d in outputs.items()})
        binding = _Binding(None, {n: d["index"] for n, d in inputs.items()},
                           {n: d["index"] for n, d in outputs.items()})
        return {DEFAULT_SIGNATURE: sig}, {DEFAULT_SIGNATURE: binding}

    def _borrow(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            make = self._made < self._limit
            if make:
                self._made += 1
        if make:
            try:
                return self._new_interpreter()
            except BaseException:
                with self._lock:
                    self._made -= 1
                raise
        return self._idle.get()

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        sig, binding = self.signatures[signature], self._bindings[signature]
        for i, (alias, spec) in enumerate(sig.inputs.items()):
            array = inputs[alias]
            if array.dtype != spec.dtype.numpy and not (spec.dtype == DType.DT_STRING and array.dtype.kind == "O"):
                sent = "string" if array.dtype.kind == "O" else DType.from_numpy(array.dtype).short_name
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"Expects arg[{i}] to be {spec.dtype.short_name} but {sent} is provided")
        interpreter = self._borrow()
        try:
            if binding.runner_key is not None:
                return self._run_runner(interpreter, binding, inputs, output_keys)
            return self._run_tensors(interpreter, binding, inputs, output_keys)
        except ServingError:
            raise
        except (ValueError, RuntimeError) as exc:  # a shape the graph cannot be resized to
            raise ServingError(Code.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}") from None
        finally:
            self._idle.put(interpreter)

    @staticmethod
    def _run_tensors(interpreter: Any, binding: _Binding, inputs: Mapping[str, np.ndarray],
                     output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        resized = False
        for alias, index in binding.inputs.items():
            shape = inputs[alias].shape
            if tuple(interpreter.get_tensor(index).shape) != shape:
                # TF Serving's slow path too: the interpreter is resized to the request's shape
                interpreter.resize_tensor_input(index, list(shape))
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for alias, index in binding.inputs.items():
            interpreter.set_tensor(index, inputs[alias])
        interpreter.invoke()
        return {key: np.array(interpreter.get_tensor(binding.outputs[key])) for key in output_keys}

    @staticmethod
    def _run_runner(interpreter: Any, binding: _Binding, inputs: Mapping[str, np.ndarray],
                    output_keys: Sequence[str]) -> dict[str, np.ndarray]:
        runner: Callable[..., Mapping[str, np.ndarray]] = interpreter.get_signature_runner(binding.runner_key)
        result = runner(**{str(binding.inputs[a]): inputs[a] for a in binding.inputs})
        return {key: np.array(result[str(binding.outputs[key])]) for key in output_keys}

    def warm_up(self, run: RunFn, iterations: int) -> int:
        from pyserving.runtimes.tensorflow_warmup import warm_up

        return warm_up(self.signatures, run, self._path, iterations)

    def unload(self) -> None:
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break


class TfLiteRuntime:
    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        return model_file_is_complete(version_dir, (MODEL_FILE,), now=now)

    def prepare(self) -> None:
        """Import the interpreter's framework before models load (TensorFlow: ~2 s), so the server can freeze it out
        of garbage collection (with neither installed, each TFLite model's load says what to install)."""
        for module in ("ai_edge_litert.interpreter", "tensorflow"):
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                with quiet_framework(module):
                    importlib.import_module(module)
                return

    def load(self, path: str, options: RuntimeOptions) -> TfLiteServable:
        return TfLiteServable(path, options)
