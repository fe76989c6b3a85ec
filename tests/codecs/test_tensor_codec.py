"""codecs.tfserving.tensor decodes what TF Serving's clients send exactly as tf.make_ndarray does, without
TensorFlow, and encodes what tf.make_ndarray reads back."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pyserving.codecs.tfserving.protos.tensor_pb2 import TensorProto
from pyserving.codecs.tfserving import tensor as tensor_codec
from pyserving.codecs.tfserving.tensor import to_ndarray, to_proto
from pyserving.errors import Code, ServingError

CASES = [
    ([1.0, 2.5], tf.float32, None), ([[1, 2], [3, 4]], tf.int32, None), ([b"a", b"\xff"], tf.string, None),
    ([True, False], tf.bool, None), ([1 + 2j], tf.complex64, None), ([3 - 1j], tf.complex128, None),
    ([1.5], tf.float16, None), ([1.5], tf.bfloat16, None), ([2**40], tf.int64, None), ([1.0], tf.float64, None),
    ([7], tf.uint8, None), ([7], tf.int8, None), ([7], tf.int16, None), ([7], tf.uint16, None),
    ([7], tf.uint32, None), ([2**63], tf.uint64, None),
    (1.0, tf.float32, [3]), (b"x", tf.string, [2, 2]), (5, tf.int64, [0]), ([], tf.float32, [2]),
]


@pytest.mark.parametrize(("value", "dtype", "shape"), CASES, ids=[f"{c[1].name}-{c[2]}" for c in CASES])
def test_decodes_as_make_ndarray(value: object, dtype: tf.DType, shape: list[int] | None) -> None:
    theirs = tf.make_tensor_proto(value, dtype=dtype, shape=shape)
    expected = tf.make_ndarray(theirs)
    for proto in (theirs, tf.make_tensor_proto(expected)):  # typed values, then tensor_content for numbers
        got = to_ndarray("x", TensorProto.FromString(proto.SerializeToString()))
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("array", [np.array([[1.5, -2]], np.float32), np.array([b"a", b"bc"], dtype=object),
                                   np.array([1 + 1j], np.complex64), np.array([0.5], np.float16),
                                   np.arange(6, dtype=np.int64).reshape(2, 3)])
@pytest.mark.parametrize("tensor_content", [False, True])
def test_encodes_what_make_ndarray_reads(array: np.ndarray, tensor_content: bool) -> None:
    proto = to_proto(array, tensor_content=tensor_content)
    back = tf.make_ndarray(tf.make_tensor_proto(0).FromString(proto.SerializeToString()))
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("proto", [
    TensorProto(dtype=7, tensor_content=b"\x01a"),  # strings travel in string_val
    TensorProto(dtype=1, tensor_content=b"\x00\x00\x80"),  # not a whole float
    TensorProto(dtype=99),
    TensorProto(dtype=20),  # DT_RESOURCE
])
def test_undecodable_tensors_are_tf_serving_parse_errors(proto: TensorProto) -> None:
    with pytest.raises(ServingError) as err:
        to_ndarray("x", proto)
    assert err.value.code == Code.INVALID_ARGUMENT and err.value.message.startswith("tensor parsing error: x (")


def _unpacked(field: int, values: np.ndarray) -> bytes:
    """Wire bytes of a TensorProto's typed field sent unpacked (one tag per value), as protobuf lets senders do."""
    tag = bytes([(field << 3) | (5 if values.itemsize == 4 else 1)])
    return b"".join(tag + v.tobytes() for v in values.astype(values.dtype.newbyteorder("<")))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.complex64, tf.complex128])
@pytest.mark.parametrize("count", [1023, 1024, 150_528])
def test_big_typed_float_fields_decode_as_make_ndarray(dtype: tf.DType, count: int) -> None:
    """Big float_val/double_val/scomplex_val/dcomplex_val tensors (an image sent in float_val) are read from the
    wire bytes in one copy: the same values, bit for bit (NaN, -0.0, subnormals), as tf.make_ndarray's."""
    rng = np.random.default_rng(count)
    values = rng.standard_normal(count * (2 if dtype.is_complex else 1)).astype(dtype.real_dtype.as_numpy_dtype)
    values[:4] = [np.nan, -0.0, np.finfo(values.dtype).tiny / 4, np.inf]
    field = {tf.float32: "float_val", tf.float64: "double_val", tf.complex64: "scomplex_val",
             tf.complex128: "dcomplex_val"}[dtype]
    proto = TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.dim.add(size=1)
    proto.tensor_shape.dim.add(size=count)
    getattr(proto, field).extend(values.tolist())
    wire = proto.SerializeToString()
    expected = tf.make_ndarray(tf.make_tensor_proto(0).FromString(wire))
    number = {tf.float32: 5, tf.float64: 6, tf.complex64: 9, tf.complex128: 12}[dtype]
    header = TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape).SerializeToString()
    for sent in (wire, header + _unpacked(number, values)):
        got = to_ndarray("x", TensorProto.FromString(sent))
        assert got.dtype == expected.dtype and got.shape == expected.shape == (1, count)
        assert got.tobytes() == expected.tobytes()
        assert got.flags.writeable == (len(values) < 1024)  # 1024 values and more: a view of the wire bytes


