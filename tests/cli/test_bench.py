"""`pyserving bench` against real servers: REST and gRPC, closed and open loop, durations and request counts, the
table, the plot, the Python-client fallback and error counting. Memory-platform models; 1 s points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import RunningServer, model_options, run_server
from pyserving.options import ServerOptions

REPO = Path(__file__).resolve().parents[2]
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (nghttp2-client)")


def write_model(base: Path, **extra: object) -> Path:
    (base / "1").mkdir(parents=True)
    (base / "1" / "model.json").write_text(json.dumps({
        "signatures": {"serving_default": {
            "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 16]}},
            "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 16]}},
            "method_name": "tensorflow/serving/predict"}},
        "function": "affine", "scale": 0.5, "offset": 2.0, **extra}))
    return base


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = write_model(tmp_path_factory.mktemp("bench") / "m")
    with run_server(_memory_options("m", base)) as running:
        yield running


def _memory_options(name: str, base: Path) -> ServerOptions:
    options = model_options(name, base)
    return replace(options, models=(replace(options.models[0], platform="memory"),))


def bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pyserving", "bench", "--no-progress", "--warmup", "0", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def points(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(path.read_text())


@needs_wrk
@needs_h2load
def test_rest_and_grpc_sweep_with_wrk_and_h2load_prints_table_and_plot(server: RunningServer, tmp_path: Path) -> None:
    out = bench("--rest", server.rest_url, "--grpc", server.grpc_target, "--model", "m", "--concurrency", "1,4",
                "--duration", "1", "--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert "| protocol | load | generator | requests | errors | QPS" in out.stdout
    assert "client CPU ms/req (cores)" in out.stdout
    got = points(tmp_path / "p.json")
    assert [(p["protocol"], p["level"], p["generator"]) for p in got] == [
        ("REST", 1, "wrk"), ("REST", 4, "wrk"), ("gRPC", 1, "h2load"), ("gRPC", 4, "h2load")]
    for p in got:
        assert p["requests"] > 10 and p["errors"] == 0 and p["qps"] > 10
        assert 0 < p["p50"] <= p["p90"] <= p["p99"]
        assert p["client_cpu_s"] > 0
        assert p["server_cpu_s"] > 0  # the server is this test process, found by its port
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_clients_open_loop_with_request_count(server: RunningServer, tmp_path: Path) -> None:
    out = bench("--rest", server.rest_url, "--grpc", server.grpc_target, "--model", "m", "--client", "python",
                "--rate", "40", "--requests", "30", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    got = points(tmp_path / "p.json")
    assert [(p["protocol"], p["mode"], p["generator"]) for p in got] == [
        ("REST", "open", "python"), ("gRPC", "open", "python")]
    for p in got:
        assert p["requests"] == 30 and p["errors"] == 0
        # 30 arrivals at 40/s take ~0.75 s: the rate was kept, not exceeded
        assert 0.6 <= p["seconds"] <= 5.0
        assert p["p99"] >= p["p50"] > 0


def test_python_clients_closed_loop_duration(server: RunningServer, tmp_path: Path) -> None:
    out = bench("--rest", server.rest_url, "--model", "m", "--client", "python", "--procs", "2",
                "--concurrency", "4", "--duration", "1", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    [p] = points(tmp_path / "p.json")
    assert p["generator"] == "python" and p["mode"] == "closed" and p["errors"] == 0
    assert p["requests"] > 10 and 0.9 <= p["seconds"] <= 3.0


@needs_h2load
def test_grpc_request_count_with_h2load(server: RunningServer, tmp_path: Path) -> None:
    out = bench("--grpc", server.grpc_target, "--model", "m", "--concurrency", "4", "--requests", "40",
                "--batch", "3", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert "random x: float32[3, 16] (3 row(s) per request)" in out.stdout
    [p] = points(tmp_path / "p.json")
    assert p["generator"] == "h2load" and p["requests"] == 40 and p["errors"] == 0


def test_errors_are_counted_on_both_protocols(tmp_path: Path) -> None:
    base = write_model(tmp_path / "picky", fail_above=0.5)  # random inputs in [0, 1): every request fails
    with run_server(_memory_options("picky", base)) as running:
        out = bench("--rest", running.rest_url, "--grpc", running.grpc_target, "--model", "picky",
                    "--concurrency", "2", "--duration", "1", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    got = points(tmp_path / "p.json")
    assert len(got) == 2
    for p in got:
        assert p["requests"] > 0 and p["errors"] == p["requests"] and p["qps"] == 0
    # h2load would have counted the gRPC failures (HTTP 200 + grpc-status) as successes: the Python clients ran
    assert got[1]["generator"] == "python"
    assert got[1]["first_error"].startswith("INVALID_ARGUMENT")
    if shutil.which("h2load"):  # the note says why h2load was passed over; without h2load there is nothing to say
        assert "h2load counts HTTP 200s" in out.stdout


def test_input_file_is_sent_over_both_protocols(server: RunningServer, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instances": [[0.1] * 16, [0.2] * 16]}))
    out = bench("--rest", server.rest_url, "--grpc", server.grpc_target, "--model", "m", "--client", "python",
                "--input", str(body), "--concurrency", "2", "--requests", "20", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert all(p["requests"] == 20 and p["errors"] == 0 for p in points(tmp_path / "p.json"))


def test_unknown_model_and_unreachable_server_say_what_to_fix(server: RunningServer) -> None:
    out = bench("--rest", server.rest_url, "--model", "nope", "--duration", "1")
    assert out.returncode == 2
    assert "pyserving bench: error: GET" in out.stderr and "nope" in out.stderr
    out = bench("--grpc", "127.0.0.1:1", "--model", "m", "--duration", "1")
    assert out.returncode == 2 and "is --grpc its gRPC address?" in out.stderr
    out = bench("--model", "m")
    assert out.returncode == 2 and "give --rest URL and/or --grpc HOST:PORT" in out.stderr


@pytest.mark.parametrize("client", [pytest.param("auto", marks=needs_wrk), "python"])
def test_engine_posts_any_rest_body_with_a_header_v2_binary(server: RunningServer, client: str) -> None:
    """bench/runtimes.py's V2 rows: the engine POSTs a prepared body (V2 binary extension) to another path."""
    import numpy as np

    from pyserving.tools.loadgen import LoadGenerator, LoadSpec, Payload, Target

    x = np.full((1, 16), 0.25, dtype="<f4")
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    target = Target("rest", server.rest_url, "m", rest_path="/v2/models/m/infer",
                    header=("Inference-Header-Content-Length", str(len(head))))
    with LoadGenerator(target, Payload(head + x.tobytes(), b"", 1, "V2 binary"), client=client) as gen:
        good = gen.run(LoadSpec(concurrency=2, duration=1))
    assert good.generator == ("wrk" if client == "auto" else "python")
    assert good.requests > 10 and good.errors == 0
    # the same body without the header is not a V2 JSON request: every one is refused, and counted
    target = Target("rest", server.rest_url, "m", rest_path="/v2/models/m/infer")
    with LoadGenerator(target, Payload(head + x.tobytes(), b"", 1, "V2 binary"), client=client) as gen:
        bad = gen.run(LoadSpec(concurrency=2, duration=1))
    assert bad.requests > 0 and bad.errors == bad.requests and bad.qps == 0


