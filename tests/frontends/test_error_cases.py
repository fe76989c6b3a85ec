"""Every error a user can cause, over REST and gRPC: TF Serving's status code and the key part of its message.

One server serves TF Serving's half_plus_two ("default", label "stable" -> 123) and a model built here ("typed")
whose signatures cover a multi-input function, DT_STRING in and out, and dtypes JSON cannot carry. Messages are
those of tensorflow_serving/util/json_tensor.cc, model_servers/http_rest_api_handler.cc and the servables'
predict/classify/regress/metadata code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from conftest import RunningServer, run_server
from pyserving.options import ModelConfig, ServerOptions

TIMEOUT = 30


def export_typed_model(base_path: Path) -> None:
    class Typed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="a"),
                                      tf.TensorSpec([None], tf.int32, name="b")])
        def multi(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"sum": a + tf.cast(b, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
        def strings(self, s: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(s), "echo_bytes": tf.identity(s), "echo": tf.identity(s)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float16, name="h")])
        def half(self, h: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.cast(h, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.complex64, name="c")])
        def complex(self, c: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.math.real(c)}

    module = Typed()
    tf.saved_model.save(module, str(base_path / "1"), signatures={
        "serving_default": module.multi, "strings": module.strings, "half": module.half, "complex": module.complex,
    })


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    typed = tmp_path_factory.mktemp("typed")
    export_typed_model(typed)
    options = ServerOptions(models=(
        ModelConfig(name="default", base_path=str(testdata / "saved_model_half_plus_two_cpu"),
                    version_labels=(("stable", 123),)),
        ModelConfig(name="typed", base_path=str(typed)),
    ))
    with run_server(options) as running:
        yield running


# --- REST --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rest:
    """One REST request and TF Serving's answer: HTTP status, and text the error message must contain (or equal)."""

    id: str
    method: str
    path: str
    body: Any = None  # bytes are sent as is; anything else as JSON
    status: int = 400
    message: str | tuple[str, ...] = ()
    exact: bool = False
    marks: tuple[Any, ...] = ()


def known_deviation(reason: str) -> tuple[Any, ...]:
    """A case pyserving still answers differently from TF Serving (the reason says how). Strict: once fixed, the
    case XPASSes and fails, so the mark comes off."""
    return (pytest.mark.xfail(reason=reason, strict=True),)


M = "/v1/models"
HPT = f"{M}/default:predict"
TYPED = f"{M}/typed:predict"

