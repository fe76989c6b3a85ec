"""The Open Inference Protocol's model repository extension (index, load, unload) on the REST and gRPC ports,
checked with Triton's own clients against framework-free "memory" models: round trips, a request in flight while
its model unloads, load errors, unknown models, config reloads, and the `admin` scope under --auth_config_file."""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient  # (scripts/test.sh installs Triton's client)
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.utils import InferenceServerException

from conftest import RunningServer, run_server
from pyserving.codecs.tfserving.protos.model_management_pb2 import ReloadConfigRequest, ReloadConfigResponse
from pyserving.codecs.tfserving.protos.services import MODEL_SERVICE
from pyserving.core.ids import ServableRequest
from pyserving.options import LifecycleOptions, ModelConfig, ServerOptions
from pyserving.runtimes.memory import MODEL_FILE, write_model

TIMEOUT = 30
SLOW_MS = 1500
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}
NO_RETRIES = LifecycleOptions(max_num_load_retries=0, file_system_poll_wait_seconds=0.2)
"""Polling on, so the tests see that a poll does not bring an unloaded model back; no retries, so a broken
version fails its load at once."""


def _write(base: Path, version: int = 1, **spec: object) -> Path:
    write_model(str(base / str(version)), {"signatures": SIGNATURES, "scale": 2.0, "offset": 1.0, **spec})
    return base


def _models(root: Path) -> tuple[ModelConfig, ...]:
    return (ModelConfig("mem", str(root / "mem"), platform="memory"),
            ModelConfig("slow", str(root / "slow"), platform="memory"),
            ModelConfig("flaky", str(root / "flaky"), platform="memory"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    _write(root / "mem")
    _write(root / "slow", delay_ms=SLOW_MS)
    _write(root / "flaky")
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[RunningServer]:
    with run_server(ServerOptions(models=_models(root), lifecycle=NO_RETRIES)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.rest_url.removeprefix("http://"), network_timeout=TIMEOUT)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def _infer_http(http: httpclient.InferenceServerClient, model: str, x: list[float]) -> np.ndarray:
    inp = httpclient.InferInput("x", [len(x)], "FP32")
    inp.set_data_from_numpy(np.array(x, np.float32))
    return http.infer(model, [inp]).as_numpy("y")


def _infer_grpc(client: grpcclient.InferenceServerClient, model: str, x: list[float]) -> np.ndarray:
    inp = grpcclient.InferInput("x", [len(x)], "FP32")
    inp.set_data_from_numpy(np.array(x, np.float32))
    return client.infer(model, [inp], client_timeout=TIMEOUT).as_numpy("y")


def _states(index: list[dict[str, str]], model: str) -> list[tuple[str, str, str]]:
    return [(e["version"], e["state"], e.get("reason", "")) for e in index if e["name"] == model]


# --- REST with tritonclient.http ------------------------------------------------------------------------------


def test_rest_unload_and_load_round_trip(server: RunningServer, http: httpclient.InferenceServerClient) -> None:
    index = http.get_model_repository_index()
    assert [e["name"] for e in index] == ["flaky", "mem", "slow"]
    assert _states(index, "mem") == [("1", "READY", "")]

    http.unload_model("mem")
    assert not http.is_model_ready("mem")
    assert _states(http.get_model_repository_index(), "mem") == [("1", "UNAVAILABLE", "unloaded")]
    with pytest.raises(InferenceServerException, match="mem"):
        _infer_http(http, "mem", [1.0])
    answer = requests.post(f"{server.rest_url}/v2/repository/index", json={"ready": True}, timeout=TIMEOUT)
    assert answer.status_code == 200 and "mem" not in [e["name"] for e in answer.json()]
    assert http.is_server_ready(), "a model the operator unloaded must not make the server unready"
    http.unload_model("mem")  # again: nothing to do, no error

    time.sleep(3 * NO_RETRIES.file_system_poll_wait_seconds)
    assert not http.is_model_ready("mem"), "a file-system poll brought the unloaded model back"

    http.load_model("mem")  # returns once it is ready
    assert http.is_model_ready("mem")
    assert _states(http.get_model_repository_index(), "mem")[-1] == ("1", "READY", "")
    np.testing.assert_allclose(_infer_http(http, "mem", [1.0, 2.0]), [3.0, 5.0])
    http.load_model("mem")  # a model already serving keeps serving


def test_rest_unknown_model_and_bad_requests(server: RunningServer, http: httpclient.InferenceServerClient) -> None:
    for call in (http.load_model, http.unload_model):
        with pytest.raises(InferenceServerException, match="not in the model config") as err:
            call("nope")
        assert err.value.status() == "404"
    url = f"{server.rest_url}/v2/repository"
    cases = [
        ("models/mem/load", {"parameters": {"config": "{}"}}, 501, "configured base_path"),
        ("models/mem/load", {"parameters": {"file:1/model.onnx": "AAAA"}}, 501, "configured base_path"),
        ("models/mem/unload", {"parameters": {"force": True}}, 400, "unload_dependents"),
        ("models/mem/unload", {"parameters": {"unload_dependents": "yes"}}, 400, "unload_dependents"),
        ("models/mem/unload", [], 400, "JSON object"),
        ("index", {"ready": "yes"}, 400, "ready"),
    ]
    for path, body, status, words in cases:
        answer = requests.post(f"{url}/{path}", json=body, timeout=TIMEOUT)
        assert answer.status_code == status and words in answer.json()["error"], (path, body, answer.text)
    answer = requests.post(f"{url}/models/mem/unload", data=b"{", timeout=TIMEOUT)
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    answer = requests.post(f"{url}/index", data=b" " * (65 << 10), timeout=TIMEOUT)
    assert answer.status_code == 413, answer.text
    assert requests.get(f"{url}/index", timeout=TIMEOUT).status_code == 404
    assert http.is_model_ready("mem"), "a refused request changed something"
    # unload_dependents is accepted either way: pyserving models have no dependents
    http.unload_model("mem", unload_dependents=True)
    http.load_model("mem")


def _calls(server: RunningServer, model: str) -> int:
    """Requests that reached the model so far (the memory model counts them as they start)."""
    with server.server.manager.lease(ServableRequest(model)) as lease:
        return lease.servable.calls  # type: ignore[attr-defined,no-any-return]


def test_request_in_flight_during_unload_is_answered(server: RunningServer,
                                                     http: httpclient.InferenceServerClient) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [4.0]}]}

    def infer() -> requests.Response:  # plain requests: tritonclient.http's gevent stays on its own thread
        return requests.post(f"{server.rest_url}/v2/models/slow/infer", json=body, timeout=TIMEOUT)

    before = _calls(server, "slow")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(infer)
        deadline = started + TIMEOUT
        while _calls(server, "slow") == before:  # until the request is inside the model
            assert time.monotonic() < deadline, "the request never reached the model"
            time.sleep(0.01)
        http.unload_model("slow")
        unloaded = time.monotonic()
        # (the answer may still be on its way to the client thread: unload waits for the model call, not the
        # client's read, so `pending.done()` here would race; the timing below shows unload waited)
        answer = pending.result(TIMEOUT)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [9.0]
    assert unloaded - started >= SLOW_MS / 1000 * 0.9
    with pytest.raises(InferenceServerException, match="slow"):
        _infer_http(http, "slow", [1.0])
    http.load_model("slow")
    np.testing.assert_allclose(_infer_http(http, "slow", [0.0]), [1.0])


