"""TF Serving's REST JSON <-> numpy: predict (row and columnar), classify/regress examples, and responses.

The only code that knows JSON tensors. Error texts follow tensorflow_serving/util/json_tensor.cc, so clients
that match on them keep working.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.frontends.examples import serialized_examples
from pyserving.frontends.rest import fast_json
from pyserving.runtimes.base import Signature, TensorSpec

_INT_RANGES = {
    DType.DT_INT8: (-(2**31), 2**31 - 1),  # TF Serving accepts any int32 for the small int types
    DType.DT_INT16: (-(2**31), 2**31 - 1),
    DType.DT_INT32: (-(2**31), 2**31 - 1),
    DType.DT_UINT8: (-(2**31), 2**31 - 1),
    DType.DT_UINT16: (0, 2**32 - 1),
    DType.DT_INT64: (-(2**63), 2**63 - 1),
    DType.DT_UINT32: (0, 2**32 - 1),
    DType.DT_UINT64: (0, 2**64 - 1),
}
_FLOATS = (DType.DT_FLOAT, DType.DT_DOUBLE)
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def _show(value: Any) -> str:
    """A JSON value as TF Serving prints it inside error messages (abridged: errors must stay readable)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, (list, np.ndarray)):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def parse_body(body: bytes) -> dict[str, Any]:
    """The request document; it must be a JSON object."""
    try:
        doc = fast_json.loads(body)
    except fast_json.JsonParseError as exc:
        if exc.reason.startswith("The document is empty"):
            raise _invalid("JSON Parse error: The document is empty") from None
        raise _invalid(f"JSON Parse error: {exc.reason} at offset: {exc.offset}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_show(doc)} Is not object")
    return doc


