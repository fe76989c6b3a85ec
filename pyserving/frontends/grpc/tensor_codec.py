"""TensorProto <-> numpy. The only gRPC code that knows tensor encodings."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError

# TF Serving answers with typed *_val fields unless --enable_serialization_as_tensor_content.
_VAL_FIELD = {
    DType.DT_FLOAT: "float_val",
    DType.DT_DOUBLE: "double_val",
    DType.DT_INT8: "int_val",
    DType.DT_INT16: "int_val",
    DType.DT_INT32: "int_val",
    DType.DT_UINT8: "int_val",
    DType.DT_UINT16: "int_val",
    DType.DT_INT64: "int64_val",
    DType.DT_UINT32: "uint32_val",
    DType.DT_UINT64: "uint64_val",
    DType.DT_BOOL: "bool_val",
    DType.DT_STRING: "string_val",
    DType.DT_COMPLEX64: "scomplex_val",
    DType.DT_COMPLEX128: "dcomplex_val",
}


_NUMERIC = {d: d.numpy for d in _VAL_FIELD if d not in (DType.DT_STRING,)}


def to_ndarray(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a request tensor. The common case — numbers in tensor_content, what tf.make_tensor_proto sends — is
    one np.frombuffer (tf.make_ndarray spends ~15 us of Python checks on it); everything else goes through
    TensorFlow's own converter."""
    try:
        if proto.tensor_content:
            dtype = _NUMERIC.get(proto.dtype)  # type: ignore[call-overload]
            if dtype is not None:
                shape = [d.size for d in proto.tensor_shape.dim]
                array = np.frombuffer(proto.tensor_content, dtype=dtype)
                return array.reshape(shape)
        return tf.make_ndarray(proto)
    except Exception as exc:
        raise ServingError(Code.INVALID_ARGUMENT, f"tensor parsing error: {alias} ({exc})") from None


def to_proto(array: np.ndarray, *, tensor_content: bool = False) -> tensor_pb2.TensorProto:
    dtype = DType.from_numpy(array.dtype)
    proto = tensor_pb2.TensorProto(
        dtype=int(dtype),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        ),
    )
    if dtype == DType.DT_STRING:
        proto.string_val.extend(bytes(v) if not isinstance(v, str) else v.encode() for v in array.reshape(-1))
    elif dtype == DType.DT_HALF:
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())
    elif tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    elif dtype in (DType.DT_COMPLEX64, DType.DT_COMPLEX128):
        getattr(proto, _VAL_FIELD[dtype]).extend(array.reshape(-1).view(array.real.dtype).tolist())
    else:
        getattr(proto, _VAL_FIELD[dtype]).extend(array.reshape(-1).tolist())
    return proto
