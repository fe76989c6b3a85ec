"""Tensors of the Open Inference Protocol: V2 datatype names, JSON `data`, and raw (binary) little-endian bytes.

Shared by the REST and gRPC front ends: each turns its wire form into `InputTensor`s, and `decode_inputs` checks
them against the signature the request will run, so both protocols refuse the same things with the same words.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.runtimes.base import Signature, TensorSpec

DATATYPES: dict[DType, str] = {
    DType.DT_BOOL: "BOOL",
    DType.DT_UINT8: "UINT8",
    DType.DT_UINT16: "UINT16",
    DType.DT_UINT32: "UINT32",
    DType.DT_UINT64: "UINT64",
    DType.DT_INT8: "INT8",
    DType.DT_INT16: "INT16",
    DType.DT_INT32: "INT32",
    DType.DT_INT64: "INT64",
    DType.DT_HALF: "FP16",
    DType.DT_FLOAT: "FP32",
    DType.DT_DOUBLE: "FP64",
    DType.DT_STRING: "BYTES",
    DType.DT_BFLOAT16: "BF16",
}
DTYPES: dict[str, DType] = {v: k for k, v in DATATYPES.items()}
_LENGTH = struct.Struct("<I")


@dataclass(slots=True)
class InputTensor:
    """One input as a front end read it: exactly one of `data` (JSON values or gRPC contents) and `raw`."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: Any = None
    raw: bytes | memoryview | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None
    """The output's own `binary_data` parameter (None: the request's `binary_data_output` decides)."""


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray = field(repr=False)


def datatype_name(dtype: DType) -> str:
    """The V2 name of a signature's dtype; types V2 has no name for keep TensorFlow's (metadata only)."""
    return DATATYPES.get(dtype, dtype.name)


def dims(shape: tuple[int | None, ...] | None) -> list[int]:
    """A signature shape as V2 metadata writes it: unknown dims are -1, and an unknown rank is [-1]."""
    if shape is None:
        return [-1]
    return [-1 if d is None else d for d in shape]


def _dtype(datatype: str, name: str) -> DType:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise ServingError(Code.INVALID_ARGUMENT, f"invalid datatype '{datatype}' for input '{name}': use one of "
                           f"{', '.join(DATATYPES.values())}")
    return dtype


def _shape(shape: Any, name: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple, Sequence)) or isinstance(shape, (str, bytes)) or \
            not all(type(d) is int and d >= 0 for d in shape):
        raise ServingError(Code.INVALID_ARGUMENT, f"input '{name}' has shape {shape!r}: a shape is a list of "
                           "non-negative integers")
    return tuple(shape)


def _strings(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _strings(item)
    else:
        yield data


def _cast(data: np.ndarray, target: np.dtype) -> np.ndarray | None:
    """A decoded JSON number array (float64, or int64 when every number is an integer) as `target`, where the
    cast gives what np.asarray of the same numbers as Python values gives; None where it might not (floats for an
    integer or bool type, integers out of the type's range, integers past 2**53 for a float type)."""
    if data.size == 0:
        return None
    if target.kind == "f":
        if data.dtype.kind == "f" or max(-int(data.min()), int(data.max())) <= 1 << 53:  # exact in a float64
            return data.astype(target)
        return None
    if target.kind in "iu" and data.dtype.kind in "iu":
        bounds = np.iinfo(target)
        if bounds.min <= int(data.min()) and int(data.max()) <= bounds.max:
            return data.astype(target)
    return None


def _from_data(t: InputTensor, dtype: DType, shape: tuple[int, ...], count: int) -> np.ndarray:
    data = t.data
    # the REST front end's JSON decoder gives big number arrays as numpy arrays
    array = _cast(data, dtype.numpy) if isinstance(data, np.ndarray) else None
    if array is None:
        array = _from_values(t, data.tolist() if isinstance(data, np.ndarray) else data, dtype)
    if array.size != count:
        raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' has {array.size} elements, but its shape "
                           f"{list(shape)} needs {count}")
    return array.reshape(shape)


