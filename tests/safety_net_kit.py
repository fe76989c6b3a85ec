"""Helpers for the black-box safety-net tests: models whose latency is known, bounded polling, and readers for
what a server shows from outside (GET /v1/models, Prometheus text, listening sockets, open files)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import requests
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import RunningServer

_SLEEPY_CACHE: dict[tuple[Path, int, bool, int], Path] = {}


def export_sleepy_model(path: Path, sleep_ms: int, *, x_adds_ms: bool = False, slow_every: int = 1) -> None:
    """A SavedModel whose serving_default takes x: float32 [None] and returns y = x, after sleeping at least
    `sleep_ms` (a tf.data sleep: it waits without burning CPU, so its latency does not depend on the machine's
    load) on every `slow_every`-th call (a counter in the model; 1: every call). With `x_adds_ms`, it sleeps
    max(x[0], 0) ms longer: one request can be made slow on purpose. sleep_ms=0 without x_adds_ms is a plain
    identity."""
    from tensorflow.python.data.experimental.ops import testing as data_testing

    micros = int(sleep_ms * 1000)

    class Sleepy(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            if micros <= 0 and not x_adds_ms:
                return {"y": tf.identity(x)}
            sleep = tf.constant(micros, tf.int64)
            if slow_every > 1:
                calls = self.calls.assign_add(1)
                sleep = tf.where(calls % slow_every == 0, sleep, tf.constant(0, tf.int64))
            if x_adds_ms:
                sleep += tf.cast(tf.maximum(x[0], 0.0) * 1000, tf.int64)

            def slept() -> tf.Tensor:
                ds = tf.data.Dataset.from_tensors(tf.constant(0.0)).apply(data_testing.sleep(sleep))
                return x + ds.reduce(tf.constant(0.0), lambda acc, v: acc + v)

            # a tf.data pipeline costs milliseconds even with no sleep: skip it when there is nothing to wait for
            return {"y": tf.cond(sleep > 0, slept, lambda: tf.identity(x))}

    module = Sleepy()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def sleepy_version(root: Path, sleep_ms: int, target: Path, *, x_adds_ms: bool = False,
                   slow_every: int = 1) -> Path:
    """Copy a sleepy export (made once per `root`, latency and kind) to `target` (a version directory)."""
    key = (root, sleep_ms, x_adds_ms, slow_every)
    source = _SLEEPY_CACHE.get(key)
    if source is None:
        source = root / f"sleepy_{sleep_ms}ms_every_{slow_every}{'_plus_x' if x_adds_ms else ''}"
        export_sleepy_model(source, sleep_ms, x_adds_ms=x_adds_ms, slow_every=slow_every)
        _SLEEPY_CACHE[key] = source
    shutil.copytree(source, target)
    return target


def wait_for(predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition") -> object:
    """Poll `predicate` every 50 ms until it returns something truthy (returned); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.05)


def models_listing(server: RunningServer | str) -> dict[str, dict]:
    """pyserving's GET /v1/models, by model name."""
    url = server if isinstance(server, str) else server.rest_url
    body = requests.get(f"{url}/v1/models", timeout=10).json()
    return {m["name"]: m for m in body["models"]}


def split_of(server: RunningServer, model: str = "m") -> dict:
    return models_listing(server)[model]["traffic_split"]


def arm(split: dict, version: str) -> dict:
    return next(a for a in split["arms"] if a.get("version") == version)


def metric_value(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def grpc_predict(server: RunningServer, x: float = 1.0, *, model: str = "m", version: int | None = None,
                 metadata: tuple[tuple[str, str], ...] = (), timeout: float = 10,
                 shape: list[int] | None = None) -> int:
    """One gRPC Predict of x; returns the answering version (raises grpc.RpcError on failure)."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([x], shape=shape or [1]))
    return stub.Predict(request, timeout, metadata=metadata).model_spec.version.value


class Predictor:
    """A reusable gRPC stub for many sequential predicts (one channel)."""

    def __init__(self, server: RunningServer, model: str = "m", shape: list[int] | None = None) -> None:
        self.channel = server.channel()
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model
        self.shape = shape or [1]

    def __call__(self, x: float = 1.0, timeout: float = 10) -> int | str:
        """The answering version, or the status code name of a failure."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([x], shape=self.shape))
        try:
            return self.stub.Predict(request, timeout).model_spec.version.value
        except grpc.RpcError as exc:
            return exc.code().name

    def close(self) -> None:
        self.channel.close()


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process `pid` and its children (front-end processes) listen on (from /proc: their socket inodes in
    LISTEN state)."""
    import psutil

    inodes = set()
    for p in [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def open_files_under(directory: Path, pid: int | None = None) -> list[str]:
    """Files under `directory` that process `pid` (default: this one) has open."""
    pid = pid or os.getpid()
    prefix = str(directory.resolve())
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    return found