REST_CASES = [
    # unknown model / version / label
    *(Rest(f"unknown-model-{verb}", "POST", f"{M}/nope:{verb}", body, 404,
           "Servable not found for request: Latest(nope)", exact=True)
      for verb, body in (("predict", {"instances": [1.0]}), ("classify", {"examples": [{"x": 1.0}]}),
                         ("regress", {"examples": [{"x": 1.0}]}))),
    Rest("unknown-model-metadata", "GET", f"{M}/nope/metadata", status=404,
         message="Servable not found for request: Latest(nope)", exact=True),
    Rest("unknown-model-status", "GET", f"{M}/nope", status=404,
         message="Could not find any versions of model nope", exact=True),
    *(Rest(f"unknown-version-{verb}", "POST", f"{M}/default/versions/999:{verb}", body, 404,
           "Servable not found for request: Specific(default, 999)", exact=True)
      for verb, body in (("predict", {"instances": [1.0]}),
                         ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}))),
    Rest("unknown-version-metadata", "GET", f"{M}/default/versions/999/metadata", status=404,
         message="Servable not found for request: Specific(default, 999)", exact=True),
    Rest("unknown-version-status", "GET", f"{M}/default/versions/999", status=404,
         message="Could not find version 999 of model default", exact=True),
    Rest("unknown-label-predict", "POST", f"{M}/default/labels/nope:predict", {"instances": [1.0]},
         message="Unrecognized servable version label: nope", exact=True),
    Rest("unknown-label-classify", "POST", f"{M}/default/labels/nope:classify", {"examples": [{"x": 1.0}]},
         message="Unrecognized servable version label: nope", exact=True),
    Rest("unknown-label-metadata", "GET", f"{M}/default/labels/nope/metadata",
         message="Unrecognized servable version label: nope", exact=True),
    # signatures
    Rest("bad-signature-predict", "POST", HPT, {"signature_name": "nope", "instances": [1.0]},
         message='Serving signature name: "nope" not found in signature def', exact=True),
    Rest("bad-signature-classify", "POST", f"{M}/default:classify", {"signature_name": "nope", "examples": [{}]},
         message="No signature was found with the name: nope", exact=True),
    Rest("bad-signature-regress", "POST", f"{M}/default:regress", {"signature_name": "nope", "examples": [{}]},
         message="No signature was found with the name: nope", exact=True),
    Rest("signature-name-not-string", "POST", HPT, {"signature_name": 1, "instances": [1.0]},
         message="'signature_name' key must be a string value."),
    Rest("classify-with-predict-signature", "POST", f"{M}/default:classify", {"examples": [{"x": 1.0}]},
         message="No classification inputs found in SignatureDef"),
    Rest("regress-with-classify-signature", "POST", f"{M}/default:regress",
         {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]},
         message="No regression outputs found in SignatureDef"),
    # JSON syntax (offsets are rapidjson's)
    Rest("empty-body", "POST", HPT, b"", message="JSON Parse error: The document is empty", exact=True),
    Rest("whitespace-body", "POST", HPT, b"  \n",
         message="JSON Parse error: The document is empty. at offset: 3", exact=True),
    Rest("missing-comma", "POST", HPT, b'{"instances": [1.0 2.0]}',
         message="JSON Parse error: Missing a comma or ']' after an array element. at offset: 19", exact=True),
    Rest("truncated", "POST", HPT, b'{"instances": [1.0}',
         message="JSON Parse error: Missing a comma or ']' after an array element. at offset: 18", exact=True),
    Rest("missing-colon", "POST", HPT, b'{"instances" [1.0]}',
         message="JSON Parse error: Missing a colon after a name of object member. at offset: 13", exact=True),
    Rest("bad-escape", "POST", HPT, b'{"instances": ["\\x"]}',
         message="JSON Parse error: Invalid escape character in string. at offset: 16", exact=True),
    Rest("no-fraction-digits", "POST", HPT, b'{"instances": [1.]}',
         message="JSON Parse error: Missing fraction part in number. at offset: 17", exact=True),
    Rest("unquoted-key", "POST", HPT, b"{instances: [1.0]}", message=("JSON Parse error: ", " at offset: 1")),
    Rest("trailing-garbage", "POST", HPT, b'{"instances": [1.0]} x', message=("JSON Parse error: ", " at offset: 21")),
    Rest("parse-error-before-model-lookup", "POST", f"{M}/nope:predict", b"{",
         message=("JSON Parse error: ", " at offset: 1")),
    # rapidjson's exact wording for the same
    Rest("trailing-comma-exact", "POST", HPT, b'{"instances": [1.0,]}',
         message="JSON Parse error: Invalid value. at offset: 19", exact=True),
    Rest("trailing-comma-spaced-exact", "POST", HPT, b'{"instances": [1.0,  ]}',
         message="JSON Parse error: Invalid value. at offset: 21", exact=True),
    Rest("trailing-comma-object-exact", "POST", HPT, b'{"instances": [1.0], }',
         message="JSON Parse error: Missing a name for object member. at offset: 21", exact=True),
    Rest("unquoted-key-exact", "POST", HPT, b"{instances: [1.0]}",
         message="JSON Parse error: Missing a name for object member. at offset: 1", exact=True),
    Rest("trailing-garbage-exact", "POST", HPT, b'{"instances": [1.0]} x',
         message="JSON Parse error: The document root must not be followed by other values. at offset: 21",
         exact=True),
    Rest("truncated-object-exact", "POST", HPT, b"{",
         message="JSON Parse error: Missing a name for object member. at offset: 1", exact=True),
    Rest("top-level-array", "POST", HPT, [1.0, 2.0], message=("JSON Value: ", "Is not object")),
    Rest("top-level-string", "POST", f"{M}/default:classify", "x", message="Is not object"),
    # instances / inputs keys
    Rest("both-instances-and-inputs", "POST", HPT, {"instances": [1.0], "inputs": [1.0]},
         message="expecting only one of 'inputs' or 'instances' keys to exist"),
    Rest("neither-instances-nor-inputs", "POST", HPT, {"signature_name": "serving_default"},
         message="Missing 'inputs' or 'instances' key", exact=True),
    Rest("instances-not-a-list", "POST", HPT, {"instances": 1.0},
         message="Excepting 'instances' to be an list/array"),
    Rest("instances-empty", "POST", HPT, {"instances": []}, message="No values in 'instances' array"),
    Rest("examples-missing", "POST", f"{M}/default:regress", {"signature_name": "regress_x_to_y"},
         message="key 'examples' is expected and was not found"),
    Rest("examples-not-a-list", "POST", f"{M}/default:regress", {"examples": {}},
         message="Expecting 'examples' value to be an list/array"),
    Rest("examples-empty", "POST", f"{M}/default:classify", {"examples": []},
         message="'examples' value is an empty array"),
    Rest("example-not-an-object", "POST", f"{M}/default:regress", {"examples": [1]},
         message="Example must be JSON object but got JSON Number", exact=True),
    Rest("feature-null", "POST", f"{M}/default:regress", {"examples": [{"x": None}]},
         message="Feature: x has element with unexpected JSON type: Null", exact=True),
    Rest("feature-mixed-kinds", "POST", f"{M}/default:regress", {"examples": [{"x": [1.0, "a"]}]},
         message="Unexpected element type in feature: x expecting type: float"),
    Rest("feature-mixed-kinds-bytes-first", "POST", f"{M}/default:regress", {"examples": [{"x": ["a", 1.0]}]},
         message="Unexpected element type in feature: x expecting type: bytes"),
    Rest("feature-uint64", "POST", f"{M}/default:regress", {"examples": [{"x": 2**64 - 1}]},
         message="Feature: x has uint64 element. Only int64 is supported.", exact=True),
    # element types
    Rest("string-for-float-row", "POST", HPT, {"instances": [1.0, "a"]},
         message="Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                 'JSON Value: "a" Type: String is not of expected type: float', exact=True),
    Rest("bool-among-floats-row", "POST", HPT, {"instances": [[2.0], [True]]},
         message="Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                 "JSON Value: true Type: True is not of expected type: float", exact=True),
    Rest("string-for-float-columnar", "POST", HPT, {"inputs": ["a"]},
         message='JSON Value: "a" Type: String is not of expected type: float', exact=True),
    Rest("bool-for-float", "POST", HPT, {"inputs": [True]},
         message="JSON Value: true Type: True is not of expected type: float", exact=True),
    Rest("bool-among-floats", "POST", HPT, {"inputs": [2.0, True]},
         message="JSON Value: true Type: True is not of expected type: float", exact=True),
    Rest("null-for-float", "POST", HPT, {"inputs": [None]},
         message="JSON Value: null Type: Null is not of expected type: float", exact=True),
    Rest("object-for-float", "POST", HPT, {"inputs": [{"b64": "AA=="}]},
         message="Type: Object is not of expected type: float"),
    Rest("float-for-int", "POST", TYPED, {"inputs": {"a": [1.0], "b": [1.5]}},
         message="JSON Value: 1.5 Type: Number is not of expected type: int32", exact=True),
    Rest("whole-float-for-int", "POST", TYPED, {"inputs": {"a": [1.0], "b": [2, 1.0]}},
         message="JSON Value: 1.0 Type: Number is not of expected type: int32", exact=True),
    Rest("int-out-of-range", "POST", TYPED, {"inputs": {"a": [1.0], "b": [2**31]}},
         message="JSON Value: 2147483648 Type: Number is not of expected type: int32", exact=True),
    Rest("bool-for-int", "POST", TYPED, {"inputs": {"a": [1.0], "b": [1, True]}},
         message="JSON Value: true Type: True is not of expected type: int32", exact=True),
    Rest("half-columnar", "POST", TYPED, {"signature_name": "half", "inputs": [1.5]}, 501,
         "Conversion of JSON Value: 1.5 to type: half", exact=True),
    Rest("complex-columnar", "POST", TYPED, {"signature_name": "complex", "inputs": [1.0]}, 501,
         "Conversion of JSON Value: 1.0 to type: complex64", exact=True),
    # in row format TF Serving wraps every element error as INVALID_ARGUMENT, UNIMPLEMENTED included
    Rest("half-row", "POST", TYPED, {"signature_name": "half", "instances": [1.5]}, 400,
         "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: "
         "Conversion of JSON Value: 1.5 to type: half", exact=True),
    # shapes
    Rest("ragged-columnar", "POST", HPT, {"inputs": [[1.0, 2.0], [3.0]]},
         message="Encountered list at unexpected size: 1 at level: 1 expected size: 2", exact=True),
    Rest("ragged-within-a-row", "POST", HPT, {"instances": [[[1.0, 2.0], [3.0]]]},
         message="Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
                 "Encountered list at unexpected size: 1 at level: 1 expected size: 2", exact=True),
    Rest("rows-of-different-sizes", "POST", HPT, {"instances": [[1.0, 2.0], [3.0, 4.0, 5.0]]},
         message="Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                 "Expecting tensor size: 2 but got: 3", exact=True),
    Rest("rows-of-different-shapes", "POST", HPT, {"instances": [[[1.0, 2.0]], [[1.0], [2.0]]]},
         message="Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                 "Expecting shape [1,2] but got: [2,1]", exact=True),
    # bodies big enough for fast_json's numpy decoding: same answers
    Rest("big-rows-of-different-sizes", "POST", HPT, {"instances": [[1.5] * 600, [1.5] * 601]},
         message="Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                 "Expecting tensor size: 600 but got: 601", exact=True),
    Rest("big-float-for-int", "POST", TYPED, {"inputs": {"a": [1.0], "b": [1] * 500 + [1.5] * 500}},
         message="JSON Value: 1.5 Type: Number is not of expected type: int32", exact=True),
    Rest("big-int-out-of-range", "POST", TYPED, {"inputs": {"a": [1.0], "b": [1] * 1000 + [-(2**31) - 1]}},
         message="JSON Value: -2147483649 Type: Number is not of expected type: int32", exact=True),
    Rest("value-at-wrong-level", "POST", HPT, {"inputs": [[1.0], 2.0]},
         message="JSON Value: 2.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2", exact=True),
    Rest("list-too-deep", "POST", HPT, {"inputs": [1.0, [2.0]]},
         message="Encountered list at unexpected level: 1 expected < 1", exact=True),
    # multiple inputs
    Rest("multi-input-plain-list", "POST", TYPED, {"instances": [1.0, 2.0]},
         message="instances is a plain list, but expecting list of objects as multiple input tensors required "
                 "as per tensorinfo_map"),
    Rest("multi-input-plain-value-columnar", "POST", TYPED, {"inputs": [1.0]},
         message="inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                 "per tensorinfo_map"),
    Rest("instance-missing-key", "POST", TYPED, {"instances": [{"a": 1.0, "b": 1}, {"a": 1.0}]},
         message=("Failed to process element: 1 of 'instances' list. JSON object: ",
                  "keys must be equal to: a,b")),
    Rest("instance-unknown-key", "POST", TYPED, {"instances": [{"a": 1.0, "b": 1, "c": 1}]},
         message="Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: "
                 "JSON object: does not have named input: c", exact=True),
    Rest("instances-object-then-list", "POST", TYPED, {"instances": [{"a": 1.0, "b": 1}, [1.0]]},
         message="Expecting object but got list at item 1 of input list", exact=True),
    Rest("instances-list-then-object", "POST", HPT, {"instances": [1.0, {"x": 1.0}]},
         message="Expecting value/list but got object at item 1 of input list", exact=True),
    Rest("instance-value-type", "POST", TYPED, {"instances": [{"a": 1.0, "b": "x"}]},
         message="Failed to process element: 0 key: b of 'instances' list. Error: INVALID_ARGUMENT: "
                 'JSON Value: "x" Type: String is not of expected type: int32', exact=True),
    Rest("instance-errors-in-row-order", "POST", TYPED, {"instances": [{"b": 1, "a": "x"}, {"a": 1.0}]},
         message="Failed to process element: 0 key: a of 'instances' list. Error: INVALID_ARGUMENT: "
                 'JSON Value: "x" Type: String is not of expected type: float', exact=True),
    Rest("instance-scalar-then-list", "POST", TYPED, {"instances": [{"a": 1.0, "b": 1}, {"a": [1.0], "b": 1}]},
         message="Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: "
                 "Expecting shape [] but got: [1]", exact=True),
    Rest("instance-rows-of-different-sizes", "POST", TYPED, {"instances": [{"a": [1.0], "b": [1]},
                                                                           {"a": [1.0, 2.0], "b": [1]}]},
         message="Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: "
                 "Expecting tensor size: 1 but got: 2", exact=True),
    Rest("columnar-missing-named-input", "POST", TYPED, {"inputs": {"a": [1.0]}},
         message="Missing named input: b in 'inputs' object.", exact=True),
    Rest("columnar-single-input-wrong-name", "POST", HPT, {"inputs": {"z": [1.0]}},
         message="Missing named input: x in 'inputs' object.", exact=True),
    # strings / base64
    Rest("bad-base64", "POST", TYPED, {"signature_name": "strings", "instances": [{"b64": "!!!"}]},
         message="Unable to base64 decode"),
    Rest("b64-extra-key", "POST", TYPED, {"signature_name": "strings", "inputs": [{"b64": "YQ==", "x": 1}]},
         message=("JSON Value: ", "not formatted correctly for base64 data")),
    Rest("b64-not-a-string", "POST", TYPED, {"signature_name": "strings", "inputs": [{"b64": 1}]},
         message="not formatted correctly for base64 data"),
    Rest("number-for-string", "POST", TYPED, {"signature_name": "strings", "inputs": ["a", 1]},
         message="JSON Value: 1 Type: Number is not of expected type: string", exact=True),
    Rest("bad-base64-feature", "POST", f"{M}/default:regress",
         {"signature_name": "regress_x_to_y", "examples": [{"x": {"b64": "!!!"}}]},
         message="Unable to base64 decode"),
    # routing
    Rest("predict-with-get", "GET", HPT, status=400, message=f"Malformed request: GET {HPT}", exact=True),
    Rest("predict-with-put", "PUT", HPT, {"instances": [1.0]},
         message=f"Malformed request: PUT {HPT}", exact=True),
    Rest("status-with-delete", "DELETE", f"{M}/default", message=f"Malformed request: DELETE {M}/default",
         exact=True),
    Rest("metadata-with-post", "POST", f"{M}/default/metadata", {},
         message=f"Malformed request: POST {M}/default/metadata", exact=True),
    Rest("unknown-verb", "POST", f"{M}/default:explain", {}, message=f"Malformed request: POST {M}/default:explain",
         exact=True),
    Rest("non-numeric-version", "GET", f"{M}/default/versions/abc",
         message=f"Malformed request: GET {M}/default/versions/abc", exact=True),
    Rest("non-numeric-version-predict", "POST", f"{M}/default/versions/abc:predict", {"instances": [1.0]},
         message=f"Malformed request: POST {M}/default/versions/abc:predict", exact=True),
    Rest("version-and-label", "GET", f"{M}/default/versions/123/labels/stable",
         message=f"Malformed request: GET {M}/default/versions/123/labels/stable", exact=True),
    Rest("version-overflow", "GET", f"{M}/default/versions/99999999999999999999",
         message="Failed to convert version: 99999999999999999999 to numeric.", exact=True),
    Rest("list-models-slash", "GET", f"{M}/", message=f"Malformed request: GET {M}/", exact=True),
    # RE2's \d is ASCII: an Arabic-Indic "123" is no version (Python's \d took it, and int() read it as 123)
    Rest("non-ascii-digits-version", "GET", f"{M}/default/versions/\u0661\u0662\u0663",
         message=f"Malformed request: GET {M}/default/versions/%D9%A1%D9%A2%D9%A3", exact=True),
    Rest("non-ascii-digits-version-predict", "POST", f"{M}/default/versions/\u0661\u0662\u0663:predict",
         {"instances": [1.0]}, message=f"Malformed request: POST {M}/default/versions/%D9%A1%D9%A2%D9%A3:predict",
         exact=True),
    # TF Serving matches the path as sent and decodes the name and label after: encoded "/" and ":" are theirs
    Rest("encoded-slash-in-name", "POST", f"{M}/a%2Fb:predict", {"instances": [1.0]}, 404,
         "Servable not found for request: Latest(a/b)", exact=True),
    Rest("encoded-slash-in-name-status", "GET", f"{M}/a%2Fb", status=404,
         message="Could not find any versions of model a/b", exact=True),
    Rest("encoded-colon-in-label", "GET", f"{M}/default/labels/a%3Ab/metadata",
         message="Unrecognized servable version label: a:b", exact=True),
    Rest("encoded-verb", "POST", f"{M}/default%3Apredict", {"instances": [1.0]},
         message=f"Malformed request: POST {M}/default%3Apredict", exact=True),
]


def send(server: RunningServer, method: str, path: str, body: Any = None) -> requests.Response:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body)
    return requests.request(method, server.rest_url + path, data=data, timeout=TIMEOUT)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in REST_CASES])
def test_rest_error(server: RunningServer, case: Rest) -> None:
    r = send(server, case.method, case.path, case.body)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), r.text
    message = body["error"]
    if case.exact:
        assert message == case.message
    else:
        for part in (case.message,) if isinstance(case.message, str) else case.message:
            assert part in message, message


@pytest.mark.parametrize("path", ["/", "/v3/models/default", "/models/default:predict", "/v1"])
def test_rest_paths_outside_the_apis_are_html_404(server: RunningServer, path: str) -> None:
    for method in ("GET", "POST"):
        r = requests.request(method, server.rest_url + path, data=b"{}", timeout=TIMEOUT)
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("text/html")
        assert "Not Found" in r.text
        with pytest.raises(ValueError):
            json.loads(r.text)


def test_rest_routes_are_case_insensitive(server: RunningServer) -> None:
    r = send(server, "POST", "/V1/Models/default:PREDICT", {"instances": [1.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5]}


def test_rest_label_and_version_resolve(server: RunningServer) -> None:
    r = send(server, "POST", f"{M}/default/labels/stable:predict", {"instances": [1.0]})
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5]})


