"""What the Open Inference Protocol's REST and gRPC front ends share above the codec: versions as V2 names them,
and model metadata in plain data."""

from __future__ import annotations

from typing import Any

from pyserving.codecs.oip.tensor import datatype_name, dims
from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableRequest
from pyserving.core.service import InferenceService
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.runtimes.base import DEFAULT_SIGNATURE

SERVER_NAME = "pyserving"
EXTENSIONS = ["binary_tensor_data"]
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
