"""The REST router: exact GET paths before TF Serving's /v1 patterns (as TF Serving's own HTTP server looks up
registered URIs before its dispatchers), the rest of /v1 unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from conftest import run_server
from pyserving.frontends.rest.openapi import OPENAPI_PATH, openapi_document
from pyserving.options import ModelConfig, ServerOptions
from pyserving.runtimes.memory import write_model

TIMEOUT = 30
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}


def test_exact_paths_under_v1_are_served_and_the_rest_of_v1_is_tf_serving(tmp_path: Path) -> None:
    write_model(str(tmp_path / "m" / "1"), {"signatures": SIGNATURES})
    options = ServerOptions(models=(ModelConfig("m", str(tmp_path / "m"), platform="memory"),),
                            monitoring_path="/v1/metrics", rest_api_enable_cors_support=True)
    with run_server(options) as server:
        document = requests.get(server.rest_url + OPENAPI_PATH, timeout=TIMEOUT)
        assert document.status_code == 200 and document.content == openapi_document()
        assert json.loads(document.content)["openapi"].startswith("3.")
        assert document.headers["Access-Control-Allow-Origin"] == "*"  # browser tools on other origins read it
        metrics = requests.get(server.rest_url + "/v1/metrics", timeout=TIMEOUT)
        assert metrics.status_code == 200 and ":tensorflow:serving:" in metrics.text
        for method, path in (("POST", OPENAPI_PATH), ("GET", OPENAPI_PATH.upper()), ("GET", "/v1/openapi")):
            answer = requests.request(method, server.rest_url + path, timeout=TIMEOUT)
            assert (answer.status_code, answer.json()) == (400, {"error": f"Malformed request: {method} {path}"})
        assert requests.post(server.rest_url + "/v1/models/m:predict", json={"instances": [1.0]},
                             timeout=TIMEOUT).json() == {"predictions": [1.0]}
