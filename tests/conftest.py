"""Shared fixtures: real servers on 127.0.0.1 ephemeral ports, TF Serving's own test models, real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import requests

from pyserving.config.cpus import default_frontend_processes
from pyserving.options import ModelConfig, ServerOptions
from pyserving.server import Server

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PYSERVING_SHARED", REPO.parent / "shared"))
TESTDATA = SHARED / "testdata" / "tfserving"
FRONTEND_PROCESSES = int(os.environ.get("PYSERVING_TEST_FRONTEND_PROCESSES", "0"))
"""Set (e.g. 2) to run every in-process server of the suite with --frontend_processes, as tests/multiproc does."""
PROCESS_LAYOUTS = sorted({0, default_frontend_processes()})
"""--frontend_processes values a test of the whole server's behaviour runs under: one process, and the command
line's default (one front end per core; the same 0 on a one-core machine)."""
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    server: Server
    rest_url: str
    grpc_target: str

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target, options=GRPC_OPTIONS)


@contextmanager
def run_server(options: ServerOptions) -> Iterator[RunningServer]:
    """Run a pyserving Server in its own thread and event loop, on 127.0.0.1, until the block ends."""
    if options.rest_api_port == 8501 or options.grpc_port == 8500:
        options = replace(options, rest_api_port=free_port(), grpc_port=free_port())
    options = replace(options, host="127.0.0.1", shutdown_grace_s=2.0)
    if FRONTEND_PROCESSES and not options.frontend_processes:  # the same tests through front-end processes
        options = replace(options, frontend_processes=FRONTEND_PROCESSES)
    loop = asyncio.new_event_loop()
    server_box: list[Server] = []
    started = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        server = Server(options)
        server_box.append(server)
        try:
            await server.start()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        await server.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(120):
        raise TimeoutError("server did not start within 120 s")
    if failure:
        thread.join(10)
        raise failure[0]
    server = server_box[0]
    try:
        yield RunningServer(server, f"http://127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}")
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        thread.join(30)
        loop.close()


@contextmanager
def serve_subprocess(
    flags: list[str], stderr: Path, ready: Callable[[], bool], timeout_s: float = 120,
    command: Sequence[str] = (sys.executable, "-m", "pyserving"),
) -> Iterator[subprocess.Popen[bytes]]:
    """`pyserving serve FLAGS` as its own process (stderr to a file), once `ready()` holds; SIGTERM (then SIGKILL)
    when the block ends. `ready` may raise requests.ConnectionError while the server is still starting."""
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([*command, "serve", *flags], stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ready():
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the server did not come up in {timeout_s:g} s"
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def model_options(name: str, base_path: Path | str, **kw: object) -> ServerOptions:
    return ServerOptions(models=(ModelConfig(name=name, base_path=str(base_path)),), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.fail(f"TF Serving test data not found at {TESTDATA}; set PYSERVING_SHARED to the shared/ directory")
    return TESTDATA


@pytest.fixture(scope="session")
def tf1_server(testdata: Path) -> Iterator[RunningServer]:
    """saved_model_half_plus_two_cpu served as "default", as TF Serving's own tests serve it."""
    with run_server(model_options("default", testdata / "saved_model_half_plus_two_cpu")) as running:
        yield running


@pytest.fixture(scope="session")
def tf2_server(testdata: Path) -> Iterator[RunningServer]:
    with run_server(model_options("default", testdata / "saved_model_half_plus_two_tf2_cpu")) as running:
        yield running


def export_slow_model(base_path: Path, version: int = 1) -> Path:
    """A SavedModel whose serving_default spins max(`spins`) loop iterations (~3 us each) and returns y = x.
    Both inputs are batched ([None]), so it can be served with batching."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="spins")])
        def spin(self, x: tf.Tensor, spins: tf.Tensor) -> dict[str, tf.Tensor]:
            n = tf.reduce_max(spins)
            _, acc = tf.while_loop(lambda i, acc: i < n, lambda i, acc: (i + 1, acc * 0.5 + 1.0),
                                   [tf.constant(0, tf.int64), tf.zeros_like(x)])
            return {"y": x + 0.0 * acc}

    module = Slow()
    target = base_path / str(version)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.spin})
    return target


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slow")
    export_slow_model(base)
    return base


def export_picky_model(path: Path) -> None:
    """half_plus_two that refuses x >= 0.5 (INVALID_ARGUMENT, from a tf.debugging.assert in the graph): a canary
    that fails on half of uniform inputs, for rollback tests."""
    import tensorflow as tf

    class Picky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            check = tf.debugging.assert_less(x, 0.5, message="picky candidate refuses x >= 0.5")
            with tf.control_dependencies([check]):
                return {"y": x * 0.5 + 2.0}

    module = Picky()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
