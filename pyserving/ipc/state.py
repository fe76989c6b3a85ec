"""What the model process tells its front ends about the models, so that they answer status, metadata, readiness
and "which signature will decode this request" without a round trip: a snapshot in plain data (orjson), pushed
whenever it changes. The answers keep the model process's wording (ModelManager.lease and .status)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.states import ServableState, VersionStatus
from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.runtimes.base import Signature, TensorSpec


def _spec(spec: TensorSpec) -> list[Any]:
    return [int(spec.dtype), list(spec.shape) if spec.shape is not None else None, spec.tensor_name, spec.ref]


def _array(array: np.ndarray) -> list[Any]:
    dtype = DType.from_numpy(array.dtype)
    if dtype == DType.DT_STRING:
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
        return [int(dtype), list(array.shape), [base64.b64encode(x).decode() for x in items]]
    return [int(dtype), list(array.shape), base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()]


def _from_array(data: list[Any]) -> np.ndarray:
    code, shape, raw = data
    dtype = DType(code)
    if dtype == DType.DT_STRING:
        out = np.empty(len(raw), dtype=object)
        out[:] = [base64.b64decode(x) for x in raw]
        return out.reshape(shape)
    return np.frombuffer(base64.b64decode(raw), dtype.numpy).reshape(shape)


def signature_data(sig: Signature) -> dict[str, Any]:
    return {"n": sig.name, "m": sig.method_name, "i": {k: _spec(v) for k, v in sig.inputs.items()},
            "o": {k: _spec(v) for k, v in sig.outputs.items()}, "d": {k: _array(v) for k, v in sig.defaults.items()}}


def _from_spec(data: list[Any]) -> TensorSpec:
    code, shape, tensor_name, ref = data
    return TensorSpec(DType(code), tuple(shape) if shape is not None else None, tensor_name, ref)


def signature_from(data: Mapping[str, Any]) -> Signature:
    return Signature(data["n"], data["m"], {k: _from_spec(v) for k, v in data["i"].items()},
                     {k: _from_spec(v) for k, v in data["o"].items()},
                     {k: _from_array(v) for k, v in data["d"].items()})


def status_data(status: VersionStatus) -> list[Any]:
    err = status.error
    return [status.version, status.state.name, int(err.code) if err else None, err.message if err else ""]


def status_from(data: list[Any]) -> VersionStatus:
    version, state, code, message = data
    return VersionStatus(version, ServableState[state], ServingError(Code(code), message) if code is not None else None)


class ModelState:
    """One model as the snapshot has it, with its decoded signatures per AVAILABLE version."""

    __slots__ = ("name", "platform", "statuses", "labels", "split", "has_split", "signatures")

    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        self.name = name
        self.platform: str | None = data["platform"]
        self.statuses = [status_from(s) for s in data["versions"]]
        self.labels: dict[str, int] = dict(data["labels"])
        self.split: dict[str, Any] | None = data["split"]
        self.has_split: bool = data["has_split"]
        self.signatures: dict[int, dict[str, Signature]] = {
            int(v): {name: signature_from(sig) for name, sig in sigs.items()} for v, sigs in data["sigs"].items()
        }


class Snapshot:
    """The front end's view of the models, answering as ModelManager would."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        data = data or {"models": {}, "unready": {}, "draining": "", "logged": []}
        self.models = {name: ModelState(name, m) for name, m in data["models"].items()}
        self.unready: dict[str, str] = dict(data["unready"])
        self.draining: str = data["draining"]
        self.logged = frozenset(data["logged"])
        """Models with a request log (written by the model process)."""

    def pick(self, request: ServableRequest) -> ServableId:
        """The AVAILABLE version `request` means, or ModelManager.lease's error for it."""
        model = self.models.get(request.name)
        number: int | None = None
        if model is not None:
            if request.label is not None:
                number = model.labels.get(request.label)
                if number is None:
                    raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {request.label}")
                request = ServableRequest(request.name, number)
            elif request.version is not None:
                number = request.version
            else:
                number = max(model.signatures, default=None)
        if model is None or number is None or number not in model.signatures:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request.describe()}")
        return ServableId(request.name, number)

    def signatures(self, servable: ServableId) -> dict[str, Signature]:
        return self.models[servable.name].signatures[servable.version]

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        model = self.models.get(name)
        if model is None or not model.statuses:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is None:
            return list(model.statuses)
        chosen = [s for s in model.statuses if s.version == version]
        if not chosen:
            raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
        return chosen
