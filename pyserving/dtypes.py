"""TensorFlow's DataType enum, without importing TensorFlow: the vocabulary signatures and codecs share."""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.IntEnum):
    """Numbered exactly as tensorflow.DataType (types.proto), so TensorProto.dtype converts with DType(value)."""

    DT_INVALID = 0
    DT_FLOAT = 1
    DT_DOUBLE = 2
    DT_INT32 = 3
    DT_UINT8 = 4
    DT_INT16 = 5
    DT_INT8 = 6
    DT_STRING = 7
    DT_COMPLEX64 = 8
    DT_INT64 = 9
    DT_BOOL = 10
    DT_QINT8 = 11
    DT_QUINT8 = 12
    DT_QINT32 = 13
    DT_BFLOAT16 = 14
    DT_QINT16 = 15
    DT_QUINT16 = 16
    DT_UINT16 = 17
    DT_COMPLEX128 = 18
    DT_HALF = 19
    DT_RESOURCE = 20
    DT_VARIANT = 21
    DT_UINT32 = 22
    DT_UINT64 = 23

    @property
    def short_name(self) -> str:
        """The name TensorFlow's DataTypeString prints ("float", "int32", "string")."""
        return _SHORT_NAMES.get(self, self.name[3:].lower())

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype of a tensor of this type; DT_STRING tensors are object arrays of bytes."""
        try:
            return _TO_NUMPY[self]
        except KeyError:
            raise TypeError(f"{self.name} has no numpy equivalent") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DType:
        kind = np.dtype(dtype)
        if kind.kind in "OSU":
            return cls.DT_STRING
        try:
            return _FROM_NUMPY[kind]
        except KeyError:
            raise TypeError(f"numpy dtype {kind} has no TensorFlow equivalent") from None


_SHORT_NAMES = {DType.DT_HALF: "half", DType.DT_BFLOAT16: "bfloat16"}

_TO_NUMPY: dict[DType, np.dtype] = {
    DType.DT_FLOAT: np.dtype(np.float32),
    DType.DT_DOUBLE: np.dtype(np.float64),
    DType.DT_HALF: np.dtype(np.float16),
    DType.DT_INT8: np.dtype(np.int8),
    DType.DT_INT16: np.dtype(np.int16),
    DType.DT_INT32: np.dtype(np.int32),
    DType.DT_INT64: np.dtype(np.int64),
    DType.DT_UINT8: np.dtype(np.uint8),
    DType.DT_UINT16: np.dtype(np.uint16),
    DType.DT_UINT32: np.dtype(np.uint32),
    DType.DT_UINT64: np.dtype(np.uint64),
    DType.DT_BOOL: np.dtype(np.bool_),
    DType.DT_STRING: np.dtype(object),
    DType.DT_COMPLEX64: np.dtype(np.complex64),
    DType.DT_COMPLEX128: np.dtype(np.complex128),
}
_FROM_NUMPY: dict[np.dtype, DType] = {v: k for k, v in _TO_NUMPY.items() if k is not DType.DT_STRING}
