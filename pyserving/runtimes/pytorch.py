"""The "pytorch" platform: a TorchScript `model.pt` (torch.jit.load) or a torch.export `model.pt2`
(torch.export.load), with `signature.json` beside it, since TorchScript carries no input or output names:

    {"inputs":  [{"name": "x", "dtype": "DT_FLOAT", "shape": [-1, 1]}],
     "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}],
     "method_name": "tensorflow/serving/predict"}

Inputs are passed to the module positionally, in the listed order. The module returns one tensor (one output), a
tuple or list of tensors (in the listed order) or a dict of them (by name). It is served as one `serving_default`
signature. dtypes are TensorFlow's names (DT_FLOAT) or numpy's (float32); -1 or null is an unknown dim.

Runs on the GPU when torch sees one (the first of `--gpu_visible_devices`, else GPU 0; `CUDA_VISIBLE_DEVICES=""`
keeps a server on the CPU), with `--per_process_gpu_memory_fraction` as torch's per-process memory cap; on the CPU
otherwise. torch is imported by `load` (or `prepare`), never by importing this module: `is_complete` runs on
every poll. (Named after the platform, not `torch.py`, so that no traceback shows two modules called torch.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import DEFAULT_SIGNATURE, PREDICT_METHOD, RunFn, Signature, TensorSpec, import_framework
from pyserving.runtimes.single_file import find_model_file, model_file_is_complete

SCRIPT_FILE = "model.pt"
EXPORT_FILE = "model.pt2"
MODEL_FILES = (EXPORT_FILE, SCRIPT_FILE)
SIGNATURE_FILE = "signature.json"
_threads_lock = threading.Lock()
_interop_set = False


def _spec(raw: Mapping[str, Any]) -> tuple[str, TensorSpec]:
    name = str(raw["name"])
    dtype_raw = raw.get("dtype", "DT_FLOAT")
    dtype = DType[dtype_raw] if dtype_raw in DType.__members__ else DType.from_numpy(np.dtype(dtype_raw))
    if dtype == DType.DT_STRING:
        raise ValueError(f'tensor "{name}": torch has no string tensors')
    dtype.numpy  # noqa: B018 -- raises TypeError for a type numpy (and so torch.from_numpy) cannot hold
    shape = raw.get("shape")
    dims = None if shape is None else tuple(None if d is None or d < 0 else int(d) for d in shape)
    return name, TensorSpec(dtype=dtype, shape=dims, tensor_name=name)


def _read_signature(path: str) -> Signature:
    file = os.path.join(path, SIGNATURE_FILE)
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
        inputs = dict(_spec(t) for t in raw["inputs"])
        outputs = dict(_spec(t) for t in raw["outputs"])
        if len(inputs) != len(raw["inputs"]) or len(outputs) != len(raw["outputs"]):
            raise ValueError("tensor names must be unique")
        return Signature(DEFAULT_SIGNATURE, str(raw.get("method_name", PREDICT_METHOD)), inputs, outputs)
    except FileNotFoundError:
        raise ServingError(Code.NOT_FOUND, f"Could not find {SIGNATURE_FILE} at {path}: a torch model needs one to "
                                           "name its inputs and outputs (TorchScript carries no names).") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServingError(Code.INVALID_ARGUMENT, f"Cannot read {file}: {type(exc).__name__}: {exc}") from None


def _set_threads(options: RuntimeOptions) -> None:
    """The TF-style parallelism flags, as torch's thread counts. torch's are per process, not per model: the
    flags are the same for every model, so setting them at each load changes nothing after the first."""
    import torch

    # Decoded requests are read-only views of the request's bytes; torch warns that it could write to them, but
    # inference mode never does, so copying each input to silence it would be pure cost.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    global _interop_set
    with _threads_lock:
        if options.intra_op_parallelism > 0:
            torch.set_num_threads(options.intra_op_parallelism)
        if options.inter_op_parallelism > 0 and not _interop_set:
            _interop_set = True
            try:
                torch.set_num_interop_threads(options.inter_op_parallelism)
            except RuntimeError:  # torch allows it only before its first parallel work (another model ran)
                pass


def _device(options: RuntimeOptions) -> Any:
    """Where the model runs: TF Serving's GPU flags, read the way TensorFlow reads them, so one set of flags
    places every runtime's models."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    first = options.gpu_visible_devices.split(",")[0].strip()
    try:
        index = int(first) if first else 0
    except ValueError:
        raise ServingError(Code.INVALID_ARGUMENT, f"--gpu_visible_devices={options.gpu_visible_devices}: use "
                                                  "comma-separated GPU indices such as 0,1") from None
    if not 0 <= index < torch.cuda.device_count():
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"--gpu_visible_devices={options.gpu_visible_devices}: GPU {index} does not exist "
                           f"(torch sees {torch.cuda.device_count()}); list indices below that")
    device = torch.device("cuda", index)
    if options.gpu_memory_fraction > 0:
        # torch's caching allocator grows on demand (allow_growth is its only mode); the fraction caps it, and
        # an allocation past the cap fails that request with an out-of-memory error instead of taking the GPU.
        torch.cuda.set_per_process_memory_fraction(min(options.gpu_memory_fraction, 1.0), device)
    return device


