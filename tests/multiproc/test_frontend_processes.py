"""--frontend_processes=2: the real server as its own process tree (the model process and two front-end
processes), called over real sockets with requests and gRPC stubs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import requests
from conftest import GRPC_OPTIONS, TESTDATA, free_port, serve_subprocess

from google.protobuf import text_format

from pyserving.codecs.tfserving.protos import get_model_metadata_pb2, predict_pb2
from pyserving.codecs.tfserving.protos.model_management_pb2 import ReloadConfigRequest, ReloadConfigResponse
from pyserving.codecs.tfserving.tensor import fill_proto, to_ndarray
from pyserving.runtimes.memory import write_model

MODEL = TESTDATA / "saved_model_half_plus_two_cpu"
METRICS_PATH = "/monitoring/prometheus/metrics"
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}
PREDICT = "/tensorflow.serving.PredictionService/Predict"
METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"


@dataclass
class Tree:
    process: psutil.Process
    rest: str
    grpc_target: str

    def frontends(self) -> list[psutil.Process]:
        return [p for p in self.process.children() if "pyserving.frontends.worker" in " ".join(p.cmdline())]

    def predict(self, instances: list[float], timeout: float = 10) -> requests.Response:
        return requests.post(f"{self.rest}/v1/models/default:predict", json={"instances": instances},
                             timeout=timeout)

    def grpc_predict(self, x: np.ndarray) -> predict_pb2.PredictResponse:
        with grpc.insecure_channel(self.grpc_target, options=GRPC_OPTIONS) as channel:
            call = channel.unary_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                       response_deserializer=predict_pb2.PredictResponse.FromString)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "default"
            fill_proto(request.inputs["x"], x)
            return call(request, timeout=10)


@contextmanager
def serve_tree(tmp: Path, *extra: str) -> Iterator[Tree]:
    """The server with two front ends; "default" is half_plus_two unless `extra` gives a --model_config_file."""
    grpc_port, rest_port = free_port(), free_port()
    (tmp / "monitoring.txt").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    models = [] if any(f.startswith("--model_config_file") for f in extra) else [
        "--model_name=default", f"--model_base_path={MODEL}"]
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1", *models,
             "--frontend_processes=2", "--file_system_poll_wait_seconds=0",
             f"--monitoring_config_file={tmp / 'monitoring.txt'}", *extra]
    rest = f"http://127.0.0.1:{rest_port}"
    ready = lambda: requests.get(f"{rest}/readyz", timeout=2).status_code == 200  # noqa: E731
    with serve_subprocess(flags, tmp / "stderr.log", ready, timeout_s=120) as proc:
        yield Tree(psutil.Process(proc.pid), rest, f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    with serve_tree(tmp_path_factory.mktemp("multiproc")) as running:
        yield running


def _count(metrics: str, api: str, protocol: str) -> float:
    pattern = (r'tensorflow_serving_request_count_total\{api="%s",code="OK",model="default",protocol="%s",'
               r'signature="serving_default",version="123"\} ([0-9.e+]+)' % (api, protocol))
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def test_two_frontends_over_one_model_process_without_tensorflow(tree: Tree) -> None:
    frontends = tree.frontends()
    assert len(frontends) == 2
    for frontend in frontends:
        assert frontend.memory_info().rss <= 150 << 20, frontend.memory_info()
        libraries = "".join(m.path for m in frontend.memory_maps())
        assert "tensorflow" not in libraries  # the model (and TensorFlow) live only in the model process
    assert "tensorflow" in "".join(m.path for m in tree.process.memory_maps())


def test_rest_predict_small_and_through_shared_memory(tree: Tree) -> None:
    answer = tree.predict([1.0, 2.0, 5.0])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert answer.headers["X-Model-Version"] == "123"
    big = list(np.arange(20000, dtype=np.float32).tolist())  # 80 kB: over the inline limit, so via the arena
    for _ in range(3):  # regions are freed and reused
        answer = tree.predict(big)
        assert answer.status_code == 200
        np.testing.assert_allclose(answer.json()["predictions"], np.asarray(big) / 2 + 2)


def test_grpc_predict_small_and_large(tree: Tree) -> None:
    for n in (3, 100_000):
        x = np.arange(n, dtype=np.float32)
        response = tree.grpc_predict(x)
        assert response.model_spec.version.value == 123
        assert response.model_spec.signature_name == "serving_default"
        np.testing.assert_allclose(to_ndarray("y", response.outputs["y"]), x / 2 + 2)


def test_status_metadata_health_and_errors(tree: Tree) -> None:
    status = requests.get(f"{tree.rest}/v1/models/default", timeout=5).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = requests.get(f"{tree.rest}/v1/models/default/metadata", timeout=5).json()
    assert meta["model_spec"]["version"] == "123"
    assert "serving_default" in meta["metadata"]["signature_def"]["signature_def"]
    assert requests.get(f"{tree.rest}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{tree.rest}/readyz", timeout=5).json() == {"status": "ready"}
    missing = requests.post(f"{tree.rest}/v1/models/nope:predict", json={"instances": [1.0]}, timeout=5)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Servable not found for request: Latest(nope)"}
    bad_sig = requests.post(f"{tree.rest}/v1/models/default:predict",
                            json={"signature_name": "zzz", "instances": [1.0]}, timeout=5)
    assert bad_sig.status_code == 400
    assert bad_sig.json() == {"error": 'Serving signature name: "zzz" not found in signature def'}
    regress = requests.post(f"{tree.rest}/v1/models/default:regress", timeout=5,
                            json={"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]})
    assert regress.json() == {"results": [3.0, 4.0]}
    with grpc.insecure_channel(tree.grpc_target) as channel:
        call = channel.unary_unary(
            METADATA, request_serializer=get_model_metadata_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "default"
        assert call(request, timeout=5).model_spec.version.value == 123
        request.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as failed:
            call(request, timeout=5)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_one_scrape_counts_every_frontends_requests_once(tree: Tree) -> None:
    before = requests.get(f"{tree.rest}{METRICS_PATH}", timeout=5).text
    k = 40
    for _ in range(k):  # a new connection each time: the kernel spreads them over both front ends
        assert requests.post(f"{tree.rest}/v1/models/default:predict", json={"instances": [1.0]},
                             headers={"Connection": "close"}, timeout=5).status_code == 200
    for _ in range(5):
        tree.grpc_predict(np.ones(2, np.float32))
    time.sleep(0.2)  # observations travel one event-loop turn behind the answers
    after = requests.get(f"{tree.rest}{METRICS_PATH}", timeout=5).text
    assert _count(after, "predict", "rest") - _count(before, "predict", "rest") == k
    assert _count(after, "predict", "grpc") - _count(before, "predict", "grpc") == 5
    assert 'tensorflow_serving_requests_in_flight{protocol="rest"} 0.0' in after  # every start met its finish
    assert ":tensorflow:serving:request_count" in after  # TF Serving's names are kept


def test_killed_frontend_fails_only_its_requests_and_comes_back(tree: Tree) -> None:
    """Clients with a new connection per request: when one front end is SIGKILLed under load, at most the
    requests it held (one per client thread) fail; the other front end keeps answering, and a new front end
    takes the dead one's place."""
    victim = tree.frontends()[0]
    threads, results = 8, []
    lock = threading.Lock()
    stop_at = time.monotonic() + 4
    killed_at: list[float] = []

    def client() -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                ok = requests.post(f"{tree.rest}/v1/models/default:predict", json={"instances": [1.0]},
                                   headers={"Connection": "close"}, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                results.append((started, time.monotonic(), ok))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    killed_at.append(time.monotonic())
    victim.send_signal(signal.SIGKILL)
    while True:  # its sockets close with it (the supervisor may reap it at once)
        try:
            if not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    gone_at = time.monotonic()
    for w in workers:
        w.join(20)
    failures = [r for r in results if not r[2]]
    assert len(results) > 50
    # A connection the kernel queued on the victim until it was gone is the victim's too (on a loaded machine a
    # thread may meet it twice between SIGKILL and the exit): what must hold is that no request started after
    # the victim was gone fails.
    assert len(failures) <= 2 * threads, failures
    late = [(round(started - killed_at[0], 3), round(ended - killed_at[0], 3)) for started, ended, _ in failures]
    assert all(started <= gone_at + 0.01 for started, _, _ in failures), (late, round(gone_at - killed_at[0], 3))
    assert any(started > killed_at[0] + 0.5 and ok for started, _, ok in results)
    deadline = time.monotonic() + 60
    while len([p for p in tree.frontends() if p.pid != victim.pid]) < 2:
        assert time.monotonic() < deadline, "the dead front end was not restarted"
        time.sleep(0.2)
    time.sleep(3)  # the new one imports and starts listening
    answers = [tree.predict([1.0]).status_code for _ in range(20)]
    assert answers == [200] * 20


def test_v2_predict_through_the_model_process(tree: Tree) -> None:
    answer = requests.post(f"{tree.rest}/v2/models/default/infer", timeout=5, json={
        "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 3.0]}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.5, 3.5]
    assert requests.get(f"{tree.rest}/v2/health/ready", timeout=5).status_code == 200


def _reload(target: str, config: str) -> ReloadConfigResponse:
    request = ReloadConfigRequest()
    text_format.Parse(config, request.config)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.ModelService/HandleReloadConfigRequest",
                                   request_serializer=ReloadConfigRequest.SerializeToString,
                                   response_deserializer=ReloadConfigResponse.FromString)
        return call(request, timeout=60)


def test_reload_request_log_and_sigterm_act_on_the_whole_server(tmp_path: Path) -> None:
    """A config reload sent to a front end reaches the model process and every front end sees its result; the
    model process writes the request log of requests served by both front ends; SIGTERM drains them all."""
    logs = tmp_path / "requests"
    logged = (f'config {{ name: "default" base_path: "{MODEL}" logging_config {{ sampling_config {{ sampling_rate: '
              f'1.0 }} log_collector_config {{ type: "jsonl" filename_prefix: "{logs}" }} }} }}')
    (tmp_path / "models.config").write_text(f"model_config_list {{ {logged} }}\n")
    # The drain delay outlasts the checks below with room to spare on a loaded machine. (CI's failure of this test
    # was a signal during start-up skipping the delay: fixed in Server.stop.)
    with serve_tree(tmp_path, "--drain_delay_s=6", f"--model_config_file={tmp_path / 'models.config'}") as running:
        frontends = running.frontends()
        for i in range(10):
            assert requests.post(f"{running.rest}/v1/models/default:predict", json={"instances": [float(i)]},
                                 headers={"Connection": "close"}, timeout=5).status_code == 200
        response = _reload(running.grpc_target, f'model_config_list {{ {logged} config {{ name: "other" '
                                                f'base_path: "{MODEL}" }} }}')
        assert response.status.error_code == 0, response.status.error_message
        deadline = time.monotonic() + 30
        while requests.post(f"{running.rest}/v1/models/other:predict", json={"instances": [1.0]},
                            headers={"Connection": "close"}, timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the reloaded model never reached the front ends"
            time.sleep(0.1)
        for _ in range(6):  # both front ends know it (a new connection lands on either)
            other = requests.get(f"{running.rest}/v1/models/other", headers={"Connection": "close"}, timeout=5)
            assert other.json()["model_version_status"][0]["state"] == "AVAILABLE"
        session = requests.Session()
        assert session.get(f"{running.rest}/readyz", timeout=5).status_code == 200
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.6)  # the snapshot reaches the front ends within ~0.1 s
        for _ in range(4):  # each front end's /readyz says so, while predictions are still answered
            ready = requests.get(f"{running.rest}/readyz", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["status"] == "draining"
            assert running.predict([1.0]).status_code == 200
        assert running.process.wait(30) == 0
        for frontend in frontends:
            assert not frontend.is_running() or frontend.status() == psutil.STATUS_ZOMBIE
    lines = [json.loads(line) for path in tmp_path.glob("requests*.jsonl") for line in path.read_text().splitlines()]
    inputs = sorted(line["inputs"]["x"][0] for line in lines if line["model"] == "default")
    assert inputs == sorted([float(i) for i in range(10)] + [1.0] * 4)  # one log, every front end's requests


def test_front_ends_follow_the_model_process_out(tmp_path: Path) -> None:
    """The model process SIGKILLed while a slow request is in flight: that request fails 503 with a message saying
    why, and the front ends exit (they cannot serve without it, and must not keep the ports)."""
    write_model(str(tmp_path / "slow" / "1"), {"signatures": SIGNATURES, "function": "affine", "scale": 1.0,
                                                 "offset": 0.0, "delay_ms": 3000})
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "slow" base_path: "{tmp_path / "slow"}" model_platform: "memory" }} }}'
        "\n")
    with serve_tree(tmp_path, f"--model_config_file={tmp_path / 'models.config'}") as running:
        frontends = running.frontends()
        answers: list[requests.Response] = []
        held = threading.Thread(target=lambda: answers.append(requests.post(
            f"{running.rest}/v1/models/slow:predict", json={"instances": [1.0]}, timeout=30)))
        held.start()
        time.sleep(1)
        running.process.kill()
        held.join(30)
        assert answers[0].status_code == 503
        assert answers[0].json() == {"error": "The model process is not reachable (it exited or is restarting). "
                                              "Retry the request shortly."}
        gone, alive = psutil.wait_procs(frontends, timeout=30)
        assert not alive
        with pytest.raises(requests.ConnectionError):
            running.predict([1.0], timeout=5)


