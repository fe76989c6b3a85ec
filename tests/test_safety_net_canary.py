"""Safety net for canary releases, black-box: the p99 latency guard, the rollback window, shadows that really run
the shadow version, the fallback arm while a split version is not AVAILABLE, and a rolled-back split surviving
config reloads that do not change it. Servers are observed only through REST/gRPC, GET /v1/models and /metrics."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from conftest import export_picky_model, run_server
from pyserving.config.flags import server_options
from safety_net_kit import Predictor, arm, grpc_predict, metric_value, sleepy_version, split_of, wait_for

HALF_PLUS_TWO = "saved_model_half_plus_two_cpu/00000123"


def config_text(base: Path, policy: str, extra: str = "", name: str = "m") -> str:
    return (f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} '
            f"default_version_policy {{ {policy} }} }}")


def write_config(path: Path, *entries: str) -> None:
    path.write_text("model_config_list { " + " ".join(entries) + " }")


def serve(path: Path, **flags: object) -> object:
    return run_server(server_options({"model_config_file": str(path), **flags}))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sleepy_exports")


def half_plus_two_and_picky(testdata: Path, base: Path) -> Path:
    """Version 2: half_plus_two; version 3: the picky candidate (INVALID_ARGUMENT for x >= 0.5)."""
    shutil.copytree(testdata / HALF_PLUS_TWO, base / "2")
    export_picky_model(base / "3")
    return base


def test_slow_candidate_is_rolled_back_by_the_p99_latency_guard(exports: Path, tmp_path: Path) -> None:
    """A candidate whose every 10th call takes 10+ ms (its median is as fast as the baseline's) is rolled back on
    p99 latency, even though the baseline's single slowest call (100+ ms, on purpose) is slower than every
    candidate call: the guard looks at the tail, and a p99 over 100+ samples is not the maximum."""
    base = tmp_path / "m"
    sleepy_version(exports, 0, base / "2", x_adds_ms=True)  # baseline: no sleep at x=0
    sleepy_version(exports, 10, base / "3", x_adds_ms=True, slow_every=10)  # candidate: 10+ ms every 10th call
    guard = ("rollback { max_p99_latency_ratio: 2 max_error_rate_increase: 0.5 window_seconds: 60 "
             "min_requests: 20 }")
    arms = [(2, 50), (3, 50)]
    path = tmp_path / "models.config"
    write_config(path, config_text(base, 'percentage { version: "2" value: 50 } percentage { version: "3" value: 50 } '
                                         f'sticky_key: "X-User-Id" {guard}'))
    with serve(path) as server:
        # warm both versions with pinned requests (not routed, so not measured): no cold first call counts
        assert [grpc_predict(server, 0.0, version=v) for v in (2, 3)] == [2, 3]
        # one deliberately slow baseline call (a sticky user the documented hash puts on version 2)
        user = next(f"user-{i}" for i in range(100) if documented_sticky_arm(f"user-{i}", arms) == 2)
        assert grpc_predict(server, 100.0, metadata=(("x-user-id", user),)) == 2
        predict = Predictor(server)  # no routing key: random arms
        outcomes: list[int | str] = []
        # The guard needs 100 samples on each side for a p99: ~250 requests, ~1 s.
        for i in range(700):
            outcomes.append(predict(0.0))
            if i % 25 == 24 and arm(split_of(server), "3")["weight"] == 0:
                break
        split = split_of(server)
        candidate = arm(split, "3")
        assert all(isinstance(o, int) for o in outcomes), [o for o in outcomes if isinstance(o, str)][:3]
        assert candidate["requests"] >= 100, "the candidate never got enough samples: the test proves nothing"
        assert candidate["weight"] == 0, f"a candidate with a 10+ ms tail over a sub-ms baseline was not rolled back: {split}"
        assert "p99 latency" in candidate["rolled_back"], candidate
        assert split["rollbacks"] == 1 and candidate["errors"] == 0
        assert arm(split, "2")["weight"] == 100
        assert {predict(0.0) for _ in range(30)} == {2}
        predict.close()


def test_candidate_within_its_error_budget_is_not_rolled_back(testdata: Path, tmp_path: Path) -> None:
    """About 10% candidate errors against an allowed increase of 25 points: the guard must leave it alone."""
    base = half_plus_two_and_picky(testdata, tmp_path / "m")
    guard = "rollback { max_error_rate_increase: 0.25 max_p99_latency_ratio: 1000 window_seconds: 60 min_requests: 20 }"
    path = tmp_path / "models.config"
    write_config(path, config_text(base, f'percentage {{ version: "2" value: 50 }} '
                                         f'percentage {{ version: "3" value: 50 }} {guard}'))
    with serve(path) as server:
        predict = Predictor(server, shape=[1, 1])
        started = time.monotonic()
        outcomes = [predict(0.9 if i % 10 == 0 else 0.1) for i in range(300)]
        while time.monotonic() - started < 0.6:  # the guard checks every 0.2 s: give it several looks
            outcomes.append(predict(0.1))
        split = split_of(server)
        candidate = arm(split, "3")
        assert outcomes.count("INVALID_ARGUMENT") >= 3, "the candidate hardly failed: the test proves nothing"
        assert candidate["requests"] >= 100 and 0 < candidate["errors"] < 0.2 * candidate["requests"], candidate
        assert split["rollbacks"] == 0 and candidate["weight"] == 50, f"rolled back within its error budget: {split}"
        predict.close()


def test_rollback_window_forgets_old_errors_and_counts_new_ones(testdata: Path, tmp_path: Path) -> None:
    """Errors older than window_seconds must not count: a burst of candidate errors too small to judge, then a
    quiet window, then healthy traffic is no reason to roll back. Errors inside the window still are."""
    base = half_plus_two_and_picky(testdata, tmp_path / "m")
    window_s = 1.0
    guard = (f"rollback {{ max_error_rate_increase: 0.02 max_p99_latency_ratio: 1000 window_seconds: {window_s} "
             "min_requests: 30 }")
    path = tmp_path / "models.config"
    write_config(path, config_text(base, f'percentage {{ version: "2" value: 50 }} '
                                         f'percentage {{ version: "3" value: 50 }} {guard}'))
    with serve(path) as server:
        predict = Predictor(server, shape=[1, 1])
        # 1. 25 requests in all (< min_requests on either arm): the candidate's share fail
        burst = [predict(0.9) for _ in range(25)]
        assert burst.count("INVALID_ARGUMENT") >= 3, f"the candidate hardly failed: the test proves nothing: {burst}"
        assert split_of(server)["rollbacks"] == 0
        # 2. the window passes with no traffic at all (what is being tested is time, so this sleeps)
        time.sleep(window_s * 1.3)
        # 3. healthy traffic on both arms, well past min_requests, checked many times
        started = time.monotonic()
        healthy = [predict(0.1) for _ in range(250)]
        while time.monotonic() - started < 0.6:  # the guard checks every 0.2 s: give it several looks
            healthy.append(predict(0.1))
        assert set(healthy) == {2, 3}, set(healthy)
        split = split_of(server)
        assert split["rollbacks"] == 0, f"errors older than window_seconds={window_s} caused a rollback: {split}"
        assert arm(split, "3")["weight"] == 50 and arm(split, "3")["errors"] >= 3
        # 4. errors inside the window do count: the guard is alive. The window is 1 s and wants min_requests on the
        # candidate within it, so the requests go back to back and the split is read only every 10 of them.
        for i in range(400):
            predict(0.9)
            if i % 10 == 9 and split_of(server)["rollbacks"]:
                break
        split = split_of(server)
        assert split["rollbacks"] == 1 and "error rate" in arm(split, "3")["rolled_back"], split
        predict.close()


def test_shadow_version_really_runs_the_model(exports: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    sleepy_version(exports, 0, base / "2")
    sleepy_version(exports, 0, base / "3")
    sleepy_version(exports, 20, base / "4")  # the shadow: a run of it takes 20+ ms, skipping it takes nothing
    path = tmp_path / "models.config"
    write_config(path, config_text(base, 'percentage { version: "2" value: 70 } percentage { version: "3" value: 30 } '
                                         'shadow { version: "4" percent: 100 }'))
    options = replace(server_options({"model_config_file": str(path)}), monitoring_path="/metrics")
    with run_server(options) as server:
        predict = Predictor(server)
        n = 60
        served = [predict(1.0) for _ in range(n)]
        assert set(served) <= {2, 3} and len(served) == n  # the shadow never answers
        split = wait_for(lambda: (s := split_of(server)) and
                         arm(s, "4")["requests"] + s["shadow_dropped"] == n and s, 30, "every shadow accounted for")
        shadow = arm(split, "4")  # type: ignore[arg-type]
        assert shadow["role"] == "shadow" and shadow["requests"] > 0 and shadow["errors"] == 0
        assert shadow["mean_latency_ms"] >= 20, f"the shadow did not run its 20 ms model: {shadow}"
        # every model run is timed in TF Serving's runtime_latency: the answered requests and the shadows
        text = requests.get(f"{server.rest_url}/metrics", timeout=10).text
        runs = metric_value(text, ":tensorflow:serving:runtime_latency_count", model_name="m")
        assert runs == n + shadow["requests"], (runs, n, shadow)
        predict.close()


def test_split_version_that_never_became_available_falls_back_to_the_other_arm(
    testdata: Path, tmp_path: Path
) -> None:
    """Version 3 is broken (never AVAILABLE); requests the split sends to it must be served by the other arm
    (version 1), not by the highest AVAILABLE version (2, outside the split) and not fail."""
    base = tmp_path / "m"
    shutil.copytree(testdata / HALF_PLUS_TWO, base / "1")
    shutil.copytree(testdata / HALF_PLUS_TWO, base / "2")
    shutil.copytree(testdata / "bad_half_plus_two" / "00000123", base / "3")
    path = tmp_path / "models.config"
    write_config(path, config_text(base, 'percentage { version: "1" value: 50 } percentage { version: "3" value: 50 }',
                                   "model_version_policy { all {} }"))
    with serve(path, max_num_load_retries=0) as server:
        states = {s["version"]: s["state"] for s in
                  requests.get(f"{server.rest_url}/v1/models/m", timeout=10).json()["model_version_status"]}
        assert states == {"1": "AVAILABLE", "2": "AVAILABLE", "3": "END"}, states
        predict = Predictor(server, shape=[1, 1])
        grpc_answers = [predict(1.0) for _ in range(150)]
        rest_answers = [requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [[1.0]]},
                                      timeout=10) for _ in range(30)]
        assert set(grpc_answers) == {1}, {a for a in grpc_answers if a != 1}
        assert [r.status_code for r in rest_answers] == [200] * 30
        assert {r.headers["X-Model-Version"] for r in rest_answers} == {"1"}
        assert {r.json()["predictions"][0][0] for r in rest_answers} == {2.5}
        # pinned requests are not split: version 2 is still reachable by number
        pinned = requests.post(f"{server.rest_url}/v1/models/m/versions/2:predict", json={"instances": [[1.0]]},
                               timeout=10)
        assert pinned.headers["X-Model-Version"] == "2"
        predict.close()


def test_rolled_back_split_stays_rolled_back_across_reloads_that_do_not_change_it(
    testdata: Path, testdata_three: Path, tmp_path: Path
) -> None:
    base = half_plus_two_and_picky(testdata, tmp_path / "m")
    policy = ('percentage { version: "2" value: 50 } percentage { version: "3" value: 50 } '
              "rollback { max_error_rate_increase: 0.1 max_p99_latency_ratio: 1000 window_seconds: 60 "
              "min_requests: 20 }")
    path = tmp_path / "models.config"
    write_config(path, config_text(base, policy))
    options = server_options({"model_config_file": str(path), "model_config_file_poll_wait_seconds": 1})
    options = replace(options, lifecycle=replace(options.lifecycle, model_config_file_poll_wait_seconds=0.2))
    with run_server(options) as server:
        predict = Predictor(server, shape=[1, 1])
        for _ in range(400):
            predict(0.9)
            if split_of(server)["rollbacks"]:
                break
        before = split_of(server)
        assert before["rollbacks"] == 1 and arm(before, "3")["weight"] == 0, before

        def still_rolled_back(what: str) -> None:
            split = split_of(server)
            candidate = arm(split, "3")
            assert candidate["weight"] == 0 and "rolled_back" in candidate, f"{what} reset the split: {split}"
            assert split["rollbacks"] == 1 and candidate["requests"] >= arm(before, "3")["requests"], (what, split)
            assert {predict(0.9) for _ in range(30)} == {2}, what

        # the same file written again (several polls pass)
        write_config(path, config_text(base, policy))
        time.sleep(1.0)
        still_rolled_back("rewriting the config file unchanged")
        # a real reload (another model added) that leaves this model's split as it was
        other = config_text(testdata_three, "latest {}", name="other")
        write_config(path, config_text(base, policy), other)
        wait_for(lambda: requests.post(f"{server.rest_url}/v1/models/other:predict", json={"instances": [1.0]},
                                       timeout=10).status_code == 200, 30, "the reload adding `other`")
        still_rolled_back("a reload that adds another model")
        # control: changed weights are a new split, starting fresh
        write_config(path, config_text(base, policy.replace("value: 50", "value: 60", 1)
                                       .replace('"3" value: 50', '"3" value: 40')), other)
        fresh = wait_for(lambda: (s := split_of(server)) and arm(s, "3")["configured_weight"] == 40 and s, 30,
                         "the reload with new weights")
        assert fresh["rollbacks"] == 0 and arm(fresh, "3")["weight"] == 40  # type: ignore[index]
        predict.close()


def documented_sticky_arm(key: str, arms: list[tuple[int, int]]) -> int:
    """The arm a sticky key gets, as routing documents it: a point in [0, 100) from the key's 64-bit blake2b
    hash, against the arms' cumulative weights in config order. Stable across processes and releases, so replicas
    (and a restarted or upgraded server) keep every user on the same version."""
    point = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64 * 100
    upto = 0
    for version, weight in arms:
        upto += weight
        if point < upto:
            return version
    return arms[-1][0]


def test_sticky_assignment_is_the_documented_stable_hash(testdata: Path, tmp_path: Path) -> None:
    """Exact assignments, not proportions: 500 users on a 69/30/1 split, including those whose point lies within
    a fraction of a percent of an arm's boundary and the ~5 on the 1% arm."""
    base = tmp_path / "m"
    for v in (2, 3, 4):
        shutil.copytree(testdata / HALF_PLUS_TWO, base / str(v))
    arms = [(2, 69), (3, 30), (4, 1)]
    policy = " ".join(f'percentage {{ version: "{v}" value: {w} }}' for v, w in arms) + ' sticky_key: "X-User-Id"'
    path = tmp_path / "models.config"
    write_config(path, config_text(base, policy))
    with serve(path) as server:
        predict = Predictor(server)
        request_metadata = [(("x-user-id", f"user-{i}"),) for i in range(500)]
        got = {}
        for metadata in request_metadata:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], shape=[1]))
            got[metadata[0][1]] = predict.stub.Predict(request, 10, metadata=metadata).model_spec.version.value
        expected = {key: documented_sticky_arm(key, arms) for key in got}
        wrong = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
        assert not wrong, f"{len(wrong)} users moved (got, documented): {dict(list(wrong.items())[:5])}"
        assert sum(v == 4 for v in got.values()) >= 2, "the 1% arm got (almost) nobody: the test proves little"
        predict.close()


@pytest.fixture
def testdata_three(testdata: Path) -> Path:
    return testdata / "saved_model_half_plus_three"
