"""`pyserving status` against real servers: TF Serving's test model, over REST and gRPC, and a canary split with
labels whose candidate is rolled back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from cli_run import one_line_error, pyserving
from conftest import RunningServer, free_port, run_server
from pyserving.cli.auth import new_key_line
from pyserving.config.flags import server_options
from pyserving.core.canary import CHECK_EVERY_S
from pyserving.runtimes.memory import write_model

PROG = "pyserving status"
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}


def rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def test_a_tf_serving_test_model_over_rest_and_grpc(tf1_server: RunningServer) -> None:
    listed = pyserving("status", "--rest", tf1_server.rest_url)
    assert listed.returncode == 0, listed.stderr
    assert rows(listed.stdout)[:2] == [["MODEL", "VERSION", "STATE", "LABELS", "STATUS"],
                                       ["default", "123", "AVAILABLE", "OK"]]
    # --model uses TF Serving's own GET /v1/models/M (TF Serving has no list), so this is what TF Serving shows
    one = pyserving("status", "--rest", tf1_server.rest_url, "--model", "default", "--format", "json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == {"models": [{
        "name": "default", "version_labels": {}, "traffic_split": None,
        "versions": [{"version": 123, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]}]}
    over_grpc = pyserving("status", "--grpc", tf1_server.grpc_target, "--model", "default", "--format", "json")
    assert over_grpc.returncode == 0, over_grpc.stderr
    assert json.loads(over_grpc.stdout) == json.loads(one.stdout)


def test_a_canary_split_with_labels_shows_weights_and_then_its_rollback(tmp_path: Path) -> None:
    base = tmp_path / "m"
    write_model(str(base / "2"), {"signatures": SIGNATURES, "scale": 1.0})
    write_model(str(base / "3"), {"signatures": SIGNATURES, "fail_above": -1.0})  # a candidate failing everything
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "memory" '
        'model_version_policy { all {} } version_labels { key: "stable" value: 2 } '
        'version_labels { key: "canary" value: 3 } default_version_policy { '
        'percentage { version: "2" value: 70 } percentage { version: "3" value: 30 } sticky_key: "X-User-Id" '
        "rollback { max_error_rate_increase: 0.1 window_seconds: 60 min_requests: 10 } } } }")
    with run_server(server_options({"model_config_file": str(config)})) as server:
        before = pyserving("status", "--rest", server.rest_url)
        assert before.returncode == 0, before.stderr
        table = rows(before.stdout)
        assert table[0] == ["MODEL", "VERSION", "STATE", "LABELS", "WEIGHT", "STATUS"]
        assert sorted(table[1:3]) == [["m", "2", "AVAILABLE", "stable", "70", "OK"],
                                      ["m", "3", "AVAILABLE", "canary", "30", "OK"]]
        assert "Traffic split of m (sticky on x-user-id): 0 rollback(s)" in before.stdout

        for user in range(120):
            requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [1.0]},
                          headers={"X-User-Id": str(user)}, timeout=10)
        # A verdict that a baseline success completed waits for the guard's next look (CHECK_EVERY_S), and front
        # ends list what they were sent up to 0.1 s before: `status` at once showed the candidate at 30% in a CI run.
        time.sleep(3 * CHECK_EVERY_S)
        after = pyserving("status", "--rest", server.rest_url, "--model", "m")
        assert after.returncode == 0, after.stderr
        table = rows(after.stdout)
        assert sorted(table[1:3]) == [["m", "2", "AVAILABLE", "stable", "100", "OK"],
                                      ["m", "3", "AVAILABLE", "canary", "0", "OK"]]
        assert "1 rollback(s)" in after.stdout
        arm = next(line for line in after.stdout.splitlines() if line.strip().startswith("version 3"))
        assert arm.split()[2:5] == ["candidate", "0", "30"] and "rolled back: " in arm
        split = json.loads(pyserving("status", "--rest", server.rest_url, "--format", "json").stdout
                           )["models"][0]["traffic_split"]
        assert split["rollbacks"] == 1 and split["sticky_key"] == "x-user-id"


def test_errors_are_one_line(tf1_server: RunningServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    assert one_line_error(pyserving("status", "--rest", f"http://{dead}"), PROG).startswith(
        f"{PROG}: error: cannot reach http://{dead}")
    assert f"cannot reach {dead}" in one_line_error(pyserving("status", "--grpc", dead, "--model", "m"), PROG)
    assert "HTTP 404: Could not find any versions of model nope" in one_line_error(
        pyserving("status", "--rest", tf1_server.rest_url, "--model", "nope"), PROG)
    assert "NOT_FOUND: Could not find any versions of model nope" in one_line_error(
        pyserving("status", "--grpc", tf1_server.grpc_target, "--model", "nope"), PROG)
    # No model list there (as on TF Serving, whose GET /v1/models is an error): the way forward is --model
    assert "has no model list" in one_line_error(
        pyserving("status", "--rest", f"{tf1_server.rest_url}/elsewhere"), PROG)
    assert "HTTP 404: <" in one_line_error(
        pyserving("status", "--rest", f"{tf1_server.rest_url}/elsewhere", "--model", "default"), PROG)
    usage = pyserving("status", "--grpc", tf1_server.grpc_target)
    assert usage.returncode == 2 and "--grpc needs --model" in usage.stderr


def test_a_server_with_auth_takes_the_token(tmp_path: Path) -> None:
    key = "k" * 43
    write_model(str(tmp_path / "m" / "1"), {"signatures": SIGNATURES})
    auth = tmp_path / "auth.config"
    auth.write_text(new_key_line("operator", ["*:metadata", "m:predict"], key) + "\n")
    (tmp_path / "x.json").write_text("[1.0, 2.0]")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" '
                      'model_platform: "memory" } }')
    with run_server(server_options({"model_config_file": str(config), "auth_config_file": str(auth)})) as server:
        assert "HTTP 401" in one_line_error(pyserving("status", "--rest", server.rest_url), PROG)
        assert "UNAUTHENTICATED" in one_line_error(
            pyserving("status", "--grpc", server.grpc_target, "--model", "m"), PROG)
        for result in (pyserving("status", "--rest", server.rest_url, "--token", key),
                       pyserving("status", "--grpc", server.grpc_target, "--model", "m",
                                 env={"PYSERVING_TOKEN": key})):
            assert result.returncode == 0, result.stderr
            assert rows(result.stdout)[1] == ["m", "1", "AVAILABLE", "OK"]
        for where in (["--rest", server.rest_url], ["--grpc", server.grpc_target]):
            predicted = pyserving("predict", "--model", "m", "--input", tmp_path / "x.json", *where, "--token", key)
            assert predicted.returncode == 0, predicted.stderr
            assert predicted.stdout.splitlines() == ["outputs['y']: float32 shape (2,)", "  [1., 2.]"]
