"""The shipped OpenAPI document against a live server (issue "hostile input").

schemathesis generates requests for every operation of the document (from its request examples, valid ones, and
ones it calls invalid) and sends them to a real server on 127.0.0.1. Every answer must come within the request
timeout, be no 5xx (but TF Serving's 501 for a dtype JSON cannot carry), carry a documented status, content type,
headers and body, and an invalid request must be refused.

The server serves a framework-free model ("m", two versions and a label, one signature per decoding path: floats,
several integer inputs, booleans, strings, a dtype JSON cannot carry) and TF Serving's own half_plus_two, whose
classify and regress signatures run real tf.Example parsing. The generator is steered onto those names (see
`_steer`); the document itself stays generic. Bounded: a fixed number of examples per operation and mode,
derandomized, no shrinking, so a run is repeatable (about 750 requests, under a minute on two slow cores).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import pyserving.frontends.rest
from conftest import RunningServer, run_server
from pyserving.frontends.rest.openapi import OPENAPI_PATH, openapi_document
from pyserving.options import ModelConfig, ServerOptions, VersionPolicy
from pyserving.runtimes.memory import write_model

REQUEST_TIMEOUT_S = 10  # a request still unanswered by then is a hang
SCALE = float(os.environ.get("PYSERVING_FUZZ_SCALE", "1"))  # e.g. 20 for a longer local hunt
EXAMPLES = {"examples": 6, "positive": 40, "negative": 20}
"""Requests per operation and mode: built from the document's request examples, generated valid, generated invalid."""
CONFIG = schemathesis.Config.from_dict({"checks": {
    # 501 is TF Serving's own answer for a signature dtype JSON cannot carry (UNIMPLEMENTED), not a server fault
    "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "501"]},
    "negative_data_rejection": {"expected-statuses": ["400", "404", "413", "501"]},
}})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
SHIPPED = Path(pyserving.frontends.rest.__file__).parent / "openapi.json"
_PATHS = json.loads(SHIPPED.read_text())["paths"]
OPERATIONS = sorted(f"{method.upper()} {path}" for path, item in _PATHS.items() for method in item
                    if method in ("get", "post"))
FUZZED = [
    pytest.param(f"{method.upper()} {path}", mode, id=f"{method.upper()} {path} {mode}")
    for path, item in _PATHS.items() for method, operation in item.items() if method in ("get", "post")
    for mode in EXAMPLES
    if mode == "positive"
    or (mode == "examples" and "examples" in json.dumps(operation.get("requestBody", {})))
    or (mode == "negative" and ("parameters" in item or "requestBody" in operation))  # something to make invalid
]

MEMORY_SIGNATURES = {
    "serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                        "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}},
    "ints": {"inputs": {"a": {"dtype": "DT_INT64", "shape": [-1]}, "b": {"dtype": "DT_INT32", "shape": [-1]},
                        "c": {"dtype": "DT_UINT8", "shape": [-1]}},
             "outputs": {"y": {"dtype": "DT_INT64", "shape": [-1]}, "z": {"dtype": "DT_DOUBLE", "shape": [-1]}}},
    "flags": {"inputs": {"b": {"dtype": "DT_BOOL", "shape": [-1]}},
              "outputs": {"y": {"dtype": "DT_BOOL", "shape": [-1]}}},
    "strings": {"inputs": {"s": {"dtype": "DT_STRING", "shape": [-1]}},
                "outputs": {"echo": {"dtype": "DT_STRING", "shape": [-1]},
                            "echo_bytes": {"dtype": "DT_STRING", "shape": [-1]}}},
    "half": {"inputs": {"h": {"dtype": "DT_HALF", "shape": [-1]}},
             "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}},
}
TF_SIGNATURES = ["serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3"]


