"""What the Open Inference Protocol's REST and gRPC front ends share above the codec: versions as V2 names them,
and model metadata in plain data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyserving.codecs.oip.tensor import datatype_name, dims
from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableRequest
from pyserving.core.service import InferenceService
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.runtimes.base import DEFAULT_SIGNATURE

SERVER_NAME = "pyserving"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
SIGNATURE_PARAMETER = "signature_name"
"""The request parameter naming the signature to run (the model's serving_default when absent)."""


def servable_request(name: str, version: str | None) -> ServableRequest:
    """V2 versions are strings: digits are a version number, anything else one of the model's version labels."""
    if not name:
        raise ServingError(Code.INVALID_ARGUMENT, "Missing model name in request.")
    if not version:
        return ServableRequest(name)
    if version.isascii() and version.isdigit():
        number = int(version)
        if number >= 2**63:
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {version} to numeric.")
        return ServableRequest(name, number)
    return ServableRequest(name, label=version)


def model_metadata(service: InferenceService, control: ControlPlane, target: ServableRequest) -> dict[str, Any]:
    """The protocol's model metadata, from the serving_default signature (another signature is still callable
    through the `signature_name` parameter; the metadata has room for one)."""
    meta = service.metadata(target)
    sig = meta.signatures.get(DEFAULT_SIGNATURE)
    if sig is None and len(meta.signatures) == 1:
        sig = next(iter(meta.signatures.values()))
    versions = [str(s.version) for s in control.status(target.name) if s.state == ServableState.AVAILABLE]
    return {
        "name": meta.servable.name,
        "versions": versions,
        "platform": control.platform(target.name) or "",
        "inputs": [{"name": k, "datatype": datatype_name(v.dtype), "shape": dims(v.shape)}
                   for k, v in (sig.inputs.items() if sig else ())],
        "outputs": [{"name": k, "datatype": datatype_name(v.dtype), "shape": dims(v.shape)}
                    for k, v in (sig.outputs.items() if sig else ())],
    }


# --- the model repository extension ----------------------------------------------------------------------------

REPOSITORY_STATES = {
    ServableState.START: "LOADING", ServableState.LOADING: "LOADING", ServableState.AVAILABLE: "READY",
    ServableState.UNLOADING: "UNLOADING", ServableState.END: "UNAVAILABLE", ServableState.UNKNOWN: "UNAVAILABLE",
}
"""Triton's model states for pyserving's version states."""
UNLOADED_REASON = "unloaded"
"""Triton's reason for a version that was unloaded (explicitly, or because the version policy dropped it)."""
UNLOAD_PARAMETERS = frozenset(("unload_dependents",))
"""Unload parameters accepted (and with nothing to do: pyserving models have no dependents)."""


async def repository_index(control: ControlPlane, ready_only: bool) -> list[dict[str, str]]:
    """The index entries, {name, version, state, reason}, of every configured model: one per tracked version, or
    one without a version for a model that has none. `ready_only`: only READY versions."""
    entries = []
    for model in await control.repository():
        if not model.versions:
            if not ready_only:
                why = UNLOADED_REASON if model.unloaded else model.why_unavailable
                entries.append({"name": model.name, "version": "", "state": "UNAVAILABLE", "reason": why})
            continue
        for status in model.versions:
            state = REPOSITORY_STATES[status.state]
            if ready_only and state != "READY":
                continue
            reason = ""
            if status.state == ServableState.END:
                reason = status.error.message if status.error is not None else UNLOADED_REASON
            entries.append({"name": model.name, "version": str(status.version), "state": state, "reason": reason})
    return entries


def check_repository_name(repository_name: str) -> None:
    """Refuse a named repository: pyserving has one (gRPC requests may name one, REST paths here never do)."""
    if repository_name:
        raise ServingError(Code.UNIMPLEMENTED, f"'repository_name' specification is not supported: pyserving has "
                           f"one repository, its model config. Leave it empty (got '{repository_name}').")


def check_repository_call(model_name: str, repository_name: str, parameters: Mapping[str, Any],
                          accepted: frozenset[str]) -> None:
    """Refuse what a load or unload request may carry but pyserving cannot honour, saying what to do instead."""
    if not model_name:
        raise ServingError(Code.INVALID_ARGUMENT, "Missing model name in request.")
    check_repository_name(repository_name)
    unknown = sorted(set(parameters) - accepted)
    if unknown:
        overrides = [k for k in unknown if k == "config" or k.startswith("file:")]
        if overrides:
            raise ServingError(Code.UNIMPLEMENTED, f"Load parameters {', '.join(overrides)} are not supported: "
                               "pyserving loads a model from its configured base_path. Change the model config "
                               "(--model_config_file, or HandleReloadConfigRequest) instead.")
        allowed = ", ".join(sorted(accepted)) or "none"
        raise ServingError(Code.INVALID_ARGUMENT, f"Unknown parameter(s) {', '.join(unknown)}; accepted: {allowed}.")
