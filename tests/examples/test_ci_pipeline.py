"""The CI pipeline's test step for real (examples/ci/: build_model -> test_model): export the example CNN (a tiny
training run), start `pyserving serve` as its own process on 127.0.0.1 as the test_model job does, and run the
article's `python test_inference.py` against it. It must exit 0 against the good server and non-zero when a check
fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import REPO, free_port
from test_image_classifier import load_example

TEST_INFERENCE = REPO / "examples" / "image_classifier" / "test_inference.py"
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 240


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    rest_port: int
    grpc_port: int
    log: Path


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("ci")
    base = work / "models" / "my_model"
    # build_model: the example's export, as small as it gets (the test checks the serving, not the training).
    load_example("train_and_export").export_model(str(base), 1, samples=8, epochs=1, verbose=0)
    rest_port, grpc_port = free_port(), free_port()
    log = work / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", "--model_name=my_model", f"--model_base_path={base}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"pyserving exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{rest_port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"pyserving was not ready within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield ServerProcess(process, rest_port, grpc_port, log)
    finally:
        stop(process)


def run_test_inference(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SERVING_HOST", "REST_PORT", "GRPC_PORT", "REST_URL",
                                                            "GRPC_TARGET", "MODEL_NAME")}
    return subprocess.run(
        [sys.executable, str(TEST_INFERENCE), "--host", "127.0.0.1", "--rest_port", str(server.rest_port),
         "--grpc_port", str(server.grpc_port), *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=REPO)


def test_the_ci_test_step_passes_against_a_served_export(server: ServerProcess) -> None:
    result = run_test_inference(server)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + "\n--- server log ---\n" + server.log.read_text()[-3000:]
    for line in ("PASS model my_model version 1 is AVAILABLE", "PASS REST predict", "PASS gRPC Predict",
                 "numbers as REST", "OK: every check passed"):
        assert line in result.stdout, output


def test_the_ci_test_step_fails_when_a_check_fails(server: ServerProcess) -> None:
    """A model the server does not have, and a gRPC port nothing listens on: exit 1 with the reason, so the
    pipeline stops before deploying."""
    missing = run_test_inference(server, "--model_name", "not_there")
    assert missing.returncode == 1 and "FAIL model status" in missing.stderr, missing.stdout + missing.stderr
    wrong_port = run_test_inference(server, "--grpc_port", str(free_port()))
    assert wrong_port.returncode == 1 and "FAIL gRPC Predict" in wrong_port.stderr, (
        wrong_port.stdout + wrong_port.stderr)