def test_rest_nan_and_infinity_round_trip(server: RunningServer) -> None:
    r = send(server, "POST", HPT, b'{"inputs": [NaN, Infinity, -Infinity, 1.0]}')
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    text = r.text
    for token in ("NaN", "Infinity", "-Infinity"):
        assert token in text and f'"{token}"' not in text, text
    assert "null" not in text
    out = json.loads(text)["outputs"]  # Python's json reads the bare tokens, as rapidjson-based clients do
    assert math.isnan(out[0]) and out[1:] == [math.inf, -math.inf, 2.5]

    r = send(server, "POST", HPT, b'{"instances": [[NaN], [-Infinity]]}')
    assert r.status_code == 200, r.text
    rows = json.loads(r.text)["predictions"]
    assert math.isnan(rows[0][0]) and rows[1] == [-math.inf]


def test_rest_string_outputs(server: RunningServer) -> None:
    """`_bytes` aliases come back as {"b64": ...}, other string outputs as plain strings; b64 inputs are decoded."""
    r = send(server, "POST", TYPED, {"signature_name": "strings", "instances": ["ab", {"b64": "Y2Rl"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [
        {"length": 2, "echo_bytes": {"b64": "YWI="}, "echo": "ab"},
        {"length": 3, "echo_bytes": {"b64": "Y2Rl"}, "echo": "cde"},
    ]}
    r = send(server, "POST", TYPED, {"signature_name": "strings", "inputs": [{"b64": "eHk="}, {"b64": "YQ"}]})
    assert r.json() == {"outputs": {"length": [2, 1], "echo_bytes": [{"b64": "eHk="}, {"b64": "YQ=="}],
                                    "echo": ["xy", "a"]}}  # absl's base64 decoder takes unpadded input too


def test_rest_multi_input_success(server: RunningServer) -> None:
    """The error cases above are errors only because of what was wrong: the well-formed requests succeed."""
    r = send(server, "POST", TYPED, {"instances": [{"a": 1.5, "b": 1}, {"a": 0.5, "b": 2}]})
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5, 2.5]})
    r = send(server, "POST", TYPED, {"inputs": {"a": [1.5], "b": [1], "extra": "ignored"}})
    assert (r.status_code, r.json()) == (200, {"outputs": [2.5]})


