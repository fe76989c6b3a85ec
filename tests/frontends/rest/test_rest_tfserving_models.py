"""TF Serving's own test models over REST give TF Serving's answers (tensorflow_model_server_test.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from conftest import RunningServer


@pytest.fixture(params=["tf1", "tf2"])
def server(request: pytest.FixtureRequest) -> RunningServer:
    return request.getfixturevalue(f"{request.param}_server")


def post(server: RunningServer, path: str, body: object) -> requests.Response:
    return requests.post(server.rest_url + path, data=json.dumps(body), timeout=30)


def test_predict_row_format(server: RunningServer) -> None:
    r = post(server, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"predictions": [3.0, 3.5, 4.0]}


def test_predict_columnar_format(server: RunningServer) -> None:
    r = post(server, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": [3.0, 3.5, 4.0]}


def test_predict_named_version_and_signature(server: RunningServer) -> None:
    r = post(server, "/v1/models/default/versions/123:predict",
             {"signature_name": "serving_default", "instances": [[1.0], [5.0]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.5], [4.5]]}


def test_whole_floats_keep_their_decimal_point(server: RunningServer) -> None:
    r = post(server, "/v1/models/default:predict", {"instances": [2.0]})
    assert b"3.0" in r.content


def test_classify(server: RunningServer) -> None:
    r = post(server, "/v1/models/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [[["", 3.0]]]}


def test_regress(server: RunningServer) -> None:
    r = post(server, "/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [3.0]}


def test_regress_with_context(server: RunningServer) -> None:
    body = {"signature_name": "regress_x_to_y", "context": {"x": 4.0}, "examples": [{}, {"x": 2.0}]}
    r = post(server, "/v1/models/default:regress", body)
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [4.0, 3.0]}  # the example's own feature wins over the context's


def test_status(server: RunningServer) -> None:
    r = requests.get(server.rest_url + "/v1/models/default", timeout=10)
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert requests.get(server.rest_url + "/v1/models/default/versions/123", timeout=10).json() == r.json()


def test_metadata_tf1_equals_tf_serving(tf1_server: RunningServer, testdata: Path) -> None:
    expected = json.loads((testdata / "half_plus_two_model_metadata.json").read_text())
    r = requests.get(tf1_server.rest_url + "/v1/models/default/metadata", timeout=10)
    assert r.status_code == 200
    assert r.json() == expected


def test_metadata_tf2_lists_every_signature(tf2_server: RunningServer, testdata: Path) -> None:
    # TF Serving's file for the TF2 model names another model and lists the 2-versions export, so compare the
    # parts that describe signatures of the same exported function.
    expected = json.loads((testdata / "saved_model_half_plus_two_tf2_2_versions_metadata.json").read_text())
    got = requests.get(tf2_server.rest_url + "/v1/models/default/metadata", timeout=10).json()
    assert got["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    want_sigs = expected["metadata"]["signature_def"]["signature_def"]
    got_sigs = got["metadata"]["signature_def"]["signature_def"]
    assert set(got_sigs) == set(want_sigs)
    for name, sig in want_sigs.items():
        assert got_sigs[name]["method_name"] == sig["method_name"]
        assert {k: v["dtype"] for k, v in got_sigs[name]["inputs"].items()} == {
            k: v["dtype"] for k, v in sig["inputs"].items()
        }


def test_cors_headers_only_with_the_flag(tf1_server: RunningServer) -> None:
    r = requests.get(tf1_server.rest_url + "/v1/models/default", timeout=10)
    assert "access-control-allow-origin" not in r.headers
    r = requests.options(tf1_server.rest_url + "/v1/models/default:predict", headers={"Origin": "http://x"}, timeout=10)
    assert r.status_code == 200
    r = requests.options(tf1_server.rest_url + "/v1/models/default:predict", timeout=10)
    assert r.status_code == 400


def test_gzip_request_body(tf1_server: RunningServer) -> None:
    import gzip

    body = gzip.compress(json.dumps({"instances": [2.0]}).encode())
    r = requests.post(tf1_server.rest_url + "/v1/models/default:predict", data=body,
                      headers={"Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [3.0]}
