"""Safety net for the CLI's metrics and listener flags, black-box: one `pyserving serve` subprocess with
--port=0 (no gRPC), --monitoring_config_file (Prometheus on the REST port) and --enable_metrics/--metrics_port,
scraped over HTTP; its listening sockets read from /proc."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import free_port, serve_subprocess
from safety_net_kit import listening_tcp_ports, metric_value

MONITORING_PATH = "/monitoring/prometheus/metrics"


@dataclass
class CliServer:
    proc: subprocess.Popen[bytes]
    rest_port: int
    metrics_port: int
    stderr: Path

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def predict(self, n: int = 1) -> None:
        for _ in range(n):
            r = requests.post(f"{self.rest_url}/v1/models/half:predict", json={"instances": [2.0]}, timeout=10)
            assert r.json() == {"predictions": [3.0]}, r.text


@pytest.fixture(scope="module")
def cli_server(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    tmp = tmp_path_factory.mktemp("cli_metrics")
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{MONITORING_PATH}" }}\n')
    rest_port, metrics_port = free_port(), free_port()
    stderr = tmp / "stderr.log"
    flags = ["--port=0", f"--rest_api_port={rest_port}", "--host=127.0.0.1", "--model_name=half",
             f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
             f"--monitoring_config_file={monitoring}", "--enable_metrics=true", f"--metrics_port={metrics_port}",
             "--file_system_poll_wait_seconds=0"]
    ready = lambda: requests.get(f"http://127.0.0.1:{rest_port}/v1/models/half", timeout=2).status_code == 200  # noqa: E731
    with serve_subprocess(flags, stderr, ready) as proc:
        yield CliServer(proc, rest_port, metrics_port, stderr)


def test_monitoring_config_file_serves_prometheus_on_the_rest_port(cli_server: CliServer) -> None:
    def scrape() -> requests.Response:
        return requests.get(cli_server.rest_url + MONITORING_PATH, timeout=10)

    before = scrape()
    assert before.status_code == 200 and before.headers["Content-Type"].startswith("text/plain"), before.text[:200]
    cli_server.predict(3)
    after = scrape().text
    for name, labels in (
        (":tensorflow:serving:request_count", {"model_name": "half", "status": "OK"}),
        ("tensorflow_serving_request_count_total",
         {"model": "half", "version": "123", "api": "predict", "protocol": "rest", "code": "OK"}),
    ):
        assert metric_value(after, name, **labels) - metric_value(before.text, name, **labels) == 3, name
    assert metric_value(after, ":tensorflow:serving:runtime_latency_count", model_name="half") >= 3
    # only the configured path serves metrics on the REST port
    assert requests.get(cli_server.rest_url + "/metrics", timeout=10).status_code == 404


def test_enable_metrics_serves_prometheus_on_the_metrics_port(cli_server: CliServer) -> None:
    url = f"http://127.0.0.1:{cli_server.metrics_port}/metrics"
    labels = {"model": "half", "version": "123", "api": "predict", "protocol": "rest", "code": "OK"}
    before = requests.get(url, timeout=10)
    assert before.status_code == 200, before.text[:200]
    cli_server.predict(2)
    after = requests.get(url, timeout=10).text
    assert metric_value(after, "tensorflow_serving_request_count_total", **labels) \
        - metric_value(before.text, "tensorflow_serving_request_count_total", **labels) == 2
    assert metric_value(after, "tensorflow_serving_model_state", model="half", version="123", state="AVAILABLE") == 1


def test_port_0_opens_no_grpc_listener_and_rest_still_works(cli_server: CliServer) -> None:
    cli_server.predict(1)
    assert listening_tcp_ports(cli_server.proc.pid) == {cli_server.rest_port, cli_server.metrics_port}
    assert "Running gRPC ModelServer" not in cli_server.stderr.read_text()
