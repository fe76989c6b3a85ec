"""TF Serving's REST JSON <-> numpy: predict (row and columnar), classify/regress examples, and responses.

The only code that knows JSON tensors. Error texts follow tensorflow_serving/util/json_tensor.cc, so clients
that match on them keep working.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from typing import Any

import numpy as np
import orjson
from pyserving.codecs.tfserving.examples import serialized_examples
from pyserving.codecs.tfserving.protos import example_pb2, feature_pb2, input_pb2

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
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
_WEB_SAFE = str.maketrans("-_", "+/")
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def _show(value: Any) -> str:
    """A JSON value as TF Serving prints it inside error messages (abridged: errors must stay readable)."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
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


_MAX_DEPTH = 1024
"""orjson's nesting limit (it recurses): deeper documents are refused at once, in bounded time and memory, where
TF Serving's rapidjson would parse them (and the tensor code then rejects any input nested that deep)."""


def _nested_too_deep(body: bytes, offset: int) -> bool:
    """Whether a parse error at `offset` is the nesting limit: the depth there, counted over the bytes before it
    (string contents may miscount: this only picks the message)."""
    if offset < _MAX_DEPTH:
        return False
    head = body[:offset]
    return head.count(b"[") + head.count(b"{") - head.count(b"]") - head.count(b"}") >= _MAX_DEPTH


def parse_body(body: bytes) -> dict[str, Any]:
    """The request document; it must be a JSON object."""
    try:
        doc = fast_json.loads(body)
    except fast_json.JsonParseError as exc:
        if exc.reason.startswith("The document is empty"):
            if not body:  # TF Serving's own check, before rapidjson runs
                raise _invalid("JSON Parse error: The document is empty") from None
            # rapidjson reports a whitespace-only document where its whitespace ends
            raise _invalid(f"JSON Parse error: The document is empty. at offset: {len(body)}") from None
        if _nested_too_deep(body, exc.offset):
            raise _invalid(f"JSON Parse error: arrays and objects nested deeper than {_MAX_DEPTH} levels at offset: "
                           f"{exc.offset}. Flatten the request.") from None
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


def _leaves(value: Any) -> Iterator[Any]:
    """The scalars of a nested JSON list (or a decoded ndarray) in document order, as TF Serving visits them."""
    if isinstance(value, np.ndarray):
        yield from value.flat
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _first_bad(value: Any, ok: Callable[[Any], bool]) -> Any:
    """The first scalar of `value` that `ok` rejects. Error paths only: it walks the original JSON, because the
    array numpy made of it may have changed the values (true -> 1, 1.0 next to "a" -> "1.0")."""
    return next((item for item in _leaves(value) if not ok(item)), None)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def _has_bool(arr: np.ndarray, value: list[Any]) -> bool:
    """Whether the nested list `value` holds a JSON true/false, which numpy turned into 1/0 in `arr` next to
    numbers. Big arrays are walked in Python only when they hold a 0 or a 1."""
    if arr.size > 64 and not ((arr == 0) | (arr == 1)).any():
        return False
    level = value  # all items at one depth, walked a depth at a time: per-list overhead would dominate
    while True:
        types = set(map(type, level))
        if bool in types:
            return True
        if list not in types:
            return False
        lists = level if len(types) == 1 else [v for v in level if type(v) is list]
        level = list(chain.from_iterable(lists))


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
            pass
        # absl::Base64Unescape: padding may be left out (but must be right when present); TF Serving also takes
        # web-safe base64. Anything else outside the alphabet is an error, never silently dropped.
        text = data.translate(_WEB_SAFE)
        if "=" not in text:
            text += "=" * (-len(text) % 4)
        try:
            return base64.b64decode(text, validate=True)
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
        # TF Serving fails on the first element it tries to convert, and prints that element
        first = next(_leaves(value), value)
        raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {_show(first)} to type: {dtype.short_name}")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError):
            arr = np.empty(0, dtype=object)
        if arr.dtype == object:
            _check_rectangular(value, _nested_shape(value))
            arr = np.asarray(value, dtype=object)
        elif arr.dtype.kind in "iuf" and isinstance(value, list) and _has_bool(arr, value):
            arr = np.asarray(value, dtype=object)  # true/false are no numbers to TF Serving: report them below
    kind = arr.dtype.kind
    if dtype in _FLOATS:
        if kind == "O" and all(map(_is_number, arr.flat)):
            arr = arr.astype(np.float64)  # integers beyond int64 next to other numbers; JSON-wise still numbers
            kind = "f"
        if kind in "fiu":
            # TF Serving narrows with a C cast (rapidjson's GetFloat): a number beyond the dtype's range is +/-inf.
            with np.errstate(over="ignore"):
                return arr.astype(dtype.numpy, copy=False)
        raise _type_error(_first_bad(value, _is_number), dtype)
    if dtype == DType.DT_BOOL:
        if kind == "b":
            return arr
        raise _type_error(_first_bad(value, _is_bool), dtype)
    lo, hi = _INT_RANGES[dtype]
    if kind in "iu" and not (arr.size and (arr.min() < lo or arr.max() > hi)):
        return arr.astype(dtype.numpy, copy=False)
    # JSON 1.0 is no integer to TF Serving either
    bad = _first_bad(value, lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= v <= hi)
    if kind == "f" and isinstance(value, np.ndarray):
        # fast_json made every number of the array a float: a fraction surely was one; else which was is unknown
        bad = next((v for v in value.flat if not float(v).is_integer()), bad)
    raise _type_error(bad, dtype)


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
        return _object_rows(instances, sig, names)
    if len(names) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            f"tensorinfo_map (inputs: {','.join(names)})"
        )
    spec = sig.inputs[names[0]]
    try:
        return {names[0]: to_tensor(instances, spec)}
    except ServingError as exc:
        # Converting the batch at once is fast; TF Serving converts row by row, so find and word its error
        raise (_plain_rows_error(instances, spec) or exc) from None


