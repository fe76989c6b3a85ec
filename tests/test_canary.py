"""Canary releases: the article's 70/30 split, sticky users, pinned requests, live weight changes, shadow traffic,
and automatic rollback of a failing candidate."""

from __future__ import annotations

import collections
import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import PROCESS_LAYOUTS, RunningServer, export_picky_model, run_server
from pyserving.config.flags import server_options
from pyserving.core.canary import CHECK_EVERY_S
from pyserving.core.routing import choose_arm, sticky_point
from pyserving.ipc.model_side import SNAPSHOT_EVERY_S

N = 2000


def split_config(base: Path, policy: str, labels: str = "") -> str:
    return (f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" {labels} '
            f"default_version_policy {{ {policy} }} }} }}")


def article_split(weights: tuple[int, int] = (70, 30), extra: str = "") -> str:
    return (f'percentage {{ version: "2" value: {weights[0]} }} percentage {{ version: "3" value: {weights[1]} }} '
            + extra)


@pytest.fixture
def two_versions(testdata: Path, tmp_path: Path) -> Path:
    base = tmp_path / "m"
    for v in (2, 3):
        shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / str(v))
    return base


def serve(config_text: str, tmp_path: Path) -> object:
    path = tmp_path / "models.config"
    path.write_text(config_text)
    return run_server(server_options({"model_config_file": str(path)}))


def grpc_versions(server: RunningServer, count: int, *, spec: dict[str, object] | None = None,
                  metadata: tuple[tuple[str, str], ...] = (), x: float = 2.0) -> list[int]:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    for key, value in (spec or {}).items():
        if key == "version":
            request.model_spec.version.value = value  # type: ignore[assignment]
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([x], shape=[1]))
    return [stub.Predict(request, 10, metadata=metadata).model_spec.version.value for _ in range(count)]


def test_the_articles_split_is_70_30_within_binomial_tolerance(two_versions: Path, tmp_path: Path) -> None:
    with serve(split_config(two_versions, article_split()), tmp_path) as server:
        counts = collections.Counter(grpc_versions(server, N))
        # 4.5 standard deviations of Binomial(2000, 0.3): a false alarm about once in 150,000 runs
        tolerance = 4.5 * (N * 0.3 * 0.7) ** 0.5
        assert set(counts) == {2, 3}
        assert abs(counts[3] - 0.3 * N) <= tolerance, counts
        rest = collections.Counter(
            requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [1.0]}, timeout=10)
            .headers["X-Model-Version"] for _ in range(200)
        )
        assert set(rest) == {"2", "3"}


def test_sticky_keys_never_change_version_and_pinned_requests_are_never_split(
    two_versions: Path, tmp_path: Path
) -> None:
    labels = 'version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 }'
    config = split_config(two_versions, article_split(extra='sticky_key: "X-User-Id"'), labels)
    with serve(config, tmp_path) as server:
        assignment = {}
        for user in range(100):
            versions = set(grpc_versions(server, 3, metadata=(("x-user-id", f"user-{user}"),)))
            r = requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [1.0]},
                              headers={"X-User-Id": f"user-{user}"}, timeout=10)
            versions.add(int(r.headers["X-Model-Version"]))
            assert len(versions) == 1, f"user-{user} saw versions {versions}"
            assignment[user] = versions.pop()
        assert 10 <= sum(v == 3 for v in assignment.values()) <= 55  # ~30 of 100 users on the canary
        assert set(grpc_versions(server, 100, spec={"version": 2})) == {2}
        assert set(grpc_versions(server, 100, spec={"version_label": "canary"})) == {3}
        pinned = {requests.post(f"{server.rest_url}/v1/models/m/labels/stable:predict", json={"instances": [1.0]},
                                timeout=10).headers["X-Model-Version"] for _ in range(50)}
        assert pinned == {"2"}