def test_a_big_float_val_shorter_than_its_shape_repeats_its_last_value() -> None:
    proto = TensorProto(dtype=tf.float32.as_datatype_enum, float_val=np.arange(2000, dtype=np.float32).tolist())
    proto.tensor_shape.dim.add(size=2500)
    got = to_ndarray("x", TensorProto.FromString(proto.SerializeToString()))
    np.testing.assert_array_equal(got, tf.make_ndarray(proto))
    assert got[-1] == 1999.0


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        v &= (1 << 64) - 1  # negative int32s travel sign-extended, in ten bytes
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


INT_VAL_CASES = [(tf.uint8, 0, 256), (tf.uint16, 0, 16384), (tf.int8, 0, 128), (tf.int16, 0, 16384),
                 (tf.int32, 0, 16384), (tf.int32, 0, 128),  # every value one byte
                 (tf.uint16, 0, 65536), (tf.int32, -5, 5), (tf.int16, -300, 300)]  # values of 3 and 10 bytes


@pytest.mark.parametrize(("dtype", "lo", "hi"), INT_VAL_CASES,
                         ids=[f"{c[0].name}[{c[1]},{c[2]})" for c in INT_VAL_CASES])
@pytest.mark.parametrize("count", [1023, 1024, 150_528])
def test_big_int_val_fields_decode_as_make_ndarray(dtype: tf.DType, lo: int, hi: int, count: int) -> None:
    """int_val tensors (a uint8 image sent in int_val) whose values take one or two varint bytes are read from the
    wire bytes with numpy; values of more bytes (negative ones take ten) go value by value. Both give
    tf.make_ndarray's array, sent packed or unpacked, with the smallest and largest values in the range."""
    values = np.random.default_rng(count).integers(lo, hi, count)
    values[:2] = [lo, hi - 1]
    proto = TensorProto(dtype=dtype.as_datatype_enum, int_val=values.tolist())
    proto.tensor_shape.dim.add(size=count)
    wire = proto.SerializeToString()
    expected = tf.make_ndarray(tf.make_tensor_proto(0).FromString(wire))
    header = TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape).SerializeToString()
    unpacked = b"".join(b"\x38" + _varints([v]) for v in values.tolist())  # field 7, wire type 0
    for sent in (wire, header + unpacked):
        got = to_ndarray("x", TensorProto.FromString(sent))
        assert got.dtype == expected.dtype and got.shape == expected.shape == (count,)
        np.testing.assert_array_equal(got, expected)
    numpy_read = tensor_codec._small_varints_from_wire(TensorProto.FromString(wire), 7, count, expected.dtype)
    assert (numpy_read is not None) == (lo >= 0 and hi <= 16384)


@pytest.mark.parametrize(("dtype", "bad"), [(tf.uint8, 256), (tf.int8, 128), (tf.uint8, 16383)])
def test_a_big_int_val_the_dtype_cannot_hold_is_refused_as_before(dtype: tf.DType, bad: int) -> None:
    values = [1, 100, 0] * 700 + [bad]  # one-byte values, then one the dtype cannot hold
    proto = TensorProto(dtype=dtype.as_datatype_enum, int_val=values)
    proto.tensor_shape.dim.add(size=len(values))
    with pytest.raises(ServingError) as err:
        to_ndarray("x", TensorProto.FromString(proto.SerializeToString()))
    assert err.value.code == Code.INVALID_ARGUMENT
    assert err.value.message == f"tensor parsing error: x (Python integer {bad} out of bounds for {dtype.name})"


def test_a_big_int_val_shorter_than_its_shape_repeats_its_last_value() -> None:
    proto = TensorProto(dtype=tf.uint8.as_datatype_enum, int_val=[v % 256 for v in range(2000)])
    proto.tensor_shape.dim.add(size=2500)
    got = to_ndarray("x", TensorProto.FromString(proto.SerializeToString()))
    np.testing.assert_array_equal(got, tf.make_ndarray(proto))
    assert got[-1] == 1999 % 256