def _from_values(t: InputTensor, data: Any, dtype: DType) -> np.ndarray:
    """JSON values (Python's: a numpy array's `tolist()` gives the ones orjson would) or gRPC contents."""
    if dtype is DType.DT_STRING:
        items = []
        for item in _strings(data):
            if isinstance(item, str):
                item = item.encode()
            elif not isinstance(item, bytes):
                raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' is BYTES, but holds {item!r}: send "
                                   "strings")
            items.append(item)
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array
    try:
        return np.asarray(data, dtype=dtype.numpy)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' does not hold {t.datatype} values: "
                           f"{exc}") from None


def _from_raw(t: InputTensor, dtype: DType, shape: tuple[int, ...], count: int) -> np.ndarray:
    raw = t.raw
    assert raw is not None
    if dtype is DType.DT_STRING:
        items, offset, view = [], 0, memoryview(raw)
        while offset < len(view):
            if offset + 4 > len(view):
                raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}': BYTES data ends inside an element's "
                                   "4-byte length")
            (length,) = _LENGTH.unpack_from(view, offset)
            offset += 4
            if offset + length > len(view):
                raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}': a BYTES element of {length} bytes "
                                   "runs past the end of the data")
            items.append(bytes(view[offset:offset + length]))
            offset += length
        array = np.empty(len(items), dtype=object)
        array[:] = items
        if len(items) != count:
            raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' has {len(items)} elements, but its "
                               f"shape {list(shape)} needs {count}")
        return array.reshape(shape)
    numpy = dtype.numpy.newbyteorder("<")
    if len(raw) != count * numpy.itemsize:
        raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' has {len(raw)} bytes of data, but its shape "
                           f"{list(shape)} of {t.datatype} needs {count * numpy.itemsize}")
    return np.frombuffer(raw, dtype=numpy).reshape(shape)


def _expected(spec: TensorSpec) -> str:
    return datatype_name(spec.dtype)


def decode_inputs(inputs: Sequence[InputTensor], sig: Signature, model: str) -> dict[str, np.ndarray]:
    """The request's tensors as arrays of the signature's dtypes. A datatype other than the signature's is refused
    rather than cast, as Triton does: a silent cast would hide a client's mistake (FP64 sent to an FP32 model)."""
    out: dict[str, np.ndarray] = {}
    for t in inputs:
        if t.name in out:
            raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' is given twice")
        dtype = _dtype(t.datatype, t.name)
        spec = sig.inputs.get(t.name)
        if spec is not None and spec.dtype != dtype:
            raise ServingError(Code.INVALID_ARGUMENT, f"inference input '{t.name}' data-type is '{t.datatype}', but "
                               f"model '{model}' expects '{_expected(spec)}'")
        if dtype is DType.DT_BFLOAT16:
            raise ServingError(Code.UNIMPLEMENTED, f"input '{t.name}': BF16 tensors are not supported")
        shape = _shape(t.shape, t.name)
        count = math.prod(shape)
        if t.raw is not None:
            out[t.name] = _from_raw(t, dtype, shape, count)
        elif t.data is None:
            raise ServingError(Code.INVALID_ARGUMENT, f"input '{t.name}' has no data")
        else:
            out[t.name] = _from_data(t, dtype, shape, count)
    return out


def output_tensor(name: str, array: np.ndarray) -> OutputTensor:
    try:
        dtype = DType.from_numpy(array.dtype)
    except TypeError:
        dtype = DType.DT_INVALID
    datatype = DATATYPES.get(dtype)
    if datatype is None:
        raise ServingError(Code.UNIMPLEMENTED, f"output '{name}' is of type {array.dtype}, which the Open Inference "
                           "Protocol cannot carry")
    return OutputTensor(name, datatype, list(array.shape), array)


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def to_raw(t: OutputTensor) -> bytes:
    """The binary form: little-endian elements, row-major; BYTES elements each after their 4-byte length."""
    array = t.array
    if t.datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            item = _as_bytes(item)
            parts.append(_LENGTH.pack(len(item)))
            parts.append(item)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json_data(t: OutputTensor) -> list[Any] | None:
    """The JSON `data`: row-major flattened values; None when a BYTES element is not UTF-8 (JSON strings cannot
    carry it: the front end then sends that output as binary data)."""
    flat = t.array.reshape(-1)
    if t.datatype == "BYTES":
        try:
            return [_as_bytes(item).decode() for item in flat]
        except UnicodeDecodeError:
            return None
    return flat.tolist()


def parameter_value(parameters: Mapping[str, Any], key: str) -> Any:
    return parameters.get(key) if isinstance(parameters, Mapping) else None
