"""Signatures (plain dataclasses) -> TF Serving's SignatureDefMap, as GetModelMetadata reports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from pyserving.codecs.tfserving.protos.get_model_metadata_pb2 import SignatureDefMap
from pyserving.codecs.tfserving.protos.meta_graph_pb2 import TensorInfo
from pyserving.codecs.tfserving.tensor import fill_proto
from pyserving.runtimes.base import Signature, TensorSpec

_REF_OFFSET = 100  # DT_FLOAT_REF = DT_FLOAT + 100 (types.proto)


def _fill_tensor_info(info: TensorInfo, spec: TensorSpec) -> None:
    info.name = spec.tensor_name
    info.dtype = int(spec.dtype) + (_REF_OFFSET if spec.ref else 0)
    if spec.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        info.tensor_shape.SetInParent()
        for d in spec.shape:
            info.tensor_shape.dim.add(size=-1 if d is None else d)


def signature_def_map(signatures: Mapping[str, Signature]) -> SignatureDefMap:
    out = SignatureDefMap()
    for name, sig in signatures.items():
        sd = out.signature_def[name]
        sd.method_name = sig.method_name
        for alias, spec in sig.inputs.items():
            _fill_tensor_info(sd.inputs[alias], spec)
        for alias, spec in sig.outputs.items():
            _fill_tensor_info(sd.outputs[alias], spec)
        for alias, value in sig.defaults.items():
            fill_proto(sd.defaults[alias], value)
    return out


def signature_def_map_json(signatures: Mapping[str, Signature]) -> dict[str, Any]:
    """The REST metadata's "signature_def" object (TF Serving prints the proto with its field names)."""
    return json_format.MessageToDict(
        signature_def_map(signatures), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