def _element_error(i: int, exc: ServingError, name: str | None = None) -> ServingError:
    """TF Serving's wrapping of an error in one element of 'instances': always INVALID_ARGUMENT (even for an
    UNIMPLEMENTED dtype), with the inner status, code name first, in the message."""
    key = f" key: {name}" if name is not None else ""
    return _invalid(f"Failed to process element: {i}{key} of 'instances' list. Error: {exc.code.name}: {exc.message}")


def _row_mismatch(first: np.ndarray, tensor: np.ndarray) -> ServingError | None:
    """Every row of an input must have the first row's size and shape."""
    if tensor.size != first.size:
        return _invalid(f"Expecting tensor size: {first.size} but got: {tensor.size}")
    if tensor.shape != first.shape:
        return _invalid(f"Expecting shape {_shape_text(first.shape)} but got: {_shape_text(tensor.shape)}")
    return None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _plain_rows_error(instances: Any, spec: TensorSpec) -> ServingError | None:
    first = None
    for i, row in enumerate(instances):
        if isinstance(row, dict) and not _is_b64(row):
            return _invalid(f"Expecting value/list but got object at item {i} of input list")
        try:
            tensor = to_tensor(row, spec)
        except ServingError as exc:
            return _element_error(i, exc)
        if first is None:
            first = tensor
        elif mismatch := _row_mismatch(first, tensor):
            return _element_error(i, mismatch)
    return None


def _object_rows(instances: Any, sig: Signature, names: list[str]) -> dict[str, np.ndarray]:
    """Rows of {input name: value}: each input's values are converted at once, as a column."""
    columns: dict[str, list[Any]] = {n: [] for n in names}
    well_formed = True
    for row in instances:
        if not isinstance(row, dict) or _is_b64(row) or row.keys() != columns.keys():
            well_formed = False
            break
        for name, value in row.items():
            columns[name].append(value)
    error = None
    if well_formed:
        try:
            return {n: to_tensor(values, sig.inputs[n]) for n, values in columns.items()}
        except ServingError as exc:
            error = exc
    raise (_object_rows_error(instances, sig, names) or error) from None


