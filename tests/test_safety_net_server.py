"""Safety net for the server as a whole, black-box: readiness, request logs closed on stop, refused config polls
changing nothing, CORS on, gRPC UNAVAILABLE from a full batch queue, and an RPC reload of a split model."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import grpc
import orjson
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from conftest import model_options, run_server
from pyserving.config.flags import server_options
from pyserving.options import BatchingOptions, LifecycleOptions
from safety_net_kit import (
    Predictor,
    metric_value,
    models_listing,
    open_files_under,
    sleepy_version,
    wait_for,
)

HALF_PLUS_TWO = "saved_model_half_plus_two_cpu"
NO_RETRIES = LifecycleOptions(max_num_load_retries=0, file_system_poll_wait_seconds=0)


def predict(url: str, model: str, suffix: str = "", body: object = None) -> requests.Response:
    return requests.post(f"{url}/v1/models/{model}{suffix}:predict", json=body or {"instances": [2.0]}, timeout=10)


def reload_rpc(server: object, text: str) -> model_management_pb2.ReloadConfigResponse:
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())  # type: ignore[attr-defined]
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return stub.HandleReloadConfigRequest(request, 60)


def entry(name: str, base: Path, extra: str = "") -> str:
    return f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }}'


def model_list(*entries: str) -> str:
    return "model_config_list { " + " ".join(entries) + " }"


# --- readiness -------------------------------------------------------------------------------------------------


def test_readyz_is_503_with_reasons_while_a_configured_model_has_no_available_version(testdata: Path) -> None:
    good = testdata / HALF_PLUS_TWO
    with run_server(model_options("good", good, lifecycle=NO_RETRIES)) as server:
        ready = requests.get(f"{server.rest_url}/readyz", timeout=10)
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        # a model whose only version is broken joins the config: the reload reports it, and it is not ready
        reply = reload_rpc(server, model_list(entry("good", good), entry("broken", testdata / "bad_half_plus_two")))
        assert reply.status.error_code != 0 and "broken" in reply.status.error_message
        ready = requests.get(f"{server.rest_url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["status"] == "unavailable" and list(body["models"]) == ["broken"], body
        assert body["models"]["broken"], "the reason must be given"
        assert requests.get(f"{server.rest_url}/healthz", timeout=10).status_code == 200  # alive, just not ready
        assert predict(server.rest_url, "good").status_code == 200
        # the broken model leaves the config: ready again
        assert reload_rpc(server, model_list(entry("good", good))).status.error_code == 0
        ready = requests.get(f"{server.rest_url}/readyz", timeout=10)
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


# --- request logs ----------------------------------------------------------------------------------------------


def test_request_log_is_complete_and_closed_once_the_server_stops(testdata: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    config = tmp_path / "models.config"
    config.write_text(model_list(entry(
        "half", testdata / HALF_PLUS_TWO,
        f'logging_config {{ sampling_config {{ sampling_rate: 1.0 }} '
        f'log_collector_config {{ type: "jsonl" filename_prefix: "{logs / "half"}" }} }}')))
    n = 40
    with run_server(server_options({"model_config_file": str(config)})) as server:
        session = requests.Session()
        for i in range(n):
            assert predict(server.rest_url, "half", body={"instances": [float(i)]}).status_code == 200
        session.close()
    # stop() has returned: every record is on disk, and no log file is still open
    assert open_files_under(logs) == [], "request log files are still open after the server stopped"
    lines = [orjson.loads(line) for f in sorted(logs.iterdir()) for line in f.read_bytes().splitlines()]
    assert sorted(r["inputs"]["x"][0] for r in lines) == [float(i) for i in range(n)]


# --- refused config polls --------------------------------------------------------------------------------------


def test_a_polled_config_that_parses_but_is_refused_changes_nothing(
    testdata: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    two = tmp_path / "two"
    shutil.copytree(testdata / "saved_model_half_plus_two_2_versions", two)
    three = testdata / "saved_model_half_plus_three"
    four = testdata / HALF_PLUS_TWO
    labels = 'model_version_policy { all {} } version_labels { key: "stable" value: 123 }'
    path = tmp_path / "models.config"
    path.write_text(model_list(entry("two", two, labels), entry("three", three)))
    options = server_options({"model_config_file": str(path), "model_config_file_poll_wait_seconds": 1})
    options = replace(options, lifecycle=replace(options.lifecycle, model_config_file_poll_wait_seconds=0.2))
    url = ""

    def state() -> dict[str, object]:
        listing = models_listing(url)
        return {name: ({s["version"]: s["state"] for s in m["model_version_status"]}, m["version_labels"])
                for name, m in listing.items()}

    expected = {"two": ({"124": "AVAILABLE", "123": "AVAILABLE"}, {"stable": "123"}),
                "three": ({"123": "AVAILABLE"}, {})}

    def unchanged() -> None:
        assert state() == expected
        assert predict(url, "three").json() == {"predictions": [4.0]}
        assert predict(url, "two", "/labels/stable").headers.get("X-Model-Version") == "123"
        assert predict(url, "four").status_code == 404

    def refusals() -> int:
        return sum(r.levelno >= logging.ERROR and str(path) in r.getMessage() for r in caplog.records)

    refused_configs = {
        # drops "three", adds "four", moves "two" to latest, and puts a label on a version that does not exist
        "label on a missing version": model_list(
            entry("two", two, 'version_labels { key: "stable" value: 999 }'), entry("four", four)),
        # same changes, and a duplicate model name
        "duplicate model name": model_list(entry("two", two), entry("four", four), entry("four", four)),
    }
    with caplog.at_level(logging.ERROR), run_server(options) as server:
        url = server.rest_url
        unchanged()
        for what, text in refused_configs.items():
            seen = refusals()
            path.write_text(text)
            # the poll refuses it (logged, naming the file), again on each poll: wait for two refusals (or for
            # a change, which fails below at once)
            wait_for(lambda: refusals() >= seen + 2 or state() != expected, 30,
                     f"the refusal of the config with a {what}")
            unchanged()
        # control: an acceptable config is applied by the same poll
        path.write_text(model_list(entry("two", two, labels), entry("three", three), entry("four", four)))
        wait_for(lambda: predict(url, "four").status_code == 200, 30, "the good config")


# --- CORS ------------------------------------------------------------------------------------------------------


def test_cors_headers_with_the_flag_on(testdata: Path) -> None:
    with run_server(model_options("half", testdata / HALF_PLUS_TWO, rest_api_enable_cors_support=True)) as server:
        url = server.rest_url
        answers = {
            "predict": predict(url, "half"),
            "predict error": predict(url, "half", body={"instances": ["not a number"]}),
            "status": requests.get(f"{url}/v1/models/half", timeout=10),
            "metadata": requests.get(f"{url}/v1/models/half/metadata", timeout=10),
            "preflight": requests.options(f"{url}/v1/models/half:predict", timeout=10, headers={
                "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Content-Type"}),
        }
        assert answers["predict"].json() == {"predictions": [3.0]}
        assert answers["predict error"].status_code == 400
        assert answers["preflight"].status_code == 200
        for what, r in answers.items():
            assert r.headers.get("Access-Control-Allow-Origin") == "*", (what, dict(r.headers))
            assert "POST" in r.headers.get("Access-Control-Allow-Methods", ""), (what, dict(r.headers))
            assert "content-type" in r.headers.get("Access-Control-Allow-Headers", "").lower(), what


# --- batching: gRPC ---------------------------------------------------------------------------------------------


def test_full_batch_queue_answers_grpc_unavailable_at_once(tmp_path: Path) -> None:
    base = tmp_path / "slow"
    sleepy_version(tmp_path, 250, base / "1")  # each run takes 250+ ms
    batching = BatchingOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    options = model_options("slow", base, batching=batching, monitoring_path="/metrics",
                            lifecycle=NO_RETRIES)
    with run_server(options) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "slow"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
        assert stub.Predict(request, 30).model_spec.version.value == 1  # warm

        def scrape() -> str:
            return requests.get(f"{server.rest_url}/metrics", timeout=10).text

        busy = [stub.Predict.future(request, 30)]
        # the first runs (in flight, not queued), then the second waits in the queue's only batch
        wait_for(lambda: metric_value(scrape(), "tensorflow_serving_requests_in_flight", protocol="grpc") == 1
                 and metric_value(scrape(), "tensorflow_serving_batching_queue_length", model="slow") == 0,
                 10, "the first request running")
        busy.append(stub.Predict.future(request, 30))
        wait_for(lambda: metric_value(scrape(), "tensorflow_serving_batching_queue_length", model="slow") == 1,
                 10, "the second request queued")
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, 30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "The batch scheduling queue to which this task was submitted is full"
        assert not busy[1].done(), "refused before the queue had room: the refusal did not wait"
        assert [f.result().model_spec.version.value for f in busy] == [1, 1]


# --- gRPC reload of a split model --------------------------------------------------------------------------------


def test_rpc_reload_of_a_split_model_serves_it_unsplit(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    for v in (2, 3):
        shutil.copytree(testdata / HALF_PLUS_TWO / "00000123", base / str(v))
    path = tmp_path / "models.config"
    path.write_text(model_list(entry(
        "m", base, 'default_version_policy { percentage { version: "2" value: 70 } '
                   'percentage { version: "3" value: 30 } }')))
    with run_server(server_options({"model_config_file": str(path)})) as server:
        predict_m = Predictor(server)
        assert {predict_m() for _ in range(100)} == {2, 3}
        assert "traffic_split" in models_listing(server)["m"]
        # ReloadConfigRequest's ModelConfig has no field for a split: the model comes back unsplit
        reply = reload_rpc(server, model_list(entry("m", base, "model_version_policy { specific { "
                                                             "versions: 2 versions: 3 } }")))
        assert reply.status.error_code == 0, reply.status.error_message
        listing = models_listing(server)["m"]
        assert "traffic_split" not in listing, listing
        assert {s["version"]: s["state"] for s in listing["model_version_status"]} == {
            "3": "AVAILABLE", "2": "AVAILABLE"}
        assert {predict_m() for _ in range(50)} == {3}  # unpinned: the highest version, as without a split
        assert predict(server.rest_url, "m", "/versions/2").headers["X-Model-Version"] == "2"
        predict_m.close()
