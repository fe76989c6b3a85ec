"""`pyserving batching tune` end to end: a real `pyserving serve` with a --model_config_file, batching parameters
changed by HandleReloadConfigRequest without a restart, a short sweep, the file written and the config restored."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import free_port, serve_subprocess
from pyserving.cli.batching import ConfigEditor, Reloader
from pyserving.config.batching_config import load_batching_parameters_file
from pyserving.options import BatchingOptions

REPO = Path(__file__).resolve().parents[2]
ORIGINAL = """# a comment tune must keep
model_config_list {
  config { name: "m" base_path: "%s" model_platform: "memory"
           batching_parameters { max_batch_size: 1 batch_timeout_micros: 0 max_enqueued_batches: 100 } }
}
"""


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], rest: str, grpc: str, config: Path, log: Path) -> None:
        self.proc, self.rest, self.grpc, self.config, self.log = proc, rest, grpc, config, log

    def predict(self, rows: int) -> requests.Response:
        return requests.post(f"{self.rest}/v1/models/m:predict", json={"instances": [[0.1] * 4] * rows}, timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_model(tmp_path, []) as s:
        yield s


@contextlib.contextmanager
def serve_model(tmp_path: Path, extra_flags: list[str]) -> Iterator[Served]:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.json").write_text(json.dumps({
        "signatures": {"serving_default": {
            "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 4]}},
            "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 4]}},
            "method_name": "tensorflow/serving/predict"}},
        "function": "affine", "scale": 0.5, "offset": 2.0, "delay_ms": 1}))
    config = tmp_path / "models.config"
    config.write_text(ORIGINAL % (tmp_path / "m"))
    rest_port, grpc_port = free_port(), free_port()
    log = tmp_path / "server.log"
    flags = ["--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1", *extra_flags]
    rest = f"http://127.0.0.1:{rest_port}"
    with serve_subprocess(flags, log, lambda: requests.get(f"{rest}/v1/models/m", timeout=2).status_code in (200, 401)) as p:
        yield Served(p, rest, f"127.0.0.1:{grpc_port}", config, log)


def test_reload_rpc_changes_batching_without_reloading_the_model(served: Served) -> None:
    refused = served.predict(3)
    assert refused.status_code == 400
    assert "Task size 3 is larger than maximum input batch size 1" in refused.json()["error"]
    editor = ConfigEditor(served.config, "m")
    assert editor.current is not None and editor.current.max_batch_size == 1
    Reloader(served.grpc, editor).apply(editor.text_with(BatchingOptions(max_batch_size=4, num_batch_threads=2)))
    # applied when the RPC returned: no waiting for the config-file poll
    answer = served.predict(3)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [[2.05] * 4] * 3}
    assert served.proc.poll() is None
    log = served.log.read_text()
    assert log.count("Loading servable version") == 1  # the model was not loaded again
    assert "New batching parameters for servable version" in log


def tune(served: Served, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pyserving", "batching", "tune", "--no-progress", "--rest", served.rest,
         "--admin-grpc", served.grpc, "--model", "m", "--model-config-file", str(served.config),
         "--max-batch-sizes", "1,8", "--timeouts", "0,2000", "--batch-threads", "1", "--concurrency", "8",
         "--duration", "1", "--warmup", "0.2", "--out", str(tmp_path / "best.txt"), "--json",
         str(tmp_path / "tune.json"), *extra],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def test_tune_sweeps_writes_the_best_file_and_restores_the_config(served: Served, tmp_path: Path) -> None:
    before = served.config.read_bytes()
    out = tune(served, tmp_path, "--p99-ms", "1000")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "=== batching tune: m, rest c=8" in out.stdout
    steps = json.loads((tmp_path / "tune.json").read_text())
    assert [s["step"] for s in steps] == ["baseline", "max_batch_size", "max_batch_size", "batch_timeout_micros",
                                         "best, again", "baseline, again"]
    assert all(s["point"]["requests"] > 0 for s in steps)
    best = load_batching_parameters_file(str(tmp_path / "best.txt"))
    measured = {(s["options"]["max_batch_size"], s["options"]["batch_timeout_micros"]): s["point"]["qps"]
                for s in steps[1:4]}
    assert measured[(best.max_batch_size, best.batch_timeout_micros)] == max(measured.values())
    assert (steps[4]["options"]["max_batch_size"], steps[4]["options"]["batch_timeout_micros"]) == (
        best.max_batch_size, best.batch_timeout_micros)
    assert steps[5]["options"]["max_batch_size"] == 1  # the baseline is the config's own block
    assert best.num_batch_threads == 1 and best.max_enqueued_batches == 100
    text = (tmp_path / "best.txt").read_text()
    assert "# best:" in text and "baseline" in text
    # the file is back byte for byte, and so is the server's configuration (max_batch_size 1 refuses 3 rows)
    assert served.config.read_bytes() == before
    assert served.predict(3).status_code == 400
    assert served.proc.poll() is None


def test_tune_with_an_unmeetable_bound_writes_nothing(served: Served, tmp_path: Path) -> None:
    before = served.config.read_bytes()
    out = tune(served, tmp_path, "--p99-ms", "0.001")
    assert out.returncode == 1
    assert "no candidate met p99 <= 0.001 ms" in out.stdout
    assert not (tmp_path / "best.txt").exists()
    assert served.config.read_bytes() == before


def test_tune_refuses_a_model_the_config_lacks(served: Served, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pyserving", "batching", "tune", "--grpc", served.grpc, "--model", "other",
         "--p99-ms", "10", "--model-config-file", str(served.config)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert out.returncode == 2
    assert "has no model 'other' (it has ['m'])" in out.stderr


def test_requests_in_flight_during_batching_reloads_all_succeed(served: Served) -> None:
    """Each reload swaps the batcher under load: requests queued in the old one finish there, none is lost."""
    import threading

    from pyserving.tools.loadgen import LoadGenerator, LoadSpec, Target, build_payload

    target = Target("grpc", served.grpc, "m")
    editor = ConfigEditor(served.config, "m")
    reloader = Reloader(served.grpc, editor)
    with LoadGenerator(target, build_payload(target), client="python", procs=1) as gen:
        result = []
        load = threading.Thread(target=lambda: result.append(gen.run(LoadSpec(concurrency=8, duration=3))))
        load.start()
        for i in range(6):
            size, threads = (8, 2) if i % 2 == 0 else (2, 1)
            reloader.apply(editor.text_with(BatchingOptions(max_batch_size=size, batch_timeout_micros=2000,
                                                            max_enqueued_batches=100, num_batch_threads=threads)))
        load.join(30)
    [point] = result
    assert point.requests > 50
    assert point.errors == 0, point.first_error
    assert served.log.read_text().count("New batching parameters for servable version") == 6


def test_tune_sends_credentials_to_a_server_with_auth(tmp_path: Path) -> None:
    key = "tune-key-0123456789abcdef"
    auth = tmp_path / "auth.config"
    auth.write_text(f'api_key {{ name: "tuner" sha256: "{hashlib.sha256(key.encode()).hexdigest()}" '
                    'scope: "m:predict" scope: "m:metadata" scope: "*:admin" }\n')
    (tmp_path / "token").write_text(key)
    with serve_model(tmp_path, [f"--auth_config_file={auth}"]) as served:
        before = served.config.read_bytes()
        refused = tune(served, tmp_path, "--p99-ms", "1000")
        assert refused.returncode == 2 and "answered 401" in refused.stderr
        assert "restore" not in refused.stderr  # nothing was changed, so nothing to put back
        out = tune(served, tmp_path, "--p99-ms", "1000", "--token-file", str(tmp_path / "token"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert load_batching_parameters_file(str(tmp_path / "best.txt")).max_batch_size in (1, 8)
        assert served.config.read_bytes() == before