def test_a_front_end_that_cannot_start_fails_the_start_up(tmp_path: Path) -> None:
    """Front end 0 serves --grpc_socket_path; a socket it cannot create stops the server with exit status 1 and a
    line saying which front end failed and why, and no process is left behind."""
    with open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", f"--port={free_port()}",
             f"--rest_api_port={free_port()}", "--model_name=default", f"--model_base_path={MODEL}",
             "--frontend_processes=2", f"--grpc_socket_path={tmp_path / 'missing' / 'grpc.sock'}"],
            stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert proc.wait(120) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
    log = (tmp_path / "stderr.log").read_text()
    assert f"unix:{tmp_path / 'missing' / 'grpc.sock'}" in log  # the front end's own reason
    assert "Front-end process 0 exited while starting" in log
    time.sleep(1)
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or ()) and p.pid != proc.pid]


@pytest.mark.parametrize("after_load_s", [0.0, 0.4, 0.9])
def test_sigterm_while_the_front_ends_start(tmp_path: Path, after_load_s: float) -> None:
    """SIGTERM while the front ends are being spawned or are importing (the ~1 s between the model's load and
    their listening): the server exits 0 within a few seconds (here ~0.2 s) and leaves no process behind. The
    narrowest window, a front end whose spawn is under way when the stop begins (it used to linger 5 s, until its
    channel closed), is milliseconds wide and not reliably hit here; the supervisor signals such a one too."""
    rest_port = free_port()
    flags = [f"--port={free_port()}", f"--rest_api_port={rest_port}", "--host=127.0.0.1", "--model_name=default",
             f"--model_base_path={MODEL}", "--frontend_processes=2"]
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pyserving", "serve", *flags], stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 120
        while "Successfully loaded servable version" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        time.sleep(after_load_s)
        children = psutil.Process(proc.pid).children(recursive=True)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        took = time.monotonic() - signalled
        assert took < 4.5, (took, log.read_text()[-3000:])
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
        ours = (f"--rest_api_port={rest_port}", f"--rest_port={rest_port}")  # the server's, a front end's
        assert not [p for p in psutil.process_iter(["cmdline", "status"])
                    if set(ours) & set(p.info["cmdline"] or ()) and p.info["status"] != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_repository_extension_through_the_model_process(tree: Tree) -> None:
    """The V2 repository index, unload and load reach the model process, and every front end sees the result."""
    url = f"{tree.rest}/v2/repository"
    index = requests.post(f"{url}/index", json={}, timeout=10)
    assert index.status_code == 200, index.text
    assert [(e["name"], e["state"]) for e in index.json()] == [("default", "READY")]
    assert requests.post(f"{url}/models/default/unload", timeout=30).status_code == 200
    assert all(requests.get(f"{tree.rest}/v2/models/default/ready", timeout=5).status_code == 400
               for _ in range(6)), "a front end still reports the unloaded model ready"
    assert requests.post(f"{url}/models/nope/load", timeout=30).status_code == 404
    assert requests.post(f"{url}/models/default/load", timeout=60).status_code == 200
    assert all(tree.predict([1.0]).status_code == 200 for _ in range(6))