# --- gRPC --------------------------------------------------------------------------------------------------------


def spec(request: Any, name: str = "default", version: int | None = None, label: str | None = None,
         signature: str | None = None) -> Any:
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if signature is not None:
        request.model_spec.signature_name = signature
    return request


def predict(x: Any = (1.0,), **kw: Any) -> predict_pb2.PredictRequest:
    request = spec(predict_pb2.PredictRequest(), **kw)
    if x is not None:
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(list(x), dtype=tf.float32))
    return request


def with_examples(request: Any, n: int = 1) -> Any:
    for _ in range(n):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    return request


def classify(**kw: Any) -> classification_pb2.ClassificationRequest:
    return with_examples(spec(classification_pb2.ClassificationRequest(), **{"signature": "classify_x_to_y", **kw}))


def regress(**kw: Any) -> regression_pb2.RegressionRequest:
    return with_examples(spec(regression_pb2.RegressionRequest(), **{"signature": "regress_x_to_y", **kw}))


def metadata(fields: tuple[str, ...] = ("signature_def",), **kw: Any) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = spec(get_model_metadata_pb2.GetModelMetadataRequest(), **kw)
    request.metadata_field.extend(fields)
    return request


def status(**kw: Any) -> get_model_status_pb2.GetModelStatusRequest:
    return spec(get_model_status_pb2.GetModelStatusRequest(), **kw)