def signature_name(doc: Mapping[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid(
            f"JSON Value: {_show(name)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


# --- JSON value -> tensor --------------------------------------------------------------------------------------


def _nested_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, (list, np.ndarray)):
        if isinstance(value, np.ndarray):
            return shape + list(value.shape)
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_rectangular(value: Any, shape: list[int], level: int = 0) -> None:
    """Raise TF Serving's message for the first place where `value` is not a dense tensor of `shape`."""
    if isinstance(value, np.ndarray):
        if list(value.shape) != shape[level:]:
            raise _invalid(f"Encountered list at unexpected size: {value.shape[0] if value.ndim else 0} "
                           f"at level: {level} expected size: {shape[level]}")
        return
    if isinstance(value, list):
        if level >= len(shape):
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(value) != shape[level]:
            raise _invalid(
                f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
            )
        for item in value:
            _check_rectangular(item, shape, level + 1)
    elif level != len(shape):
        raise _invalid(
            f"JSON Value: {_show(value)} found at incorrect level: {level + 1} in the JSON DOM. "
            f"Expected at level: {len(shape)}"
        )


def _first_bad(flat: Any, ok: Any) -> Any:
    for item in flat:
        if not ok(item):
            return item
    return None


def _type_error(value: Any, dtype: DType) -> ServingError:
    return _invalid(f"JSON Value: {_show(value)} Type: {_json_type(value)} is not of expected type: {dtype.short_name}")


def _b64_or_text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        data = value.get("b64")
        if len(value) != 1 or not isinstance(data, str):
            raise _invalid(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            try:  # TF Serving also accepts web-safe base64
                return base64.urlsafe_b64decode(data)
            except (binascii.Error, ValueError):
                raise _invalid(f"Unable to base64 decode: {_show(value)}") from None
    raise _type_error(value, DType.DT_STRING)


def _string_tensor(value: Any) -> np.ndarray:
    shape = _nested_shape(value)
    _check_rectangular(value, shape)
    flat: list[bytes] = []

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for item in v:
                walk(item)
        else:
            flat.append(_b64_or_text(v))

    walk(value)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


def to_tensor(value: Any, spec: TensorSpec) -> np.ndarray:
    """One JSON value (scalar, nested list, or an ndarray from the fast decoder) as a tensor of `spec.dtype`."""
    dtype = spec.dtype
    if dtype == DType.DT_STRING:
        if isinstance(value, np.ndarray):
            raise _type_error(value.flat[0] if value.size else value, dtype)
        return _string_tensor(value)
    if dtype not in _FLOATS and dtype not in _INT_RANGES and dtype != DType.DT_BOOL:
        raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {_show(value)} to type: {dtype.short_name}")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError):
            shape = _nested_shape(value)
            _check_rectangular(value, shape)
            arr = np.asarray(value, dtype=object)
        if arr.dtype == object:
            shape = _nested_shape(value)
            _check_rectangular(value, shape)
    kind = arr.dtype.kind
    if dtype in _FLOATS:
        if kind in "fiu":
            try:
                with np.errstate(over="raise"):
                    return arr.astype(dtype.numpy, copy=False)
            except FloatingPointError:
                big = _first_bad(arr.flat, lambda v: abs(float(v)) <= float(np.finfo(dtype.numpy).max))
                raise _invalid(
                    f"Cannot convert JSON value: {big} to {dtype.short_name} without loss of precision."
                ) from None
        raise _type_error(_first_bad(arr.flat, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), dtype)
    if dtype == DType.DT_BOOL:
        if kind == "b":
            return arr
        raise _type_error(_first_bad(arr.flat, lambda v: isinstance(v, (bool, np.bool_))), dtype)
    lo, hi = _INT_RANGES[dtype]
    if kind in "iu":
        if arr.size and (arr.min() < lo or arr.max() > hi):
            bad = _first_bad(arr.flat, lambda v: lo <= v <= hi)
            raise _type_error(int(bad), dtype)
        return arr.astype(dtype.numpy, copy=False)
    if kind == "f":
        raise _type_error(float(_first_bad(arr.flat, lambda v: float(v).is_integer()) or arr.flat[0]), dtype)
    raise _type_error(_first_bad(arr.flat, lambda v: isinstance(v, int) and not isinstance(v, bool)), dtype)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and "b64" in value


def predict_inputs(doc: Mapping[str, Any], sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Tensors for `sig` from a predict request, and whether the request used the row (`instances`) format."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances == has_inputs:
        if has_instances:
            raise _invalid(
                "JSON Value: {...} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to "
                "exist. Send either 'instances' (row format) or 'inputs' (columnar format)."
            )
        raise _invalid("Missing 'inputs' or 'instances' key")
    if not sig.inputs:
        raise _invalid(f"Failed to get input map for signature: {sig.name or 'DEFAULT'}")
    if has_instances:
        return _row_inputs(doc["instances"], sig), True
    return _columnar_inputs(doc["inputs"], sig), False


def _row_inputs(instances: Any, sig: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, (list, np.ndarray)):
        raise _invalid("JSON Value: {...} Excepting 'instances' to be an list/array")
    if len(instances) == 0:
        raise _invalid("JSON Value: {...} No values in 'instances' array")
    names = sorted(sig.inputs)
    first = instances[0]
    if isinstance(first, dict) and not _is_b64(first):
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for i, row in enumerate(instances):
            if not isinstance(row, dict) or _is_b64(row):
                raise _invalid(f"Expecting object but got list at item {i} of input list")
            if set(row) != set(names):
                missing = sorted(set(names) - set(row))
                raise _invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    + (f"does not have named input: {missing[0]}" if missing else
                       f"has unexpected keys {sorted(set(row) - set(names))}")
                    + f". Its keys must be equal to: {','.join(names)}"
                )
            for n in names:
                columns[n].append(row[n])
        return {n: _stack_rows(columns[n], sig.inputs[n], n) for n in names}
    if len(names) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            f"tensorinfo_map (inputs: {','.join(names)})"
        )
    for i, row in enumerate(instances if isinstance(instances, list) else ()):
        if isinstance(row, dict) and not _is_b64(row):
            raise _invalid(f"Expecting value/list but got object at item {i} of input list")
    return {names[0]: to_tensor(instances, sig.inputs[names[0]])}


def _stack_rows(rows: list[Any], spec: TensorSpec, name: str) -> np.ndarray:
    tensors = [to_tensor(r, spec) for r in rows]
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.shape != shape:
            raise _invalid(
                f"Failed to process element: {i} key: {name} of 'instances' list. Error: Expecting shape "
                f"{list(shape)} but got: {list(t.shape)}"
            )
    return np.stack(tensors)


def _columnar_inputs(inputs: Any, sig: Signature) -> dict[str, np.ndarray]:
    names = sorted(sig.inputs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        out = {}
        for n in names:
            if n not in inputs:
                if n in sig.defaults:
                    continue
                raise _invalid(f"Missing named input: {n} in 'inputs' object.")
            out[n] = to_tensor(inputs[n], sig.inputs[n])
        return out
    if len(names) > 1:
        raise _invalid(
            "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
            f"tensorinfo_map (inputs: {','.join(names)})"
        )
    return {names[0]: to_tensor(inputs, sig.inputs[names[0]])}


# --- tensors -> JSON -------------------------------------------------------------------------------------------


def _jsonable(name: str, tensor: np.ndarray) -> Any:
    kind = tensor.dtype.kind
    if kind == "O" or kind == "S":
        if name.endswith("_bytes"):
            fn: Any = lambda b: {"b64": base64.b64encode(bytes(b)).decode("ascii")}
        else:
            fn = lambda b: bytes(b).decode("utf-8", errors="replace") if isinstance(b, (bytes, np.bytes_)) else str(b)
        flat = [fn(b) for b in tensor.reshape(-1)]
        return np.array(flat + [None], dtype=object)[:-1].reshape(tensor.shape).tolist() if tensor.ndim else flat[0]
    if kind in "fiub":
        return tensor
    raise _invalid(f"Failed to write JSON value for tensor type: {DType.from_numpy(tensor.dtype).short_name}")


def _has_non_finite(outputs: Mapping[str, np.ndarray]) -> bool:
    return any(t.dtype.kind == "f" and t.size and not np.isfinite(t).all() for t in outputs.values())


def _dumps(doc: Any, non_finite: bool) -> bytes:
    if not non_finite:
        return orjson.dumps(doc, option=_DUMPS_OPTIONS)
    # orjson writes NaN as null; TF Serving writes bare NaN/Infinity. Shortest float repr is kept by going through
    # str() of the numpy scalar, which prints float32 values as float32 ("0.1", not "0.10000000149").
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            if v.dtype.kind == "f":
                return np.array([float(str(x)) for x in v.reshape(-1)] + [None], dtype=object)[:-1].reshape(v.shape).tolist()
            return v.tolist()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    return json.dumps(plain(doc), allow_nan=True, separators=(",", ":")).encode()


def encode_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    non_finite = _has_non_finite(outputs)
    if not row_format:
        if len(outputs) == 1:
            ((name, tensor),) = outputs.items()
            return _dumps({"outputs": _jsonable(name, tensor)}, non_finite)
        return _dumps({"outputs": {k: _jsonable(k, t) for k, t in outputs.items()}}, non_finite)
    batch = None
    for name, tensor in outputs.items():
        if tensor.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch is None:
            batch = tensor.shape[0]
        elif tensor.shape[0] != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} expecting: {batch}")
    if len(outputs) == 1:
        ((name, tensor),) = outputs.items()
        return _dumps({"predictions": _jsonable(name, tensor)}, non_finite)
    columns = {k: _jsonable(k, t) for k, t in outputs.items()}
    rows = [{k: col[i] for k, col in columns.items()} for i in range(batch or 0)]
    return _dumps({"predictions": rows}, non_finite)


# --- classify / regress ----------------------------------------------------------------------------------------


def _feature(name: str, value: Any) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else value.tolist() if isinstance(value, np.ndarray) else [value]
    feature = feature_pb2.Feature()
    kinds = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("int64")
        elif isinstance(v, int):
            if v >= 2**63:
                raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
            kinds.add("int64")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str) or _is_b64(v):
            kinds.add("bytes")
        else:
            raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
    if len(kinds) > 1:
        raise _invalid(
            f"Unexpected element type in feature: {name} expecting type: {sorted(kinds)[0]}. Send one kind of "
            "value per feature (write 1.0 for float features)."
        )
    kind = kinds.pop() if kinds else "float"
    if kind == "int64":
        feature.int64_list.value.extend(int(v) for v in values)
    elif kind == "float":
        feature.float_list.value.extend(values)
    else:
        feature.bytes_list.value.extend(_b64_or_text(v) for v in values)
    return feature


def _example(obj: Any) -> example_pb2.Example:
    if not isinstance(obj, dict):
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(obj)}")
    example = example_pb2.Example()
    for name, value in obj.items():
        example.features.feature[name].CopyFrom(_feature(name, value))
    return example


def examples_from_json(doc: Mapping[str, Any], method: str) -> list[bytes]:
    """Serialized tf.Examples of a classify/regress request (`examples`, optional `context`)."""
    if "examples" not in doc:
        raise _invalid(f"JSON Value: {{...}} When method is {method}, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, (list, np.ndarray)):
        raise _invalid("JSON Value: {...} Expecting 'examples' value to be an list/array")
    if len(examples) == 0:
        raise _invalid("JSON Value: {...} 'examples' value is an empty array")
    request_input = input_pb2.Input()
    if "context" in doc:
        target = request_input.example_list_with_context
        target.context.CopyFrom(_example(doc["context"]))
    else:
        target = request_input.example_list
    for obj in examples:
        target.examples.add().CopyFrom(_example(obj))
    return serialized_examples(request_input)


def encode_classify(classes: list[list[tuple[bytes, float]]]) -> bytes:
    if not classes:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    results = [[[label.decode("utf-8", errors="replace"), score] for label, score in row] for row in classes]
    return _dumps({"results": results}, any(not math.isfinite(s) for row in classes for _, s in row))


def encode_regress(values: list[float]) -> bytes:
    return _dumps({"results": values}, any(not math.isfinite(v) for v in values))