def _steer(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its free-form values narrowed to what the server serves, so that generated requests reach
    the decoders and the models instead of stopping at "Servable not found" (negative mode still sends names,
    versions, labels and signatures outside these lists, and version 123 of "m" does not exist): predict
    goes to the memory model, classify and regress to half_plus_two (the memory model has no tf.Example support),
    status and metadata to either. Response schemas are untouched: answers are checked against the document as
    served."""
    steered = copy.deepcopy(document)
    components = steered["components"]
    parameters = components["parameters"]
    parameters["ModelVersion"]["schema"] = {"type": "integer", "enum": [1, 2, 123]}
    parameters["VersionLabel"]["schema"] = {"enum": ["stable"]}
    for path, item in steered["paths"].items():
        served = (["half_plus_two"] if path.endswith((":classify", ":regress")) else ["m"] if path.endswith(":predict")
                  else ["m", "half_plus_two"])
        for i, parameter in enumerate(item.get("parameters", [])):
            if parameter == {"$ref": "#/components/parameters/ModelName"}:
                item["parameters"][i] = {**parameters["ModelName"], "schema": {"enum": served}}
    schemas = components["schemas"]
    schemas["PredictRequest"]["properties"]["signature_name"] = {"enum": list(MEMORY_SIGNATURES)}
    schemas["ExamplesRequest"]["properties"]["signature_name"] = {"enum": TF_SIGNATURES}
    scalar = {"anyOf": [{"type": "number"}, {"type": "integer"}, {"type": "boolean"}, {"type": "string"},
                        {"$ref": "#/components/schemas/B64"}]}
    rows = {"anyOf": [scalar, {"type": "array", "maxItems": 4, "items": scalar}]}
    schemas["TensorValue"] = {"anyOf": [rows, {"type": "object", "additionalProperties": rows},
                                        {"type": "array", "maxItems": 3, "items": rows}]}
    schemas["PredictRequest"]["properties"]["inputs"] = {"$ref": "#/components/schemas/TensorValue"}
    schemas["Example"]["properties"] = {"x": {"$ref": "#/components/schemas/FeatureValue"}}  # half_plus_two's
    return steered


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("fuzz") / "m"
    for version in (1, 2):
        write_model(str(base / str(version)), {"signatures": MEMORY_SIGNATURES, "scale": 0.5, "offset": 2.0})
    options = ServerOptions(
        models=(
            ModelConfig("m", str(base), platform="memory", version_policy=VersionPolicy("all"),
                        version_labels=(("stable", 1),)),
            ModelConfig("half_plus_two", str(testdata / "saved_model_half_plus_two_cpu"),
                        version_labels=(("stable", 123),)),
        ),
        max_request_bytes=1 << 16, rest_api_timeout_ms=REQUEST_TIMEOUT_S * 1000 // 2,
    )
    with run_server(options) as running:
        yield running


@pytest.fixture(scope="module")
def schema(server: RunningServer) -> schemathesis.BaseSchema:
    served = requests.get(server.rest_url + OPENAPI_PATH, timeout=REQUEST_TIMEOUT_S).json()
    return schemathesis.openapi.from_dict(_steer(served), config=CONFIG)


def test_the_served_document_is_the_shipped_one_and_valid(server: RunningServer) -> None:
    response = requests.get(server.rest_url + OPENAPI_PATH, timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.content == openapi_document() == SHIPPED.read_bytes()
    loaded = schemathesis.openapi.from_dict(response.json())
    loaded.validate()  # against the OpenAPI 3.1 meta-schema
    assert loaded.raw_schema["openapi"].startswith("3.1")
    labels = sorted(result.ok().label for result in loaded.get_all_operations())
    assert labels == OPERATIONS and len(labels) == 19


@pytest.mark.parametrize(("label", "mode"), FUZZED)
def test_operation_conforms(server: RunningServer, schema: schemathesis.BaseSchema, label: str, mode: str) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None
    if mode == "examples":  # the path parameters still come from the (steered) schema
        strategy = st.one_of(*operation.get_strategies_from_examples())
    else:
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
    sent: list[int] = []

    @settings(max_examples=max(1, round(EXAMPLES[mode] * SCALE)), derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(case=strategy)
    def conforms(case: schemathesis.Case) -> None:
        started = time.monotonic()
        response = case.call_and_validate(base_url=server.rest_url, session=session, checks=CHECKS,
                                          timeout=REQUEST_TIMEOUT_S)
        sent.append(response.status_code)
        assert time.monotonic() - started < REQUEST_TIMEOUT_S

    with requests.Session() as session:
        conforms()
    assert sent, f"{label}: nothing was generated"