def _object_rows_error(instances: Any, sig: Signature, names: list[str]) -> ServingError | None:
    """The error TF Serving reports for object rows, found in its order: row by row, each row's values in the
    row's key order, then the row's key set."""
    first: dict[str, np.ndarray] = {}
    for i, row in enumerate(instances):
        if not isinstance(row, dict) or _is_b64(row):
            return _invalid(f"Expecting object but got list at item {i} of input list")
        for name, value in row.items():
            if name not in sig.inputs:
                return _element_error(i, _invalid(f"JSON object: does not have named input: {name}"), name)
            try:
                tensor = to_tensor(value, sig.inputs[name])
            except ServingError as exc:
                return _element_error(i, exc, name)
            if name not in first:
                first[name] = tensor
            elif mismatch := _row_mismatch(first[name], tensor):
                return _element_error(i, mismatch, name)
        if len(row) != len(names):  # every key is known by now, so only a missing one is left
            return _invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_show(row)} keys must be "
                f"equal to: {','.join(names)}"
            )
    return None


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
        if tensor.ndim == 0:  # orjson writes no 0-d arrays; str() keeps float32's shortest form ("0.1")
            return float(str(tensor[()])) if kind == "f" else tensor.item()
        return tensor
    raise _invalid(f"Failed to write JSON value for tensor type: {DType.from_numpy(tensor.dtype).short_name}")


def _has_non_finite(outputs: Mapping[str, np.ndarray]) -> bool:
    return any(t.dtype.kind == "f" and t.size and not np.isfinite(t).all() for t in outputs.values())


_CHUNK_BYTES = 1 << 20
"""A big array is written a slice of about this much at a time, so that a thread encoding it lets the event
loop's thread take the GIL between slices (one orjson call on a 50 MB answer held it for ~0.8 s)."""


def _dumps_array(array: np.ndarray) -> bytes:
    """orjson's bytes for `array`, written in slices along its first axis (the same bytes as one call)."""
    rows = max(1, _CHUNK_BYTES // max(1, array[0].nbytes)) if len(array) else 1
    if array.ndim == 0 or array.nbytes <= _CHUNK_BYTES or len(array) <= rows:
        return orjson.dumps(array, option=_DUMPS_OPTIONS)
    pieces = [orjson.dumps(array[i : i + rows], option=_DUMPS_OPTIONS)[1:-1] for i in range(0, len(array), rows)]
    return b"[" + b",".join(pieces) + b"]"


def _dumps(doc: Any, non_finite: Callable[[], bool]) -> bytes:
    if len(doc) == 1 and isinstance(value := next(iter(doc.values())), np.ndarray) and value.dtype.kind in "fiub":
        key = next(iter(doc))
        body = b'{"%s":%s}' % (key.encode(), _dumps_array(value))  # (the keys are ours: "predictions", "outputs")
    else:
        body = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    # orjson writes NaN and Infinity as null, and nothing else in an answer is null: scan the bytes (C speed) before
    # paying for a check of every output. Numbers hold no 'l', so memchr answers for most bodies first (`b"null" in
    # body` compares byte by byte: 1.3 ms of an image-sized answer's 1.7 MB).
    if b"l" not in body or b"null" not in body or not non_finite():
        return body
    # TF Serving writes bare NaN/Infinity. Shortest float repr is kept by going through str() of the numpy scalar,
    # which prints float32 values as float32 ("0.1", not "0.10000000149").
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
    def non_finite() -> bool:
        return _has_non_finite(outputs)

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
    kind = None  # the first element's kind is the feature's; TF Serving names it when a later element differs
    for v in values:
        if isinstance(v, bool):
            this = "int64"
        elif isinstance(v, int):
            if v >= 2**63:
                raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
            this = "int64"
        elif isinstance(v, float):
            this = "float"
        elif isinstance(v, str) or _is_b64(v):
            this = "bytes"
        else:
            raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
        if kind is None:
            kind = this
        elif this != kind:
            raise _invalid(
                f"Unexpected element type in feature: {name} expecting type: {kind}. Send one kind of "
                "value per feature (write 1.0 for float features)."
            )
    kind = kind or "float"
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
    return _dumps({"results": results}, lambda: any(not math.isfinite(s) for row in classes for _, s in row))


def encode_regress(values: list[float]) -> bytes:
    return _dumps({"results": values}, lambda: any(not math.isfinite(v) for v in values))