def multi(*tasks: tuple[str, str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        spec(task, name=model, signature=signature)
    return with_examples(request)


def modified(request: Any, change: Callable[[Any], None]) -> Any:
    change(request)
    return request


def bad_tensor_content(request: predict_pb2.PredictRequest) -> None:
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    request.inputs["x"].tensor_content = b"\0\0\0"  # 3 bytes for two floats


REGRESS = "tensorflow/serving/regress"
CLASSIFY = "tensorflow/serving/classify"


@dataclass(frozen=True)
class Rpc:
    id: str
    method: str  # PredictionService or ModelService method
    request: Any
    code: grpc.StatusCode
    message: str | tuple[str, ...] = ()
    exact: bool = False
    marks: tuple[Any, ...] = ()


NOT_FOUND, INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION

RPC_CASES = [
    Rpc("predict-unknown-model", "Predict", predict(name="nope"), NOT_FOUND,
        "Servable not found for request: Latest(nope)", exact=True),
    Rpc("predict-unknown-version", "Predict", predict(version=999), NOT_FOUND,
        "Servable not found for request: Specific(default, 999)", exact=True),
    Rpc("predict-unknown-label", "Predict", predict(label="nope"), INVALID,
        "Unrecognized servable version label: nope", exact=True),
    Rpc("predict-bad-signature", "Predict", predict(signature="nope"), FAILED,
        'Serving signature key "nope" not found.', exact=True),
    Rpc("predict-missing-input", "Predict", predict(x=None), INVALID,
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
        "Missing but required: {x}.", exact=True),
    Rpc("predict-extra-input", "Predict",
        modified(predict(), lambda r: r.inputs["z"].CopyFrom(tf.make_tensor_proto([1.0]))), INVALID,
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. "
        "Missing but required: {}.", exact=True),
    Rpc("predict-multi-input-missing-one", "Predict",
        modified(spec(predict_pb2.PredictRequest(), name="typed"),
                 lambda r: r.inputs["a"].CopyFrom(tf.make_tensor_proto([1.0]))), INVALID,
        ("input size does not match signature: 1!=2", "Missing but required: {b}.")),
    Rpc("predict-unknown-output-filter", "Predict", modified(predict(), lambda r: r.output_filter.append("z")),
        INVALID, "output tensor alias not found in signature: z"),
    Rpc("predict-duplicate-output-filter", "Predict", modified(predict(), lambda r: r.output_filter.extend("yy")),
        INVALID, "duplicate output tensor alias: y"),
    Rpc("predict-bad-tensor-content", "Predict", modified(predict(), bad_tensor_content), INVALID,
        "tensor parsing error: x"),
    Rpc("predict-wrong-dtype", "Predict",
        modified(predict(), lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(["a"]))), INVALID,
        ("float", "string")),
    Rpc("predict-missing-model-spec", "Predict", predict_pb2.PredictRequest(), INVALID, "Missing ModelSpec"),
    Rpc("classify-unknown-model", "Classify", classify(name="nope"), NOT_FOUND,
        "Servable not found for request: Latest(nope)", exact=True),
    Rpc("classify-unknown-label", "Classify", classify(label="nope"), INVALID,
        "Unrecognized servable version label: nope", exact=True),
    Rpc("classify-empty-input", "Classify",
        spec(classification_pb2.ClassificationRequest(), signature="classify_x_to_y"), INVALID,
        "Input is empty.", exact=True),
    Rpc("classify-empty-example-list", "Classify",
        modified(spec(classification_pb2.ClassificationRequest(), signature="classify_x_to_y"),
                 lambda r: r.input.example_list.SetInParent()), INVALID, "Input is empty.", exact=True),
    Rpc("classify-predict-signature", "Classify", classify(signature="serving_default"), INVALID,
        "No classification inputs found in SignatureDef"),
    Rpc("classify-bad-signature", "Classify", classify(signature="nope"), INVALID,
        "No signature was found with the name: nope", exact=True),
    Rpc("regress-unknown-version", "Regress", regress(version=999), NOT_FOUND,
        "Servable not found for request: Specific(default, 999)", exact=True),
    Rpc("regress-empty-input", "Regress", spec(regression_pb2.RegressionRequest(), signature="regress_x_to_y"),
        INVALID, "Input is empty.", exact=True),
    Rpc("regress-classify-signature", "Regress", regress(signature="classify_x_to_y"), INVALID,
        "No regression outputs found in SignatureDef"),
    Rpc("regress-bad-signature", "Regress", regress(signature="nope"), INVALID,
        "No signature was found with the name: nope", exact=True),
    Rpc("multi-inference-predict-method", "MultiInference",
        multi(("default", "serving_default", "tensorflow/serving/predict")), grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict"),
    Rpc("multi-inference-duplicate-signature", "MultiInference",
        multi(("default", "regress_x_to_y", REGRESS), ("default", "regress_x_to_y", REGRESS)), INVALID,
        "Duplicate evaluation of signature: regress_x_to_y", exact=True),
    Rpc("multi-inference-unknown-model", "MultiInference", multi(("nope", "regress_x_to_y", REGRESS)), NOT_FOUND,
        "Servable not found for request: Latest(nope)", exact=True),
    Rpc("multi-inference-two-models", "MultiInference",
        multi(("default", "regress_x_to_y", REGRESS), ("typed", "classify_x_to_y", CLASSIFY)), INVALID,
        "must access the same model name"),
    Rpc("metadata-no-field", "GetModelMetadata", metadata(fields=()), INVALID,
        "GetModelMetadataRequest must specify at least one metadata_field"),
    Rpc("metadata-unsupported-field", "GetModelMetadata", metadata(fields=("signature_def", "foo")), INVALID,
        "Metadata field foo is not supported"),
    Rpc("metadata-unsupported-field-unknown-model", "GetModelMetadata", metadata(fields=("foo",), name="nope"),
        INVALID, "Metadata field foo is not supported"),
    Rpc("metadata-unknown-model", "GetModelMetadata", metadata(name="nope"), NOT_FOUND,
        "Servable not found for request: Latest(nope)", exact=True),
    Rpc("metadata-unknown-label", "GetModelMetadata", metadata(label="nope"), INVALID,
        "Unrecognized servable version label: nope", exact=True),
    Rpc("metadata-missing-model-spec", "GetModelMetadata",
        modified(get_model_metadata_pb2.GetModelMetadataRequest(), lambda r: r.metadata_field.append("signature_def")),
        INVALID, "Missing ModelSpec", exact=True),
    Rpc("status-missing-model-spec", "GetModelStatus", get_model_status_pb2.GetModelStatusRequest(), INVALID,
        "Missing ModelSpec", exact=True),
    Rpc("status-unknown-model", "GetModelStatus", status(name="nope"), NOT_FOUND,
        "Could not find any versions of model nope", exact=True),
    Rpc("status-unknown-version", "GetModelStatus", status(version=999), NOT_FOUND,
        "Could not find version 999 of model default", exact=True),
]


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in RPC_CASES])
def test_grpc_error(channel: grpc.Channel, case: Rpc) -> None:
    if case.method == "GetModelStatus":
        stub: Any = model_service_pb2_grpc.ModelServiceStub(channel)
    else:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, case.method)(case.request, timeout=TIMEOUT)
    error = info.value
    assert error.code() == case.code, error.details()
    message = error.details()
    if case.exact:
        assert message == case.message
    else:
        for part in (case.message,) if isinstance(case.message, str) else case.message:
            assert part in message, message


def test_grpc_well_formed_requests_succeed(channel: grpc.Channel) -> None:
    """The error cases' requests, fixed, are answered: each error above comes from what was changed."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert tf.make_ndarray(stub.Predict(predict(label="stable"), timeout=TIMEOUT).outputs["y"]).tolist() == [2.5]
    assert stub.Classify(classify(), timeout=TIMEOUT).result.classifications[0].classes[0].score == 2.5
    assert stub.Regress(regress(), timeout=TIMEOUT).result.regressions[0].value == 2.5
    response = stub.MultiInference(multi(("default", "regress_x_to_y", REGRESS)), timeout=TIMEOUT)
    assert response.results[0].regression_result.regressions[0].value == 2.5
    assert stub.GetModelMetadata(metadata(), timeout=TIMEOUT).model_spec.version.value == 123
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    assert [s.version for s in models.GetModelStatus(status(), timeout=TIMEOUT).model_version_status] == [123]