@pytest.mark.parametrize("frontends", PROCESS_LAYOUTS, ids=lambda n: f"frontend_processes={n}")
def test_reload_70_30_to_0_100_under_load_fails_no_request(two_versions: Path, tmp_path: Path, frontends: int) -> None:
    # The weights live in the config file (TF Serving's ReloadConfigRequest proto has no field for them).
    path = tmp_path / "models.config"
    path.write_text(split_config(two_versions, article_split()))
    options = server_options({"model_config_file": str(path), "model_config_file_poll_wait_seconds": 1,
                              "frontend_processes": frontends})
    with run_server(options) as server:
        stop = threading.Event()
        results: list[tuple[float, int | str]] = []

        def client() -> None:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
            for _ in range(20_000):
                if stop.is_set():
                    return
                try:
                    results.append((time.monotonic(), stub.Predict(request, 10).model_spec.version.value))
                except grpc.RpcError as exc:
                    results.append((time.monotonic(), f"{exc.code()}: {exc.details()}"))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        path.write_text(split_config(two_versions, article_split((0, 100))))
        written = time.monotonic()
        deadline = written + 30
        while not (results and results[-1][1] == 3 and all(v == 3 for _, v in results[-20:])):
            assert time.monotonic() < deadline, "the new weights never took effect"
            time.sleep(0.05)
        reloaded = max(t for t, v in results if v == 2)  # the last answer of version 2
        assert reloaded - written < 3, "weights must change within about one poll"
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        failures = [r for r in results if isinstance(r[1], str)]
        assert not failures, failures[:3]
        assert {v for t, v in results if t < written} == {2, 3}
        assert {v for t, v in results if t > reloaded} == {3}


def test_failing_candidate_is_rolled_back_automatically(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "2")
    export_picky_model(base / "3")
    guard = "rollback { max_error_rate_increase: 0.1 window_seconds: 60 min_requests: 20 }"
    with serve(split_config(base, article_split((50, 50), guard)), tmp_path) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        rng = np.random.default_rng(0)
        outcomes = []
        for _ in range(400):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[float(rng.random())]]))
            try:
                outcomes.append(stub.Predict(request, 10).model_spec.version.value)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                outcomes.append("error")
        assert "error" in outcomes[:200], "the candidate never failed: the test proves nothing"
        assert set(outcomes[-100:]) == {2}, "after the rollback the baseline must serve everything"
        listing = requests.get(f"{server.rest_url}/v1/models", timeout=10).json()["models"][0]["traffic_split"]
        candidate = next(a for a in listing["arms"] if a["version"] == "3")
        assert candidate["weight"] == 0 and "error rate" in candidate["rolled_back"]
        assert listing["rollbacks"] == 1


@contextlib.contextmanager
def failing_candidate(
    testdata: Path, tmp_path: Path, frontends: int
) -> Iterator[tuple[RunningServer, Callable[[str], int | str], dict[int, list[str]]]]:
    """A 50/50 split sticky on X-User-Id whose candidate (3) fails every request (its error-rate guard: +10%, 10
    requests); yields the server, a gRPC call for a user (the version that answered, or "error") and user keys
    that go to each arm by the server's own rule, so a test orders what each arm sees."""
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "2")
    export_picky_model(base / "3")  # refuses x >= 0.5: every request below fails there
    guard = "rollback { max_error_rate_increase: 0.1 window_seconds: 60 min_requests: 10 }"
    path = tmp_path / "models.config"
    path.write_text(split_config(base, article_split((50, 50), f'sticky_key: "X-User-Id" {guard}')))
    keys: dict[int, list[str]] = {2: [], 3: []}
    for user in map(str, range(1000)):
        keys[choose_arm([(2, 50.0), (3, 50.0)], sticky_point(user))].append(user)
    with run_server(server_options({"model_config_file": str(path), "frontend_processes": frontends})) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[0.9]]))

        def call(user: str) -> int | str:
            try:
                return stub.Predict(request, 10, metadata=(("x-user-id", user),)).model_spec.version.value
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
                return "error"

        yield server, call, keys


