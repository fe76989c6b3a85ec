"""Prometheus metrics scraped from a real server after real traffic, parsed with prometheus_client's parser."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import free_port, model_options, run_server
from pyserving.observability.metrics import Metrics
from pyserving.options import BatchingOptions

PATH = "/monitoring/prometheus/metrics"


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(parsed: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, l, v in parsed if n == name and all(l.get(k) == want for k, want in labels.items()))


def test_counts_and_histograms_match_the_requests_sent(testdata: Path) -> None:
    options = model_options("half", testdata / "saved_model_half_plus_two_cpu", monitoring_path=PATH,
                            batching=BatchingOptions(max_batch_size=8))
    with run_server(options) as server:
        for _ in range(7):
            assert requests.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": [1.0]},
                                 timeout=10).status_code == 200
        for _ in range(3):
            assert requests.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": ["x"]},
                                 timeout=10).status_code == 400
        assert requests.post(f"{server.rest_url}/v1/models/nope:predict", json={"instances": [1.0]},
                             timeout=10).status_code == 404
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
        for _ in range(5):
            stub.Predict(request, 10)
        request.model_spec.signature_name = "nope"
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, 10)

        r = requests.get(server.rest_url + PATH, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        parsed = samples(r.text)

        count = "tensorflow_serving_request_count_total"
        ok_rest = dict(model="half", version="123", signature="serving_default", api="predict", protocol="rest")
        assert value(parsed, count, code="OK", **ok_rest) == 7
        assert value(parsed, count, code="INVALID_ARGUMENT", **ok_rest) == 3
        assert value(parsed, count, model="nope", code="NOT_FOUND", protocol="rest") == 1
        assert value(parsed, count, model="half", protocol="grpc", api="predict", code="OK") == 5
        assert value(parsed, count, model="half", protocol="grpc", code="FAILED_PRECONDITION") == 1
        # failed requests are timed too, and histogram counts match the counters
        latency = "tensorflow_serving_request_latency_micros_count"
        assert value(parsed, latency, code="INVALID_ARGUMENT", **ok_rest) == 3
        assert value(parsed, latency, model="half", protocol="grpc", code="OK") == 5
        # TF Serving's own names and labels
        assert value(parsed, ":tensorflow:serving:request_count", model_name="half", status="OK") == 12
        assert value(parsed, ":tensorflow:serving:request_latency_count", model_name="half", API="Predict",
                     entrypoint="GRPC") == 5
        assert value(parsed, ":tensorflow:serving:request_latency_count", model_name="half", API="predict",
                     entrypoint="REST") == 7
        assert value(parsed, ":tensorflow:serving:runtime_latency_count", model_name="half", API="Predict",
                     runtime="TF1") == 12  # every successful model call, REST and gRPC
        # batching, load and state
        assert value(parsed, "tensorflow_serving_batch_size_count", model="half", version="123") == 12
        assert value(parsed, "tensorflow_serving_batching_queue_length", model="half", version="123") == 0
        assert value(parsed, "tensorflow_serving_model_load_time_seconds", model="half", version="123") > 0
        assert value(parsed, "tensorflow_serving_model_state", model="half", version="123", state="AVAILABLE") == 1
        assert value(parsed, "tensorflow_serving_requests_in_flight", protocol="rest") == 0
        assert value(parsed, "process_resident_memory_bytes") > 0 or not Path("/proc/self/stat").exists()
        assert "tensorflow_serving_gpu_utilization" not in r.text  # no GPU here: absent, not an error


def test_the_articles_metrics_port(testdata: Path) -> None:
    port = free_port()
    with run_server(model_options("half", testdata / "saved_model_half_plus_two_cpu", metrics_port=port)) as server:
        requests.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": [1.0]}, timeout=10)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert value(samples(text), "tensorflow_serving_request_count_total", model="half", code="OK") == 1
        assert requests.get(server.rest_url + PATH, timeout=10).status_code == 404  # not asked for there


def test_bulk_request_reports_and_cached_batch_series_after_a_version_is_forgotten() -> None:
    """A front end's report of many requests counts each one; series cached for speed go with a forgotten
    version and come back fresh (from zero) if the version serves again."""
    metrics = Metrics()
    rest = ("m", "1", "s", "predict", "rest", "OK")
    metrics.observe_requests([(*rest, 0.001)] * 3 + [("m", "1", "s", "predict", "grpc", "OK", 0.002),
                                                     ("m", "1", "s", "predict", "rest", "NOT_FOUND", 0.003)])
    metrics.observe_batch(model="m", version=1, pool="p", size=4, task_sizes=[1, 3], queued_s=[0.001, 0.002])
    parsed = samples(generate_latest(metrics.registry).decode())
    count = "tensorflow_serving_request_count_total"
    labels = dict(model="m", version="1", signature="s", api="predict")
    assert value(parsed, count, protocol="rest", code="OK", **labels) == 3
    assert value(parsed, count, protocol="grpc", code="OK", **labels) == 1
    assert value(parsed, count, code="NOT_FOUND", **labels) == 1
    assert value(parsed, "tensorflow_serving_request_latency_micros_count", protocol="rest", code="OK", **labels) == 3
    assert value(parsed, "tensorflow_serving_request_latency_micros_sum", protocol="rest",
                 code="OK", **labels) == pytest.approx(3000)
    assert value(parsed, ":tensorflow:serving:request_count", model_name="m", status="OK") == 4
    assert value(parsed, "tensorflow_serving_batch_queueing_latency_micros_count", model="m", version="1") == 2
    assert value(parsed, ":tensorflow:serving:batching_session:queuing_latency_count", thread_pool_name="p") == 2

    metrics.forget_version("m", 1, "/models/m/1")
    parsed = samples(generate_latest(metrics.registry).decode())
    assert value(parsed, count, **labels) == 0
    assert value(parsed, "tensorflow_serving_batch_size_count", model="m", version="1") == 0
    metrics.observe_requests([(*rest, 0.001)])  # a front end's report arriving late: it brings nothing back
    assert value(samples(generate_latest(metrics.registry).decode()), count, **labels) == 0

    metrics.observe_load(model="m", version=1, path="/models/m/1", seconds=0.1, ok=True)  # loaded again
    metrics.observe_batch(model="m", version=1, pool="p", size=2, task_sizes=[2], queued_s=[0.001])
    metrics.observe_requests([(*rest, 0.001)])
    parsed = samples(generate_latest(metrics.registry).decode())
    assert value(parsed, "tensorflow_serving_batch_size_count", model="m", version="1") == 1
    assert value(parsed, "tensorflow_serving_batch_queueing_latency_micros_count", model="m", version="1") == 1
    assert value(parsed, count, protocol="rest", code="OK", **labels) == 1