def test_load_error_is_answered_and_an_explicit_load_retries(root: Path, http: httpclient.InferenceServerClient,
                                                               grpc_client: grpcclient.InferenceServerClient) -> None:
    http.unload_model("flaky")
    model_file = root / "flaky" / "1" / MODEL_FILE
    good = model_file.read_bytes()
    model_file.write_text("{not json")
    try:
        with pytest.raises(InferenceServerException, match="Failed to load model flaky: Cannot read memory model"):
            http.load_model("flaky")
        ((version, state, reason),) = _states(http.get_model_repository_index(), "flaky")[-1:]
        assert (version, state) == ("1", "UNAVAILABLE") and "Cannot read memory model" in reason
        with pytest.raises(InferenceServerException) as err:
            grpc_client.load_model("flaky")
        assert err.value.status() == "StatusCode.FAILED_PRECONDITION" and "Cannot read" in err.value.message()
    finally:
        model_file.write_bytes(good)
    http.load_model("flaky")  # the failed version is loaded afresh
    assert http.is_model_ready("flaky")
    np.testing.assert_allclose(_infer_http(http, "flaky", [1.0]), [3.0])


def test_a_config_reload_keeps_an_unloaded_model_unloaded(root: Path, server: RunningServer,
                                                          http: httpclient.InferenceServerClient) -> None:
    reload = server.channel().unary_unary(f"/{MODEL_SERVICE}/HandleReloadConfigRequest",
                                          request_serializer=ReloadConfigRequest.SerializeToString,
                                          response_deserializer=ReloadConfigResponse.FromString)

    def send(models: tuple[ModelConfig, ...]) -> None:
        text = "model_config_list { " + " ".join(
            f'config {{ name: "{m.name}" base_path: "{m.base_path}" model_platform: "memory" }}' for m in models
        ) + " }"
        request = ReloadConfigRequest()
        text_format.Parse(text, request.config)
        assert reload(request, timeout=TIMEOUT).status.error_code == 0

    http.unload_model("mem")
    send(_models(root))
    assert not http.is_model_ready("mem") and http.is_model_ready("slow")
    assert _states(http.get_model_repository_index(), "mem") == [("1", "UNAVAILABLE", "unloaded")]
    # removed, then added back: loaded afresh
    send(tuple(m for m in _models(root) if m.name != "mem"))
    assert "mem" not in [e["name"] for e in http.get_model_repository_index()]
    send(_models(root))
    assert http.is_model_ready("mem")


# --- gRPC with tritonclient.grpc ------------------------------------------------------------------------------


