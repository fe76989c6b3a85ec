"""Deadlines: REST's --rest_api_timeout_in_ms and the gRPC client's deadline end a slow request in time, batched
or not."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import model_options, run_server
from pyserving.options import BatchingOptions

SPINS_PER_SECOND = 300_000


@pytest.mark.parametrize("batching", [None, BatchingOptions(max_batch_size=8, num_batch_threads=1)],
                         ids=["unbatched", "batched"])
def test_rest_timeout_and_grpc_deadline(slow_model: Path, batching: BatchingOptions | None) -> None:
    with run_server(model_options("slow", slow_model, rest_api_timeout_ms=300, batching=batching)) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "slow"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
        # A cold first call can take longer than 300 ms on a busy machine: warm the model up over gRPC, which has
        # no server-side budget, so the REST calls below are judged warm.
        request.inputs["spins"].CopyFrom(tf.make_tensor_proto([10], dtype=tf.int64))
        assert list(tf.make_ndarray(stub.Predict(request, timeout=60).outputs["y"])) == [1.0]

        fast = requests.post(server.rest_url + "/v1/models/slow:predict",
                             json={"inputs": {"x": [1.0], "spins": [10]}}, timeout=30)
        assert fast.status_code == 200, fast.text
        assert fast.json() == {"outputs": [1.0]}

        started = time.monotonic()
        slow = requests.post(server.rest_url + "/v1/models/slow:predict",
                             json={"inputs": {"x": [1.0], "spins": [3 * SPINS_PER_SECOND]}}, timeout=30)
        assert slow.status_code == 504, slow.text
        assert "--rest_api_timeout_in_ms" in slow.json()["error"]
        assert time.monotonic() - started < 2.5

        request.inputs["spins"].CopyFrom(tf.make_tensor_proto([3 * SPINS_PER_SECOND], dtype=tf.int64))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.5

        # The expired calls' batch thread (or worker) comes back: a later request is answered.
        request.inputs["spins"].CopyFrom(tf.make_tensor_proto([10], dtype=tf.int64))
        assert list(tf.make_ndarray(stub.Predict(request, timeout=60).outputs["y"])) == [1.0]
