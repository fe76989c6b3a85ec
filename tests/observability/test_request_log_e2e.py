"""Per-model request logging (TF Serving's logging_config) through a real server."""

from __future__ import annotations

from pathlib import Path

import orjson
import requests
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from conftest import run_server
from pyserving.config.flags import server_options


def serve_with_logging(testdata: Path, tmp_path: Path, rate: float, kind: str) -> object:
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "half" base_path: "{testdata / "saved_model_half_plus_two_cpu"}" '
        f'model_platform: "tensorflow" logging_config {{ sampling_config {{ sampling_rate: {rate} }} '
        f'log_collector_config {{ type: "{kind}" filename_prefix: "{tmp_path / "logs" / "half"}" }} }} }} }}'
    )
    return run_server(server_options({"model_config_file": str(config)}))


def test_every_request_is_logged_with_input_output_version_latency(testdata: Path, tmp_path: Path) -> None:
    with serve_with_logging(testdata, tmp_path, 1.0, "jsonl") as server:
        for i in range(20):
            requests.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": [float(i)]}, timeout=10)
        requests.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": ["bad"]}, timeout=10)
        requests.post(f"{server.rest_url}/v1/models/half:regress",
                      json={"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}, timeout=10)
        server.server.request_loggers.get("half").flush()
        lines = [orjson.loads(line) for f in sorted((tmp_path / "logs").iterdir()) for line in f.read_bytes().splitlines()]
    predicts = [r for r in lines if r["api"] == "predict" and r["code"] == "OK"]
    assert len(predicts) == 20
    for i, record in enumerate(sorted(predicts, key=lambda r: r["inputs"]["x"][0])):
        assert record["inputs"] == {"x": [float(i)]}
        assert record["outputs"] == {"y": [0.5 * i + 2]}
        assert record["version"] == 123 and record["latency_ms"] > 0 and record["protocol"] == "rest"
    assert [r["code"] for r in lines if r["api"] == "predict" and r["code"] != "OK"] == ["INVALID_ARGUMENT"]
    assert [r["results"] for r in lines if r["api"] == "regress"] == [[3.0]]


def test_a_tenth_is_sampled_into_tf_serving_prediction_logs(testdata: Path, tmp_path: Path) -> None:
    n = 600
    with serve_with_logging(testdata, tmp_path, 0.1, "tfrecord") as server:
        session = requests.Session()
        for _ in range(n):
            session.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": [1.0]}, timeout=10)
        server.server.request_loggers.get("half").flush()
        records = [prediction_log_pb2.PredictionLog.FromString(r) for f in (tmp_path / "logs").iterdir()
                   for r in tf.compat.v1.io.tf_record_iterator(str(f))]
    tolerance = 4.5 * (n * 0.1 * 0.9) ** 0.5
    assert abs(len(records) - n * 0.1) <= tolerance, len(records)
    assert all(r.predict_log.request.model_spec.name == "half" for r in records)
    assert all(r.log_metadata.model_spec.version.value == 123 for r in records)
