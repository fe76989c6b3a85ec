"""What every runtime provides: a loader and loaded servables, described in plain data.

Runtimes never import core or front ends, and nothing here knows a framework: signatures are dataclasses that
the codecs render in each protocol's shape (TF Serving's SignatureDef, later the V2 metadata).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Protocol

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, PermanentError, ServingError, SignatureNotFoundError
from pyserving.options import RuntimeOptions

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a signature. `shape` is None for unknown rank; unknown dims are None.

    `ref` marks a TF1 reference type (DT_FLOAT_REF): the value is a `dtype` tensor, but metadata reports the
    reference type as TF Serving does."""

    dtype: DType
    shape: tuple[int | None, ...] | None
    tensor_name: str = ""
    ref: bool = False


@dataclass(frozen=True, slots=True)
class Signature:
    """A named function of a servable, with its inputs and outputs keyed by alias."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    defaults: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Inputs a request may leave out, with the value the model then uses (TF2's default arguments)."""


def missing_framework(framework: str, extra: str, path: str) -> PermanentError:
    """The load error for a model whose framework is not installed: permanent (installing it needs a restart
    anyway), and it says what to install."""
    return PermanentError(Code.FAILED_PRECONDITION,
                          f"Cannot load {path}: it needs {framework}, which is not installed: "
                          f"pip install 'pyserving[{extra}]'")


def import_framework(module: str, framework: str, extra: str, path: str) -> ModuleType:
    """Import a runtime's framework for loading `path`; when it is not installed, raise `missing_framework`.
    Other import failures (a broken installation) propagate as they are."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise missing_framework(framework, extra, path) from None


def find_signature(signatures: Mapping[str, Signature], name: str) -> Signature:
    """The signature `name` ("" means serving_default), or TF Serving's FAILED_PRECONDITION."""
    sig = signatures.get(name or DEFAULT_SIGNATURE)
    if sig is None:
        raise SignatureNotFoundError(name or DEFAULT_SIGNATURE)
    return sig


def examples_tensor(examples: Sequence[bytes]) -> np.ndarray:
    """Serialized tf.Examples as the DT_STRING batch a classify/regress signature takes."""
    if not examples:
        raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
    batch = np.empty(len(examples), dtype=object)
    batch[:] = list(examples)
    return batch


def _names(keys: Iterable[str]) -> str:
    return ",".join(sorted(keys))


def check_inputs(sig: Signature, sent: Iterable[str]) -> None:
    """The input aliases a request sent must be the signature's (those with defaults may be left out); TF
    Serving's predict_util wording. Shared by Predict and predict warm-up records."""
    names, expected = set(sent), set(sig.inputs)
    extra, missing = names - expected, expected - names - sig.defaults.keys()
    if extra or missing:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"input size does not match signature: {len(names)}!={len(expected)} len({{{_names(names)}}}) "
            f"!= len({{{_names(expected)}}}). Sent extra: {{{_names(extra)}}}. "
            f"Missing but required: {{{_names(missing)}}}.",
        )


def select_outputs(sig: Signature, output_filter: Sequence[str]) -> list[str]:
    """The outputs to fetch: all (sorted) when the filter is empty, else the filter, checked as TF Serving does."""
    if not output_filter:
        return sorted(sig.outputs)
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{_names(sig.outputs)}}}.",
            )
        if alias in seen:
            raise ServingError(Code.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


class Servable(Protocol):
    """One loaded model version.

    `run` is blocking and thread-safe: callers run it in worker threads, several at once. It raises
    ServingError for failures the request caused. Nobody calls `run` after `unload`. A servable class may say
    `inline_when_fast = True` when a call's cost follows its inputs' shapes and it never waits on a lock another
    call holds: small requests to it then run on the event loop once it has shown itself fast (core/handoff.py).
    """

    signatures: Mapping[str, Signature]

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]: ...

    def unload(self) -> None: ...

    def warm_up(self, run: RunFn, iterations: int) -> int:
        """Replay the version's warm-up requests through `run` (the servable's own, or its batcher's); returns
        how many there were. A failure raises ServingError: the version must not serve."""
        ...


RunFn = Callable[[str, Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]


class Runtime(Protocol):
    """Loads model versions of one platform ("tensorflow", "memory", later "onnx").

    Importing a runtime's module must stay cheap (no framework): `is_complete` runs on every poll, in processes
    that may never load a model. The framework is imported by `load`."""

    def is_complete(self, version_dir: str, *, now: float | None = None) -> bool:
        """Whether `version_dir` looks completely written, so loading it now will not catch a half-copied export.
        A directory that stays incomplete for long must be reported complete: it is broken, not being written,
        and the load error will say why."""
        ...

    def load(self, path: str, options: RuntimeOptions) -> Servable: ...