def split_listing(server: RunningServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """GET /v1/models: the split of model m, and its candidate (version 3) arm."""
    listing = requests.get(f"{server.rest_url}/v1/models", timeout=10).json()["models"][0]["traffic_split"]
    return listing, next(a for a in listing["arms"] if a["version"] == "3")


@pytest.mark.parametrize("frontends", PROCESS_LAYOUTS, ids=lambda n: f"frontend_processes={n}")
def test_the_failure_that_condemns_the_candidate_rolls_it_back_at_once(
    testdata: Path, tmp_path: Path, frontends: int
) -> None:
    """10 successes on the baseline, then the candidate's users: its 10th failure meets the guard, and its 11th
    user is served by the baseline, with no pause between (the guard's periodic look, every CHECK_EVERY_S, let
    that much more traffic fail there)."""
    with failing_candidate(testdata, tmp_path, frontends) as (server, call, keys):
        started = time.monotonic()
        got = [call(user) for user in keys[2][:10] + keys[3][:20]]
        took = time.monotonic() - started
        time.sleep(3 * SNAPSHOT_EVERY_S)  # front ends list what the model process sent them last
        listing, candidate = split_listing(server)
    print(f"30 requests in {took * 1000:.0f} ms: {got}")
    assert got == [2] * 10 + ["error"] * 10 + [2] * 10
    assert listing["rollbacks"] == 1 and candidate["weight"] == 0 and "error rate" in candidate["rolled_back"]


@pytest.mark.parametrize("frontends", PROCESS_LAYOUTS, ids=lambda n: f"frontend_processes={n}")
def test_a_burst_that_condemns_the_candidate_is_judged_when_traffic_stops(
    testdata: Path, tmp_path: Path, frontends: int
) -> None:
    """10 failures on the candidate, then 10 successes on the baseline: the evidence is complete only with the
    last success, which the guard judges at its next look (at most every CHECK_EVERY_S, 0.2 s). A burst too short
    to meet that look was left unjudged until traffic resumed: the listing showed the failing candidate at 50%,
    and the next request could still go to it (`pyserving status` right after a burst showed it in one CI run).
    Now the next request or listing makes the look that came due."""
    with failing_candidate(testdata, tmp_path, frontends) as (server, call, keys):
        started = time.monotonic()
        burst = [call(user) for user in keys[3][:10] + keys[2][:10]]
        took = time.monotonic() - started
        time.sleep(3 * CHECK_EVERY_S)  # no traffic: a look is due; front ends get the split every 0.1 s
        after = [call(user) for user in keys[3][10:30]]
        listing, candidate = split_listing(server)
    print(f"burst of 20 requests in {took * 1000:.0f} ms: {burst}; then {after}")
    assert burst == ["error"] * 10 + [2] * 10
    assert after == [2] * 20
    assert listing["rollbacks"] == 1 and candidate["weight"] == 0 and "error rate" in candidate["rolled_back"]


def test_shadow_traffic_is_measured_and_never_answers(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    for v in (2, 3, 4):
        shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / str(v))
    config = split_config(base, article_split(extra='shadow { version: "4" percent: 100 }'))
    with serve(config, tmp_path) as server:
        served = set(grpc_versions(server, 200))
        assert served == {2, 3}
        time.sleep(0.3)
        listing = requests.get(f"{server.rest_url}/v1/models", timeout=10).json()["models"][0]["traffic_split"]
        shadow = next(a for a in listing["arms"] if a["role"] == "shadow")
        assert shadow["version"] == "4"
        assert shadow["requests"] + listing["shadow_dropped"] == 200
        assert shadow["requests"] > 0 and shadow["errors"] == 0


def test_split_to_a_missing_version_is_refused(two_versions: Path, tmp_path: Path) -> None:
    config = split_config(two_versions, 'percentage { version: "2" value: 50 } percentage { version: "9" value: 50 }')
    path = tmp_path / "models.config"
    path.write_text(config)
    with pytest.raises(Exception, match="sends requests to version 9"):
        with run_server(server_options({"model_config_file": str(path)})):
            pass


def test_label_arms_and_step_promotion(two_versions: Path, tmp_path: Path) -> None:
    labels = 'version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 }'
    policy = ('percentage { label: "stable" value: 90 } percentage { label: "canary" value: 10 } '
              "rollback { window_seconds: 30 min_requests: 5 max_p99_latency_ratio: 50 } "  # 2 cores: p99s are noisy
              "promote { step_percent: 45 interval_seconds: 0.3 }")
    with serve(split_config(two_versions, policy, labels), tmp_path) as server:
        deadline = time.monotonic() + 30
        while True:
            listing = requests.get(f"{server.rest_url}/v1/models", timeout=10).json()["models"][0]["traffic_split"]
            canary = next(a for a in listing["arms"] if a["label"] == "canary")
            if canary["weight"] == 100:
                break
            assert time.monotonic() < deadline, f"the healthy canary was never promoted to 100%: {listing}"
            grpc_versions(server, 20)
        assert listing["promotions"] >= 2 and listing["rollbacks"] == 0
        assert set(grpc_versions(server, 50)) == {3}