def test_grpc_unload_and_load_round_trip(grpc_client: grpcclient.InferenceServerClient) -> None:
    index = grpc_client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models if m.name == "mem"] == [("mem", "1", "READY")]
    grpc_client.unload_model("mem")
    assert not grpc_client.is_model_ready("mem")
    index = grpc_client.get_model_repository_index(as_json=True)
    assert [m for m in index["models"] if m["name"] == "mem"] == [
        {"name": "mem", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    with pytest.raises(InferenceServerException) as err:
        _infer_grpc(grpc_client, "mem", [1.0])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    grpc_client.load_model("mem")
    assert grpc_client.is_model_ready("mem")
    np.testing.assert_allclose(_infer_grpc(grpc_client, "mem", [1.0]), [3.0])


def test_grpc_unknown_model_and_unsupported_requests(grpc_client: grpcclient.InferenceServerClient) -> None:
    for call in (grpc_client.load_model, grpc_client.unload_model):
        with pytest.raises(InferenceServerException) as err:
            call("nope")
        assert err.value.status() == "StatusCode.NOT_FOUND" and "model config" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpc_client.load_model("mem", config='{"backend": "onnxruntime"}')
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(InferenceServerException) as err:
        grpc_client.load_model("")
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert grpc_client.is_model_ready("mem")


# --- authorization --------------------------------------------------------------------------------------------

ADMIN_KEY, MEM_ADMIN_KEY, PREDICT_KEY = "admin-key-0123456789", "mem-admin-key-0123456789", "predict-key-0123456789"


@pytest.fixture(scope="module")
def auth_server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    auth = tmp_path_factory.mktemp("auth") / "auth.config"
    auth.write_text(
        f'api_key {{ name: "admin" sha256: "{sha256(ADMIN_KEY)}" scope: "*:admin" scope: "*:metadata" }}\n'
        f'api_key {{ name: "mem-admin" sha256: "{sha256(MEM_ADMIN_KEY)}" scope: "mem:admin" }}\n'
        f'api_key {{ name: "predictor" sha256: "{sha256(PREDICT_KEY)}" scope: "*:predict" scope: "*:metadata" }}\n'
    )
    options = ServerOptions(models=_models(root)[:1], lifecycle=NO_RETRIES, auth_config_file=str(auth))
    with run_server(options) as running:
        yield running


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}  # lower case: gRPC metadata keys must be


def test_rest_repository_needs_the_admin_scope(auth_server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(auth_server.rest_url.removeprefix("http://"), network_timeout=TIMEOUT)
    try:
        for call in (lambda h: http.unload_model("mem", headers=h), lambda h: http.load_model("mem", headers=h),
                     lambda h: http.get_model_repository_index(headers=h)):
            with pytest.raises(InferenceServerException) as err:
                call(_bearer(PREDICT_KEY))
            assert err.value.status() == "403" and "admin" in err.value.message()
            with pytest.raises(InferenceServerException) as err:
                call({})
            assert err.value.status() == "401"
        assert http.is_model_ready("mem", headers=_bearer(PREDICT_KEY))
        # a per-model admin may unload and load its model, but not see every model's index
        http.unload_model("mem", headers=_bearer(MEM_ADMIN_KEY))
        assert not http.is_model_ready("mem", headers=_bearer(PREDICT_KEY))
        with pytest.raises(InferenceServerException) as err:
            http.get_model_repository_index(headers=_bearer(MEM_ADMIN_KEY))
        assert err.value.status() == "403"
        http.load_model("mem", headers=_bearer(MEM_ADMIN_KEY))
        assert _states(http.get_model_repository_index(headers=_bearer(ADMIN_KEY)), "mem")[-1] == ("1", "READY", "")
        http.unload_model("mem", headers=_bearer(ADMIN_KEY))
        http.load_model("mem", headers=_bearer(ADMIN_KEY))
        assert http.is_model_ready("mem", headers=_bearer(PREDICT_KEY))
    finally:
        http.close()


def test_grpc_repository_needs_the_admin_scope(auth_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(auth_server.grpc_target)
    try:
        for call in (lambda h: client.unload_model("mem", headers=h), lambda h: client.load_model("mem", headers=h),
                     lambda h: client.get_model_repository_index(headers=h)):
            with pytest.raises(InferenceServerException) as err:
                call(_bearer(PREDICT_KEY))
            assert err.value.status() == "StatusCode.PERMISSION_DENIED" and "admin" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            client.get_model_repository_index(headers=_bearer(MEM_ADMIN_KEY))
        assert err.value.status() == "StatusCode.PERMISSION_DENIED"
        client.unload_model("mem", headers=_bearer(MEM_ADMIN_KEY))
        assert not client.is_model_ready("mem", headers=_bearer(PREDICT_KEY))
        client.load_model("mem", headers=_bearer(ADMIN_KEY))
        index = client.get_model_repository_index(headers=_bearer(ADMIN_KEY))
        assert [(m.name, m.state) for m in index.models] == [("mem", "READY")]
    finally:
        client.close()
