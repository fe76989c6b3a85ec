"""The real CLI in a subprocess: `pyserving serve` with TF Serving's flags, on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import free_port

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def pyserving(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyserving", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def wait_until_serving(proc: subprocess.Popen[str], status_url: str, timeout_s: float = 120) -> None:
    """Poll the model's status URL until it answers 200; fail with the server's stderr if it exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(status_url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)


def test_version() -> None:
    result = pyserving("serve", "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("TensorFlow ModelServer: pyserving-")
    assert "TensorFlow Library: " in result.stdout


def test_help_lists_tf_serving_flags() -> None:
    result = pyserving("serve", "--help")
    assert result.returncode == 0
    for flag in ("--port=", "--rest_api_port=", "--model_base_path=", "--grpc_socket_path=", "--saved_model_tags="):
        assert flag in result.stdout


def test_bad_flag_value_is_an_error_naming_the_flag() -> None:
    result = pyserving("serve", "--port=eighty", "--model_base_path=/nowhere")
    assert result.returncode == 2
    assert "--port=eighty: expected an integer" in result.stderr


def test_broken_model_fails_startup_with_a_clear_message(testdata: Path) -> None:
    result = pyserving("serve", f"--port={free_port()}", f"--rest_api_port={free_port()}", "--host=127.0.0.1",
                       "--model_name=bad", f"--model_base_path={testdata / 'bad_half_plus_two'}",
                       "--max_num_load_retries=1", "--load_retry_interval_micros=100000", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "1 servable(s) did not become available" in result.stderr
    assert "bad:" in result.stderr and "SavedModel" in result.stderr
    assert "failed (attempt 1 of 2), retrying in 0.1 s" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_answers_and_stops_on_sigterm(testdata: Path, tmp_path: Path) -> None:
    rest_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyserving", "serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--host=127.0.0.1", "--model_name=half", f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
         "--xla_cpu_compilation_enabled=true", "--file_system_poll_wait_seconds=0", "--verbosity=DEBUG",
         f"--log_dir={tmp_path / 'logs'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        url = f"http://127.0.0.1:{rest_port}/v1/models/half"
        wait_until_serving(proc, url)
        r = requests.post(url + ":predict", json={"instances": [2.0]}, timeout=10)
        assert r.json() == {"predictions": [3.0]}
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "--xla_cpu_compilation_enabled is accepted for TensorFlow Serving compatibility but not implemented" in stderr
        # structured logs: JSON lines, one per request at DEBUG, the same in --log_dir's file
        import json

        # pyserving.log is the model process's; front-end processes (the default on 2+ cores) write their own
        # pyserving.frontend-N.log, where their requests' lines are
        logged = [json.loads(line) for path in sorted((tmp_path / "logs").glob("pyserving*.log"))
                  for line in path.read_text().splitlines()]
        request_lines = [r for r in logged if r.get("event") == "request"]
        assert len(request_lines) >= 2  # the status polls and the predict
        predict = next(r for r in request_lines if r["api"] == "predict")
        assert {"timestamp", "level", "model", "version", "latency_ms", "status", "request_id"} <= set(predict)
        assert (predict["model"], predict["version"], predict["status"]) == ("half", 123, "OK")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_graceful_shutdown_finishes_requests_in_flight(slow_model: Path) -> None:
    import threading

    rest_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyserving", "serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--host=127.0.0.1", "--model_name=slow", f"--model_base_path={slow_model}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        url = f"http://127.0.0.1:{rest_port}/v1/models/slow"
        wait_until_serving(proc, url)
        answers: list[requests.Response] = []
        # ~1 s of model work, in flight when SIGTERM arrives
        client = threading.Thread(target=lambda: answers.append(
            requests.post(url + ":predict", json={"inputs": {"x": [5.0], "spins": [300_000]}}, timeout=30)))
        client.start()
        time.sleep(0.3)
        proc.terminate()
        client.join(30)
        _, stderr = proc.communicate(timeout=30)
        assert answers and answers[0].status_code == 200, stderr
        assert answers[0].json() == {"outputs": [5.0]}
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


ARTICLE_CONFIG = """model_config_list {
  config {
    name: "my_model"
    base_path: "%s"
    model_platform: "tensorflow"
    # 可选:指定默认版本(若不设置,默认使用最高版本)
    default_version_policy {
      latest {
        num_versions: 1
      }
    }
  }
}
"""


def test_the_articles_command_line_works(testdata: Path, tmp_path: Path) -> None:
    """Section 2.2's bare-metal command with the flags of sections 5.2, 6.1 and 6.2, as a user types them."""
    config = tmp_path / "model_config.conf"
    config.write_text(ARTICLE_CONFIG % (testdata / "saved_model_half_plus_two_cpu"), encoding="utf-8")
    binary = Path(sys.executable).parent / "tensorflow_model_server"
    rest_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [str(binary), f"--rest_api_port={rest_port}", f"--model_config_file={config}", "--enable_batching=true",
         f"--batching_parameters_file={testdata / 'batching_config.txt'}",
         "--tensorflow_session_parallelism=4", "--tensorflow_gpu_memory_fraction=0.8",
         "--tensorflow_intra_op_parallelism=4", "--tensorflow_inter_op_parallelism=4",
         "--enable_metrics=true", f"--metrics_port={free_port()}", "--verbosity=INFO", f"--log_dir={tmp_path / 'logs'}",
         f"--port={grpc_port}", "--host=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        url = f"http://127.0.0.1:{rest_port}/v1/models/my_model"
        wait_until_serving(proc, url)
        assert requests.post(url + ":predict", json={"instances": [2.0]}, timeout=10).json() == {"predictions": [3.0]}
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "--tensorflow_session_parallelism is ignored" in stderr
