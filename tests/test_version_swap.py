"""New versions go live without dropping requests: 20 version swaps under a steady REST + gRPC load."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import PROCESS_LAYOUTS, model_options, run_server
from pyserving.options import LifecycleOptions

SWAPS = 20
MAX_REQUESTS_PER_CLIENT = 20_000
POLL_S = 0.1
SLACK_S = 2.0  # a served version must have been on disk within this long before the request


def _status(url: str) -> dict[int, str]:
    body = requests.get(url, timeout=10).json()
    return {int(s["version"]): s["state"] for s in body["model_version_status"]}


@pytest.mark.parametrize("frontends", PROCESS_LAYOUTS, ids=lambda n: f"frontend_processes={n}")
def test_swaps_under_load_lose_no_request(testdata: Path, tmp_path: Path, frontends: int) -> None:
    source = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    base = tmp_path / "m"
    base.mkdir()
    timeline: list[tuple[float, frozenset[int]]] = []
    on_disk: set[int] = set()

    def add(version: int) -> None:
        staged = tmp_path / f"staging-{version}"
        shutil.copytree(source, staged)
        os.rename(staged, base / str(version))  # atomic, as a careful exporter does
        on_disk.add(version)
        timeline.append((time.monotonic(), frozenset(on_disk)))

    def remove(version: int) -> None:
        shutil.rmtree(base / str(version))
        on_disk.discard(version)
        timeline.append((time.monotonic(), frozenset(on_disk)))

    add(1)
    options = replace(model_options("m", base, lifecycle=LifecycleOptions(file_system_poll_wait_seconds=POLL_S)),
                      frontend_processes=frontends)
    results: list[tuple[str, float, float, int | None, str]] = []  # (api, t0, t1, version, error)
    stop = threading.Event()

    with run_server(options) as server:
        predict_url = server.rest_url + "/v1/models/m:predict"

        def rest_client() -> None:
            session = requests.Session()
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if stop.is_set():
                    return
                t0 = time.monotonic()
                try:
                    r = session.post(predict_url, json={"instances": [2.0]}, timeout=10)
                    ok = r.status_code == 200 and r.json() == {"predictions": [3.0]}
                    version = int(r.headers["X-Model-Version"]) if ok else None
                    results.append(("rest", t0, time.monotonic(), version, "" if ok else f"{r.status_code} {r.text}"))
                except requests.RequestException as exc:
                    results.append(("rest", t0, time.monotonic(), None, repr(exc)))

        def grpc_client() -> None:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if stop.is_set():
                    return
                t0 = time.monotonic()
                try:
                    response = stub.Predict(request, 10)
                    results.append(("grpc", t0, time.monotonic(), response.model_spec.version.value, ""))
                except grpc.RpcError as exc:
                    results.append(("grpc", t0, time.monotonic(), None, f"{exc.code()} {exc.details()}"))

        clients = [threading.Thread(target=f) for f in (rest_client, rest_client, grpc_client, grpc_client)]
        for c in clients:
            c.start()
        try:
            status_url = server.rest_url + "/v1/models/m"
            for old in range(1, SWAPS + 1):
                new = old + 1
                add(new)
                deadline = time.monotonic() + 60
                while _status(status_url).get(old) != "END" or _status(status_url).get(new) != "AVAILABLE":
                    assert time.monotonic() < deadline, f"swap {old}->{new} did not finish: {_status(status_url)}"
                    time.sleep(POLL_S / 2)
                remove(old)
                time.sleep(0.1)  # let traffic run on the new version alone for a moment
        finally:
            stop.set()
            for c in clients:
                c.join(30)

    failures = [r for r in results if r[4]]
    assert not failures, f"{len(failures)} of {len(results)} requests failed, first: {failures[:3]}"
    assert len(results) >= 200, "the load was too light to prove anything"
    for api, t0, t1, version, _ in results:
        # What was on disk when the request started, or at any time from SLACK_S before it until it ended.
        allowed = set().union(*(versions for t, versions in timeline if t0 - SLACK_S <= t <= t1))
        allowed |= max((entry for entry in timeline if entry[0] <= t0), default=(0.0, frozenset()))[1]
        assert version in allowed, f"{api} request at {t0:.3f} answered by version {version}, on disk: {allowed}"
    served = {r[3] for r in results}
    assert len(served) > SWAPS // 2, f"traffic reached only versions {sorted(served)}"


def test_an_unloaded_tensorflow_version_frees_its_graph(tmp_path: Path, testdata: Path) -> None:
    """The server freezes what it imported out of garbage collection before models load: a version loaded at
    start-up must still be freed once it is unloaded (frozen, its graph stayed for the life of the server)."""
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", tmp_path / "m" / "1")
    options = model_options("m", tmp_path / "m", lifecycle=LifecycleOptions(file_system_poll_wait_seconds=0.2))
    with run_server(options) as server:
        graph = weakref.ref(server.server.manager._models["m"].versions[1].servable._graph)  # white-box: the graph
        shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "2")
        deadline = time.monotonic() + 60
        while server.server.manager._models["m"].versions[1].state.name != "END":
            assert time.monotonic() < deadline, "version 1 was not unloaded"
            time.sleep(0.05)
        gc.collect()
        assert graph() is None, "the unloaded version's tf.Graph is still alive"
