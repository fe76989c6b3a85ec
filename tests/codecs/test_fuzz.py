"""Property-based fuzzing (hypothesis) of the two decoders every request goes through:

* the REST JSON decoder (`fast_json.loads`) against the plain orjson path: same value or the same refusal, for
  generated documents, big all-number arrays that take the vectorised path, and arbitrary mutations of them;
* the TensorProto decoder (`codecs.tfserving.tensor.to_ndarray`) against tf.make_ndarray: the same array, or a
  TF Serving "tensor parsing error" where TensorFlow refuses; never another exception, never a huge allocation.

Bounded: a few hundred examples each, no deadline flakiness (deadline=None), derandomized so CI is repeatable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserving.codecs.tfserving.protos.tensor_pb2 import TensorProto
from pyserving.codecs.tfserving.tensor import to_ndarray
from pyserving.errors import Code, ServingError
from pyserving.frontends.rest.fast_json import MIN_FAST_BYTES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frontends" / "rest"))
from test_fast_json import check  # noqa: E402  (the differential oracle the unit tests use)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


@FUZZ
@given(json_values)
def test_json_documents_decode_like_orjson(value: object) -> None:
    check(json.dumps(value).encode())


@FUZZ
@given(json_values, st.data())
def test_mutated_json_decodes_like_orjson_or_fails_alike(value: object, data: st.DataObject) -> None:
    body = bytearray(json.dumps(value).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(0, len(body)))
        if op == "insert":
            body[at:at] = data.draw(st.sampled_from([b"[", b"]", b",", b"{", b'"', b"-", b"e", b"1", b".", b" "]))
        elif body and at < len(body):
            if op == "flip":
                body[at] = data.draw(st.integers(0, 255))
            else:
                del body[at]
    check(bytes(body))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([np.float32, np.float64, np.int64]), st.integers(1, 4), st.data())
def test_big_number_arrays_take_the_fast_path_and_agree(dtype: type, width: int, data: st.DataObject) -> None:
    rows = MIN_FAST_BYTES // (width * 8) + 1
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    array = (rng.standard_normal((rows, width)) * 10 ** data.draw(st.integers(-5, 5))).astype(dtype)
    text = json.dumps({"instances": array.tolist()})
    cut = data.draw(st.none() | st.integers(0, len(text)))
    body = text.encode() if cut is None else (text[:cut] + data.draw(st.sampled_from(["", ",", "]", "x"])) +
                                              text[cut:]).encode()
    check(body)


DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 7: object, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val", 7: "string_val",
          9: "int64_val", 10: "bool_val", 17: "int_val", 19: "half_val", 22: "uint32_val", 23: "uint64_val"}


@st.composite
def tensor_protos(draw: st.DrawFn) -> TensorProto:
    dtype = draw(st.sampled_from(sorted(DTYPES)) | st.integers(0, 30))
    dims = draw(st.lists(st.integers(-1, 4), max_size=3))
    proto = TensorProto(dtype=dtype)
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    kind = draw(st.sampled_from(["typed", "content", "both", "none"]))
    if kind in ("content", "both"):
        proto.tensor_content = draw(st.binary(max_size=64))
    if kind in ("typed", "both") and dtype in FIELDS:
        n = draw(st.integers(0, 8))
        field = FIELDS[dtype]
        if field == "string_val":
            values = draw(st.lists(st.binary(max_size=5), min_size=n, max_size=n))
        elif field in ("float_val", "double_val"):
            values = draw(st.lists(st.floats(width=32), min_size=n, max_size=n))
        elif field == "bool_val":
            values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        else:
            bits = {"int64_val": (-(2**63), 2**63 - 1), "uint64_val": (0, 2**64 - 1), "uint32_val": (0, 2**32 - 1),
                    "half_val": (0, 2**16 - 1)}.get(field, (-(2**31), 2**31 - 1))
            values = draw(st.lists(st.integers(*bits), min_size=n, max_size=n))
        getattr(proto, field).extend(values)
    return proto


def _tensorflow_answer(proto: TensorProto) -> np.ndarray | None:
    try:
        array = tf.make_ndarray(tf.make_tensor_proto(0).FromString(proto.SerializeToString()))
    except Exception:
        return None
    if array.dtype == object:  # TF pads an empty string_val with str "" (a Python quirk); the C++ server, and we, use b""
        array = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array) \
            if array.size else array
    return array


@FUZZ
@given(tensor_protos())
def test_tensor_protos_decode_like_make_ndarray_or_fail_cleanly(proto: TensorProto) -> None:
    expected = _tensorflow_answer(proto)
    try:
        ours = to_ndarray("x", proto, max_bytes=1 << 20)
    except ServingError as exc:
        assert exc.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED)
        assert exc.message.startswith(("tensor parsing error: x", "Input x"))
        return
    if expected is None:
        # TensorFlow refuses a few we decode on purpose (bfloat16 via ml_dtypes is not among these dtypes); the
        # rest must agree, so this is only reachable for inputs TensorFlow cannot even read.
        pytest.fail(f"decoded what tf.make_ndarray refuses: {proto}")
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours, expected)
