"""Server-side batching through real servers: own rows back, padding and splitting invisible, full queues refuse."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import RunningServer, model_options, run_server
from pyserving.core.ids import ServableRequest
from pyserving.options import BatchingOptions


def batch_sizes(server: RunningServer, model: str) -> dict[int, int]:
    with server.server.manager.lease(ServableRequest(model)) as lease:
        assert lease.batcher is not None
        return dict(lease.batcher.batch_sizes)


def rest_predict(server: RunningServer, model: str, rows: list[float]) -> requests.Response:
    return requests.post(f"{server.rest_url}/v1/models/{model}:predict", json={"instances": rows}, timeout=30)


def grpc_predict(server: RunningServer, model: str, rows: list[float]) -> np.ndarray:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(rows, np.float32).reshape(-1, 1)))
    return tf.make_ndarray(stub.Predict(request, 30).outputs["y"]).reshape(-1)


def test_concurrent_requests_share_batches_and_get_their_own_rows(testdata: Path) -> None:
    batching = BatchingOptions(max_batch_size=16, batch_timeout_micros=50_000, num_batch_threads=1,
                               max_enqueued_batches=100)
    with run_server(model_options("m", testdata / "saved_model_half_plus_two_cpu", batching=batching)) as server:
        rng = np.random.default_rng(0)
        requests_rows = [list(map(float, rng.integers(0, 1000, size=1 + i % 4))) for i in range(40)]

        def call(i: int) -> tuple[list[float], list[float]]:
            rows = requests_rows[i]
            if i % 2:
                return rows, rest_predict(server, "m", rows).json()["predictions"]
            return rows, grpc_predict(server, "m", rows).tolist()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for rows, got in pool.map(call, range(len(requests_rows))):
                assert got == [0.5 * x + 2 for x in rows]
        sizes = batch_sizes(server, "m")
        assert sum(size * count for size, count in sizes.items()) == sum(len(r) for r in requests_rows)
        assert max(sizes) > 4, f"no batch held more than one request: {sizes}"


def test_padding_and_splitting_are_invisible(testdata: Path) -> None:
    batching = BatchingOptions(max_batch_size=16, batch_timeout_micros=1000, num_batch_threads=2,
                               allowed_batch_sizes=(2, 4), enable_large_batch_splitting=True,
                               max_execution_batch_size=4)
    with run_server(model_options("m", testdata / "saved_model_half_plus_two_cpu", batching=batching)) as server:
        rows = [float(x) for x in range(11)]
        assert rest_predict(server, "m", rows).json() == {"predictions": [0.5 * x + 2 for x in rows]}
        assert grpc_predict(server, "m", [7.0]).tolist() == [5.5]
        sizes = batch_sizes(server, "m")
        assert set(sizes) <= {2, 4}, f"a batch ran at a size that is not allowed: {sizes}"


def test_task_larger_than_max_batch_size_is_refused(testdata: Path) -> None:
    batching = BatchingOptions(max_batch_size=4)
    with run_server(model_options("m", testdata / "saved_model_half_plus_two_cpu", batching=batching)) as server:
        r = rest_predict(server, "m", [1.0] * 5)
        assert r.status_code == 400
        assert r.json() == {"error": "Task size 5 is larger than maximum input batch size 4"}
        with pytest.raises(grpc.RpcError) as info:
            grpc_predict(server, "m", [1.0] * 5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_full_queue_answers_unavailable_at_once(slow_model: Path) -> None:
    batching = BatchingOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    with run_server(model_options("slow", slow_model, batching=batching)) as server:
        url = f"{server.rest_url}/v1/models/slow:predict"
        slow_body = {"inputs": {"x": [1.0], "spins": [150_000]}}  # ~0.5 s each
        answers: list[requests.Response] = []
        busy = [threading.Thread(target=lambda: answers.append(requests.post(url, json=slow_body, timeout=30)))
                for _ in range(2)]
        for t in busy:  # the first runs, the second waits in the queue's only batch
            t.start()
            time.sleep(0.1)
        started = time.monotonic()
        refused = requests.post(url, json=slow_body, timeout=30)
        assert time.monotonic() - started < 0.3, "a full queue must refuse at once, not wait"
        assert refused.status_code == 503
        assert refused.json() == {"error": "The batch scheduling queue to which this task was submitted is full"}
        for t in busy:
            t.join(30)
        assert [a.status_code for a in answers] == [200, 200]


def test_per_model_batching_parameters(testdata: Path, tmp_path: Path) -> None:
    import shutil

    from pyserving.config.flags import FlagError, server_options

    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    (base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 3 }\n")
    other = tmp_path / "plain"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", other / "1")
    article = tmp_path / "article"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", article / "1")
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" }} '
        f'config {{ name: "plain" base_path: "{other}" model_platform: "tensorflow" }} '
        f'config {{ name: "article" base_path: "{article}" model_platform: "tensorflow" '
        "batching_parameters { max_batch_size: 16 batch_timeout_micros: 10000 num_batch_threads: 4 } } }"
    )
    options = server_options({"model_config_file": str(config), "enable_batching": True,
                              "enable_per_model_batching_parameters": True})
    with run_server(options) as server:
        assert rest_predict(server, "m", [1.0] * 4).json() == {"error": "Task size 4 is larger than maximum input batch size 3"}
        assert rest_predict(server, "plain", [1.0] * 40).status_code == 200  # no file: unbatched
        with server.server.manager.lease(ServableRequest("plain")) as lease:
            assert lease.batcher is None
        assert rest_predict(server, "article", [2.0]).json() == {"predictions": [3.0]}
        assert batch_sizes(server, "article") == {1: 1}

    # the same model batched two ways is a conflict that names both, not a silent choice
    (article / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 8 }\n")
    with pytest.raises(Exception, match="both a batching_parameters block in the model config and"):
        with run_server(server_options({"model_config_file": str(config), "enable_batching": True,
                                        "enable_per_model_batching_parameters": True,
                                        "max_num_load_retries": 0})):
            pass

    with pytest.raises(FlagError, match="--enable_batching"):
        server_options({"model_base_path": str(base), "batching_parameters_file": str(config)})


def test_warm_up_goes_through_the_batcher(testdata: Path, tmp_path: Path) -> None:
    import shutil

    from tensorflow_serving.apis import prediction_log_pb2

    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    (base / "1" / "assets.extra").mkdir()
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.model_spec.name = "m"
    record.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((3, 1), np.float32)))
    with tf.io.TFRecordWriter(str(base / "1" / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(2):
            writer.write(record.SerializeToString())
    batching = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8))
    with run_server(model_options("m", base, batching=batching)) as server:
        assert batch_sizes(server, "m") == {4: 2}  # two warm-up records of 3 rows, padded to 4