def test_credentials_reach_every_generator(tmp_path: Path) -> None:
    import hashlib

    key = "bench-key-0123456789abcdef"
    auth = tmp_path / "auth.config"
    auth.write_text(f'api_key {{ name: "bench" sha256: "{hashlib.sha256(key.encode()).hexdigest()}" '
                    'scope: "m:predict" scope: "m:metadata" }\n')
    token = tmp_path / "token"
    token.write_text(key + "\n")
    base = write_model(tmp_path / "m")
    with run_server(replace(_memory_options("m", base), auth_config_file=str(auth))) as running:
        args = ["--rest", running.rest_url, "--grpc", running.grpc_target, "--model", "m", "--concurrency", "2"]
        native = bench(*args, "--duration", "1", "--token-file", str(token), "--json", str(tmp_path / "a.json"))
        python = bench(*args, "--requests", "10", "--client", "python", "--token-file", str(token),
                       "--json", str(tmp_path / "b.json"))
        refused = bench(*args, "--duration", "1")
    assert native.returncode == 0, native.stderr
    assert python.returncode == 0, python.stderr
    for p in points(tmp_path / "a.json") + points(tmp_path / "b.json"):
        assert p["requests"] > 0 and p["errors"] == 0, p
    assert refused.returncode == 2 and "answered 401" in refused.stderr  # the metadata call, before any load
