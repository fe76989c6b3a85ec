"""The model lifecycle through a real server: new and broken versions on disk, health and list endpoints."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import model_options, run_server
from pyserving.options import LifecycleOptions

POLL = LifecycleOptions(file_system_poll_wait_seconds=0.1, max_num_load_retries=0)


def wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def states(url: str) -> dict[int, tuple[str, str]]:
    body = requests.get(url, timeout=10).json()
    return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in body["model_version_status"]}


def test_broken_new_version_never_interrupts_the_serving_one(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    with run_server(model_options("m", base, lifecycle=POLL)) as server:
        status_url = server.rest_url + "/v1/models/m"
        shutil.copytree(testdata / "bad_half_plus_two" / "00000123", base / "2")  # old mtimes: not half-written
        wait_for(lambda: states(status_url).get(2, ("",))[0] == "END")
        got = requests.get(status_url, timeout=10).json()["model_version_status"]
        assert got[0]["version"] == "2" and got[0]["status"]["error_code"] != "OK"
        assert "SavedModel" in got[0]["status"]["error_message"]
        assert states(status_url)[1] == ("AVAILABLE", "OK")
        r = requests.post(status_url + ":predict", json={"instances": [2.0]}, timeout=10)
        assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
        ready = requests.get(server.rest_url + "/readyz", timeout=10)
        assert ready.status_code == 200


def test_half_written_version_waits_until_complete(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    with run_server(model_options("m", base, lifecycle=POLL)) as server:
        status_url = server.rest_url + "/v1/models/m"
        partial = base / "2"
        partial.mkdir()
        shutil.copy(testdata / "saved_model_half_plus_two_cpu" / "00000123" / "saved_model.pb", partial)
        (partial / "variables").mkdir()
        time.sleep(0.5)  # several polls
        assert 2 not in states(status_url)
        for name in ("variables.index", "variables.data-00000-of-00001"):
            shutil.copy(testdata / "saved_model_half_plus_two_cpu" / "00000123" / "variables" / name,
                        partial / "variables")
        wait_for(lambda: states(status_url).get(2) == ("AVAILABLE", "OK") and states(status_url)[1][0] == "END")


def test_empty_base_path_keeps_serving(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    with run_server(model_options("m", base, lifecycle=POLL)) as server:
        os.rename(base / "1", tmp_path / "elsewhere")
        time.sleep(0.5)
        r = requests.post(server.rest_url + "/v1/models/m:predict", json={"instances": [2.0]}, timeout=10)
        assert r.status_code == 200


def test_health_readiness_and_model_list(testdata: Path, tmp_path: Path) -> None:
    options = model_options("half", testdata / "saved_model_half_plus_two_cpu", enable_grpc_healthcheck_service=True)
    with run_server(options) as server:
        assert requests.get(server.rest_url + "/healthz", timeout=10).json() == {"status": "ok"}
        assert requests.get(server.rest_url + "/readyz", timeout=10).json() == {"status": "ready"}
        listing = requests.get(server.rest_url + "/v1/models", timeout=10).json()
        assert listing == {"models": [{
            "name": "half",
            "model_version_status": [
                {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ],
            "version_labels": {},
        }]}
        health = health_pb2_grpc.HealthStub(server.channel())
        for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_health_is_off_by_default(tf1_server: object) -> None:
    health = health_pb2_grpc.HealthStub(tf1_server.channel())  # type: ignore[attr-defined]
    try:
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    else:
        raise AssertionError("health service answered without --enable_grpc_healthcheck_service")