def _out_of_memory(exc: Exception) -> str:
    """torch's out-of-memory line, or "". TorchScript re-raises a CUDA OutOfMemoryError as a RuntimeError holding
    its own traceback, so the type alone does not tell."""
    import torch

    lines = str(exc).splitlines()
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return lines[0] if lines else "out of memory"
    return next((line.strip() for line in lines if "CUDA out of memory" in line), "")


class TorchServable:
    """One torch model in eval mode. Thread-safe: inference keeps no state in the module (torch runs forward
    from several threads at once), and `run` keeps none of its own."""

    inline_when_fast = True
    """A call's cost follows its inputs' shapes: small requests may run on the event loop once the model has shown
    itself fast (core/handoff.py Pace)."""

    def __init__(self, path: str, options: RuntimeOptions) -> None:
        torch = import_framework("torch", "PyTorch", "torch", path)
        self._path = path
        file = find_model_file(path, MODEL_FILES)
        if file is None:
            raise ServingError(Code.NOT_FOUND, f"Could not find {SCRIPT_FILE} or {EXPORT_FILE} at supplied export "
                                               f"directory path: {path}.")
        self._signature = _read_signature(path)
        self.signatures: Mapping[str, Signature] = {DEFAULT_SIGNATURE: self._signature}
        _set_threads(options)
        self._device = _device(options)
        try:
            if file.endswith(EXPORT_FILE):
                self._module: Any = torch.export.load(file).module().to(self._device)
            else:
                self._module = torch.jit.load(file, map_location=self._device)
                self._module.eval()
        except Exception as exc:  # torch raises RuntimeError, pickle and zip errors for bad files
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Cannot load torch model {file}: {type(exc).__name__}: {exc}") from None

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        import torch

        sig = self._signature
        args = []
        for i, (name, spec) in enumerate(sig.inputs.items()):
            array = inputs[name]
            if array.dtype != spec.dtype.numpy:
                sent = "string" if array.dtype.kind == "O" else DType.from_numpy(array.dtype).short_name
                # TF's words when a model is fed the wrong type, so clients see one message whatever the runtime
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"Expects arg[{i}] to be {spec.dtype.short_name} but {sent} is provided")
            args.append(torch.from_numpy(np.ascontiguousarray(array)).to(self._device))
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:  # shapes the module refuses: the request's fault
            oom = _out_of_memory(exc)
            if oom:
                # this request (or this batch) needs more GPU memory than the cap leaves: retrying smaller can work
                raise ServingError(Code.RESOURCE_EXHAUSTED, f"GPU out of memory running the torch model ({oom}); "
                                   "send fewer rows, or raise --per_process_gpu_memory_fraction") from None
            raise ServingError(Code.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}") from None
        names = list(sig.outputs)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, (tuple, list)):
            if len(result) != len(names):
                raise ServingError(Code.INTERNAL, f"the torch model returned {len(result)} tensors but "
                                                  f"{SIGNATURE_FILE} lists {len(names)} outputs")
            result = dict(zip(names, result))
        if not isinstance(result, Mapping):
            raise ServingError(Code.INTERNAL, f"the torch model returned {type(result).__name__}; return a tensor, "
                                              "a tuple of tensors or a dict of them")
        out: dict[str, np.ndarray] = {}
        for key in output_keys:
            if key not in result:
                raise ServingError(Code.INTERNAL, f"the torch model returned no output {key}")
            value = result[key].detach().cpu().numpy()
            declared = sig.outputs[key].dtype
            if value.dtype != declared.numpy:
                raise ServingError(Code.INTERNAL, f"the torch model returned {key} as {value.dtype} but "
                                                  f"{SIGNATURE_FILE} declares {declared.name}")
            out[key] = value
        return out

    def warm_up(self, run: RunFn, iterations: int) -> int:
        from pyserving.runtimes.tensorflow_warmup import warm_up

        return warm_up(self.signatures, run, self._path, iterations)

    def unload(self) -> None:
        self._module = None


class TorchRuntime:
    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        return model_file_is_complete(version_dir, MODEL_FILES, now=now, also=(SIGNATURE_FILE,))

    def prepare(self) -> None:
        """Import torch before models load (seconds), so the server can freeze it out of garbage collection
        (without it installed, each torch model's load says what to install)."""
        if importlib.util.find_spec("torch") is not None:
            import torch  # noqa: F401

    def load(self, path: str, options: RuntimeOptions) -> TorchServable:
        return TorchServable(path, options)
