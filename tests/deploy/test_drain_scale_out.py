"""Draining and scaling out, for real: `pyserving serve` subprocesses under a bounded closed-loop stream of REST and
gRPC predicts (a few client threads, each request taking DELAY_MS in the "memory" model), stopped with SIGTERM, and
three replicas behind Debian's nginx serving a copy of deploy/nginx/pyserving.conf, restarted one by one or
SIGKILLed under load.

What the server did with each request is read from its own request log (every predict is logged, JSON lines,
closed when the server exits) rather than guessed from the client: the input of request N is the float N, so a
client-side failure can be told apart from a request the server accepted and then lost. Each replica's model adds
its own offset, so every answer also says which replica computed it.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import FRONTEND_PROCESSES, free_port
from pyserving.codecs.tfserving.protos import predict_pb2
from pyserving.config.cpus import default_frontend_processes
from pyserving.config.flags import FlagError, parse_flags, server_options
from pyserving.runtimes.memory import write_model
from test_nginx import (HOSTNAME, SHIPPED_CONF, TEST_KEY, Tls, nginx_process, shipped_paths, substitute, tls,
                        write_keys)

__all__ = ["tls"]  # the module-scoped certificate fixture, shared with test_nginx

REPO = Path(__file__).resolve().parents[2]
DELAY_MS = 200
OFFSET = 100_000.0
FRONTEND_FLAGS = [f"--frontend_processes={FRONTEND_PROCESSES}"] if FRONTEND_PROCESSES else []
"""PYSERVING_TEST_FRONTEND_PROCESSES=N runs these replicas with N front-end processes; without it they run with
the default (one per core: config/cpus.py), as a user's `pyserving serve` does."""
FRONTEND_PROCESSES_IN_USE = FRONTEND_PROCESSES or default_frontend_processes()
"""Replica r answers x + r * OFFSET: exact in float32 for the ids and replica numbers used here (< 2**24)."""
TIMEOUT = 30
PREDICT = "/tensorflow.serving.PredictionService/Predict"
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}
GRACE_S = 10.0  # --shutdown_grace_s, pyserving's default


# --- replicas ---------------------------------------------------------------------------------------------------


@dataclass
class Replica:
    """One `pyserving serve` process on fixed ports (so that it comes back where nginx expects it)."""

    number: int
    directory: Path
    flags: tuple[str, ...] = ()
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def rest(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        self.runs += 1
        model = self.directory / "m"
        write_model(str(model / "1"), {"signatures": SIGNATURES, "function": "affine", "scale": 1.0,
                                       "offset": self.number * OFFSET, "delay_ms": DELAY_MS})
        config = self.directory / "models.config"
        config.write_text(
            f'model_config_list {{ config {{ name: "m" base_path: "{model}" model_platform: "memory" '
            f'logging_config {{ sampling_config {{ sampling_rate: 1.0 }} log_collector_config {{ type: "jsonl" '
            f'filename_prefix: "{self.directory / "requests" / f"run{self.runs}"}" }} }} }} }}\n')
        stderr = open(self.directory / f"stderr.run{self.runs}.log", "wb")
        with stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyserving", "serve", f"--port={self.grpc_port}",
                 f"--rest_api_port={self.rest_port}", "--host=127.0.0.1", f"--model_config_file={config}",
                 "--file_system_poll_wait_seconds=0", *FRONTEND_FLAGS, *self.flags],
                stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
            )

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while readyz(self.rest_port)[0] != "200":
            assert self.proc is not None and self.proc.poll() is None, f"replica {self.number} exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"replica {self.number} not ready in {timeout_s} s:\n{self.log()}"
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        return (self.directory / f"stderr.run{self.runs}.log").read_text(errors="replace")[-4000:]

    def handled(self) -> dict[int, tuple[str, str]]:
        """Request id -> (protocol, code) of every predict this replica finished, from its request logs."""
        out: dict[int, tuple[str, str]] = {}
        for path in sorted((self.directory / "requests").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                out[int(record["inputs"]["x"][0])] = (record["protocol"], record["code"])
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def replicas(directory: Path, count: int, *flags: str) -> Iterator[list[Replica]]:
    started = [Replica(i + 1, directory / f"replica{i + 1}", flags) for i in range(count)]
    try:
        for replica in started:
            replica.directory.mkdir(parents=True)
            replica.start()
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def readyz(port: int) -> tuple[str, str, str]:
    """GET /readyz on a fresh connection: ("200" | "503", body, Connection header), ("refused", "", "") when nothing
    listens, ("reset", "", "") when the connection was taken and then closed unanswered (the listener closing
    under it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.connect()
    except ConnectionRefusedError:
        return "refused", "", ""
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        return str(response.status), response.read().decode(), response.getheader("Connection", "")
    except (ConnectionResetError, BrokenPipeError):  # http.client.RemoteDisconnected is a ConnectionResetError
        return "reset", "", ""
    finally:
        conn.close()


# --- clients ----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as its client saw it. kind: "ok" (200 / OK with the right answer); "refused" (the connection
    was refused before anything was sent); "unanswered" (sent, but not answered: a REST connection closed with no
    byte of an answer, a gRPC call CANCELLED though the client did not cancel it); "error" (anything else: an
    HTTP error status, another gRPC error, a wrong answer). Whether an unanswered request was run is for the
    server's request log to say."""

    id: int
    protocol: str
    kind: str
    detail: str
    replica: int | None
    started: float
    ended: float
    caller: int = -1


_ids = itertools.count(1)


class RestCaller:
    """TF Serving REST predicts on one kept-alive connection (reopened when the server says Connection: close)."""

    protocol = "rest"

    def __init__(self, port: int, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None):
        self.port = port
        self.context = context
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.conn: http.client.HTTPConnection | None = None

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, rid: int) -> Outcome:
        started = time.monotonic()

        def outcome(kind: str, detail: str, replica: int | None = None) -> Outcome:
            return Outcome(rid, "rest", kind, detail, replica, started, time.monotonic())

        phase = "connect"
        try:
            if self.conn is None:
                conn = (http.client.HTTPSConnection("127.0.0.1", self.port, timeout=TIMEOUT, context=self.context)
                        if self.context is not None else
                        http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT))
                conn.connect()
                self.conn = conn
            phase = "send"
            self.conn.request("POST", "/v1/models/m:predict", json.dumps({"instances": [float(rid)]}), self.headers)
            phase = "receive"
            response = self.conn.getresponse()
            body = response.read()
            if response.will_close:
                self._close()
        except ConnectionRefusedError as exc:
            self._close()
            return outcome("refused" if phase == "connect" else "error", f"{phase}: {exc!r}")
        except (ConnectionResetError, BrokenPipeError) as exc:  # includes http.client.RemoteDisconnected
            self._close()
            return outcome("unanswered" if phase != "connect" else "error", f"{phase}: {exc!r}")
        except Exception as exc:  # noqa: BLE001  (recorded, and asserted on by the tests)
            self._close()
            return outcome("error", f"{phase}: {exc!r}")
        if response.status != 200:
            return outcome("error", f"HTTP {response.status} {body[:200]!r}")
        return answer(rid, json.loads(body)["predictions"][0], outcome)


class GrpcCaller:
    """TF Serving gRPC predicts on one channel."""

    protocol = "grpc"

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None,
                 metadata: tuple[tuple[str, str], ...] = (), service_config: str | None = None):
        options = [("grpc.ssl_target_name_override", HOSTNAME)] if credentials is not None else []
        if service_config is not None:
            options.append(("grpc.service_config", service_config))
        self.channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
                        else grpc.insecure_channel(target))
        self.predict = self.channel.unary_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                                response_deserializer=predict_pb2.PredictResponse.FromString)
        self.metadata = metadata

    def call(self, rid: int) -> Outcome:
        started = time.monotonic()

        def outcome(kind: str, detail: str, replica: int | None = None) -> Outcome:
            return Outcome(rid, "grpc", kind, detail, replica, started, time.monotonic())

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].dtype = 1  # DT_FLOAT
        request.inputs["x"].tensor_shape.dim.add(size=1)
        request.inputs["x"].float_val.append(float(rid))
        try:
            response = self.predict(request, timeout=TIMEOUT, metadata=self.metadata or None)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            # grpc-core's words when it could not open a connection: nothing of this call was sent.
            refused = code == grpc.StatusCode.UNAVAILABLE and re.search(r"failed to connect|Connection refused",
                                                                         details)
            # grpc-core cancels the calls that have arrived but that no handler has taken yet when the server
            # stops (they are not run): the client sees CANCELLED for a call it did not cancel.
            unanswered = code == grpc.StatusCode.CANCELLED
            kind = "refused" if refused else "unanswered" if unanswered else "error"
            return outcome(kind, f"{code.name}: {details}")
        return answer(rid, response.outputs["y"].float_val[0], outcome)

    def close(self) -> None:
        self.channel.close()


def answer(rid: int, value: float, outcome: Callable[..., Outcome]) -> Outcome:
    replica, rest = divmod(value - rid, OFFSET)
    if rest != 0 or replica < 1:
        return outcome("error", f"wrong answer {value} to {rid}")
    return outcome("ok", "", int(replica))


class Load:
    """Closed-loop callers, one thread each, until `stop()` or `limit` requests each. After a failure a caller
    pauses briefly, so that a closed port is not hammered."""

    def __init__(self, callers: list[RestCaller | GrpcCaller], limit: int = 400) -> None:
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i, c, limit), daemon=True)
                         for i, c in enumerate(callers)]
        self._callers = callers
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int, caller: RestCaller | GrpcCaller, limit: int) -> None:
        for _ in range(limit):
            if self._stop.is_set():
                return
            outcome = caller.call(next(_ids))
            outcome.caller = index
            self.outcomes.append(outcome)
            if outcome.kind != "ok":
                time.sleep(0.05)

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "ok"]

    def wait_for(self, count: int, timeout_s: float = 30) -> None:
        """Until `count` more requests have succeeded."""
        target = len(self.ok()) + count
        deadline = time.monotonic() + timeout_s
        while len(self.ok()) < target:
            assert time.monotonic() < deadline, f"load stalled: {Counter(o.kind for o in self.outcomes)}"
            time.sleep(0.02)

    def stop(self) -> list[Outcome]:
        """Stop the callers (idempotent) and return every outcome, in the order the requests started."""
        if not self._stop.is_set():
            self._stop.set()
            for thread in self._threads:
                thread.join(TIMEOUT + 10)
            for caller in self._callers:
                if isinstance(caller, GrpcCaller):
                    caller.close()
        return sorted(self.outcomes, key=lambda o: o.started)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # also when a test fails midway: no caller outlives its test


def summary(outcomes: list[Outcome]) -> dict[str, Counter[str]]:
    return {p: Counter(o.kind for o in outcomes if o.protocol == p) for p in ("rest", "grpc")}


# --- the flag ---------------------------------------------------------------------------------------------------


def test_drain_delay_flag() -> None:
    base = ["--model_base_path=/models/m"]
    assert server_options(parse_flags([*base, "--drain_delay_s=2.5"])[0]).drain_delay_s == 2.5
    assert server_options(parse_flags(base)[0]).drain_delay_s == 0.0
    with pytest.raises(FlagError, match="drain_delay_s"):
        server_options(parse_flags([*base, "--drain_delay_s=-1"])[0])


def test_shutdown_grace_flag() -> None:
    base = ["--model_base_path=/models/m"]
    assert server_options(parse_flags([*base, "--shutdown_grace_s=2.5"])[0]).shutdown_grace_s == 2.5
    assert server_options(parse_flags(base)[0]).shutdown_grace_s == GRACE_S
    with pytest.raises(FlagError, match="shutdown_grace_s"):
        server_options(parse_flags([*base, "--shutdown_grace_s=-1"])[0])


def test_a_request_past_the_shutdown_grace_gets_503_and_why(tmp_path: Path) -> None:
    """--shutdown_grace_s=1 and a 6 s request in flight at SIGTERM: about a second later its caller gets 503 with
    TF Serving's error shape, saying the server shut down and to retry (uvicorn alone answered a bare "500
    Internal Server Error"); the process exits 0 once the model call it cannot interrupt has returned."""
    write_model(str(tmp_path / "slow" / "1"), {"signatures": SIGNATURES, "function": "affine", "scale": 1.0,
                                               "offset": 0.0, "delay_ms": 6000})
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "slow" base_path: "{tmp_path / "slow"}" '
                      'model_platform: "memory" } }\n')
    rest_port = free_port()
    with open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyserving", "serve", f"--port={free_port()}", f"--rest_api_port={rest_port}",
             "--host=127.0.0.1", f"--model_config_file={config}", "--shutdown_grace_s=1", *FRONTEND_FLAGS],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while readyz(rest_port)[0] != "200":
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
            time.sleep(0.05)
        answers: list[tuple[int, dict[str, str], float]] = []

        def call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=TIMEOUT)
            conn.request("POST", "/v1/models/slow:predict", body=b'{"instances": [1.0]}')
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read()), time.monotonic()))

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.7)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        caller.join(TIMEOUT)
        status, body, at = answers[0]
        assert status == 503, body
        assert body == {"error": "The server is shutting down, and this request did not finish within its shutdown "
                                 "grace period (--shutdown_grace_s=1). Retry it: another replica, or this one once "
                                 "restarted, will answer."}
        assert at - signalled < 4, at - signalled  # the grace (1 s), not the request's 6 s
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- 1. drain ---------------------------------------------------------------------------------------------------


def health(stub: health_pb2_grpc.HealthStub) -> str:
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)
    except grpc.RpcError as exc:
        return exc.code().name


def collapse(sequence: list[str]) -> list[tuple[str, int]]:
    """["a", "a", "b"] -> [("a", 2), ("b", 1)]."""
    return [(key, len(list(group))) for key, group in itertools.groupby(sequence)]


def test_sigterm_drains_readiness_first_and_loses_no_accepted_request(tmp_path: Path) -> None:
    """SIGTERM mid-stream (2 REST and 2 gRPC callers, 200 ms a request, --drain_delay_s=1): /readyz turns 503
    (and gRPC health NOT_SERVING) at once while requests are still served; after the delay the listeners close,
    the requests in flight finish with 200 / OK, and the process exits 0 within the grace period. Every request
    the server handled (its request log) got its answer. Every other request was refused at connect (nothing
    sent), or, rarely, sent but never run: a REST connection the server had taken but not read when its listener
    closed, closed unanswered; a gRPC call that had arrived but that no handler had taken, CANCELLED by grpc-core.
    Those must be absent from the server's log.

    Observed (nine runs): /readyz 200 x3, then 503 x200-500, then refused x500-1500 (in 3 runs one `reset`
    between 503 and refused); gRPC health likewise SERVING, NOT_SERVING, UNAVAILABLE (once a CANCELLED check
    between the last two); first 503 0-6 ms after SIGTERM, listeners closed 1.02-1.06 s and exit 1.2-1.55 s after
    it, rc 0; 28-32 requests answered, all of them in the server's log, 2-4 of them in flight as the listeners
    closed; no request unanswered; the refusals are the callers meeting the closed ports afterwards."""
    drain_delay_s = 1.0
    with ExitStack() as stack:
        served, = stack.enter_context(replicas(tmp_path, 1, f"--drain_delay_s={drain_delay_s}",
                                               "--enable_grpc_healthcheck_service"))
        health_channel = grpc.insecure_channel(served.grpc)
        health_stub = health_pb2_grpc.HealthStub(health_channel)
        assert health(health_stub) == "SERVING"
        load = stack.enter_context(Load([RestCaller(served.rest_port), RestCaller(served.rest_port),
                                         GrpcCaller(served.grpc), GrpcCaller(served.grpc)]))
        load.wait_for(8)
        before = [(time.monotonic(), *readyz(served.rest_port), health(health_stub)) for _ in range(3)]
        sigterm_at = time.monotonic()
        served.signal(signal.SIGTERM)
        answers: list[tuple[float, str, str, str, str]] = []  # (time, /readyz status, body, Connection, gRPC health)
        deadline = sigterm_at + drain_delay_s + GRACE_S + 20
        while served.proc.poll() is None and time.monotonic() < deadline:
            answers.append((time.monotonic(), *readyz(served.rest_port), health(health_stub)))
        rc = served.wait(max(deadline - time.monotonic(), 1))
        exited_at = time.monotonic()
        time.sleep(0.3)  # the callers meet the closed ports
        outcomes = load.stop()
        health_channel.close()
        handled = served.handled()
        stderr = served.log()

    answers = before + answers
    ready_seq = collapse([a[1] for a in answers])
    health_seq = collapse([a[4] for a in answers])
    first_503 = next(a[0] for a in answers if a[1] == "503") - sigterm_at
    closed_at = next((a[0] for a in answers if a[1] in ("refused", "reset")), exited_at)
    drained = [o for o in outcomes if o.kind == "ok" and o.started < closed_at < o.ended]
    print(f"\n/readyz around SIGTERM: {ready_seq}\ngRPC health around SIGTERM: {health_seq}\n"
          f"first 503 {first_503 * 1000:.0f} ms after SIGTERM; listeners closed {(closed_at - sigterm_at):.2f} s, "
          f"exit {(exited_at - sigterm_at):.2f} s after SIGTERM (rc {rc})\n"
          f"requests: {summary(outcomes)}; {len(drained)} in flight when the listeners closed, all answered\n"
          f"server handled {len(handled)} predicts: {Counter(handled.values())}\n"
          + "".join(f"  {o}\n" for o in outcomes if o.kind not in ("ok", "refused")))

    assert rc == 0, stderr
    assert exited_at - sigterm_at < drain_delay_s + GRACE_S, "did not exit within the grace period"
    assert "timeout graceful shutdown exceeded" not in stderr, stderr
    # 200... 503... then closed (refused, or a connection taken and closed as the listener went): never closed
    # before 503, never ready again after it.
    kinds = [r for r, _ in ready_seq]
    assert kinds[0] == "200" and "503" in kinds, ready_seq
    assert set(kinds) <= {"200", "503", "refused", "reset"}, ready_seq
    first_closed = next((i for i, k in enumerate(kinds) if k in ("refused", "reset")), len(kinds))
    assert kinds.index("503") < first_closed and "200" not in kinds[kinds.index("503"):], ready_seq
    if not FRONTEND_PROCESSES_IN_USE:
        assert "503" not in kinds[first_closed:], ready_seq
    # else each front-end process closes its own listener: one that still listens answers 503 after another has
    # gone (SO_REUSEPORT sends the next connection to it); never 200
    # gRPC health turned with /readyz: never SERVING once /readyz said 503 (health turns first; the gRPC port may
    # close up to uvicorn's 0.1 s tick before the REST one), NOT_SERVING, then gone.
    assert all(a[4] != "SERVING" for a in answers if a[1] == "503"), health_seq
    # The 503 says why, and every answer while draining ends its connection (clients reconnect, rather than race
    # the listener's close on a kept-alive one).
    draining = [a for a in answers if a[1] == "503"]
    assert all(json.loads(a[2]) == {"status": "draining", "reason": "shutting down (SIGTERM)"} for a in draining)
    assert all(a[3].lower() == "close" for a in draining) and all(a[3] == "" for a in answers if a[1] == "200")
    assert health_seq[0][0] == "SERVING" and health_seq[1][0] == "NOT_SERVING", health_seq
    assert "SERVING" not in [h for h, _ in health_seq][[h for h, _ in health_seq].index("NOT_SERVING"):], health_seq

    # No accepted request lost: what the server handled is exactly what the clients got answers for, all OK.
    assert not [o for o in outcomes if o.kind == "error"], [o for o in outcomes if o.kind == "error"]
    ok = {o.id: o.protocol for o in outcomes if o.kind == "ok"}
    assert {i: p for i, (p, _) in handled.items()} == ok
    assert set(code for _, code in handled.values()) == {"OK"}
    lost = [o for o in outcomes if o.kind in ("refused", "unanswered") and o.id in handled]
    assert not lost, lost
    # The drain was exercised: requests were in flight when the listeners closed, and finished.
    assert drained, f"no request was in flight when the listeners closed: {ready_seq}"


# --- 2. scale-out behind nginx ----------------------------------------------------------------------------------


@dataclass
class Balancer:
    directory: Path
    process: subprocess.Popen[bytes]
    https_port: int
    grpc_port: int
    context: ssl.SSLContext
    credentials: grpc.ChannelCredentials

    def callers(self, rest: int = 2, grpc_: int = 2, grpc_retry: bool = False) -> list[RestCaller | GrpcCaller]:
        """`grpc_retry`: the gRPC callers' channels carry the retry policy deploy/nginx/README.md gives."""
        auth = {"Authorization": f"Bearer {TEST_KEY}"}
        metadata = (("authorization", auth["Authorization"]),)
        service_config = readme_retry_policy() if grpc_retry else None
        return [*(RestCaller(self.https_port, self.context, auth) for _ in range(rest)),
                *(GrpcCaller(f"127.0.0.1:{self.grpc_port}", self.credentials, metadata, service_config)
                  for _ in range(grpc_))]

    def error_log(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")

    def access_log(self) -> list[str]:
        return (self.directory / "pyserving.access.log").read_text(errors="replace").splitlines()


def readme_retry_policy() -> str:
    """The gRPC service config of deploy/nginx/README.md ("Several replicas"), read from it: the test runs what the
    README tells users to write."""
    readme = (REPO / "deploy" / "nginx" / "README.md").read_text()
    match = re.search(r"^retry = json\.dumps\((\{.*?\})\)$", readme, re.M | re.S)
    assert match, "deploy/nginx/README.md no longer has `retry = json.dumps({...})`; update this test"
    policy = json.loads(match.group(1))  # the README writes it as a Python literal that is also JSON
    assert policy["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"], policy
    return json.dumps(policy)


def spread(text: str, port: int, replicas: list[Replica], address: Callable[[Replica], str]) -> str:
    """The shipped upstream's one `server 127.0.0.1:PORT ...;` line, once per replica (parameters kept)."""
    pattern = re.compile(rf"^(\s*)server 127\.0\.0\.1:{port}\b([^;]*);", re.M)
    match = pattern.search(text)
    assert match, f"deploy/nginx/pyserving.conf no longer has `server 127.0.0.1:{port} ...;`; update this test"
    indent, params = match.group(1), match.group(2)
    lines = "\n".join(f"{indent}server {address(r)}{params};" for r in replicas)
    return text[:match.start()] + lines + text[match.end():]


@contextmanager
def balancer(directory: Path, tls: Tls, replicas: list[Replica],
             edit: Callable[[str], str] = lambda text: text) -> Iterator[Balancer]:
    """nginx serving a copy of the shipped conf, its upstreams spread over `replicas`, on free 127.0.0.1 ports."""
    directory.mkdir(parents=True, exist_ok=True)
    https_port, grpc_port, http_port = free_port(), free_port(), free_port()
    keys_file = directory / "api-keys.map"
    write_keys(keys_file, {TEST_KEY: "load"})
    text = spread(SHIPPED_CONF.read_text(), 8501, replicas, lambda r: r.rest)
    text = spread(text, 8500, replicas, lambda r: r.grpc)
    text = substitute(edit(text), {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen 8443 ssl http2;": f"listen 127.0.0.1:{grpc_port} ssl http2;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        **shipped_paths(directory, tls, keys_file),
    })
    site = directory / "pyserving.conf"
    site.write_text(text)
    with nginx_process(directory, site, [https_port, grpc_port, http_port]) as process:
        context = ssl.create_default_context(cafile=str(tls.ca_pem))
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem.read_bytes())
        yield Balancer(directory, process, https_port, grpc_port, context, credentials)


ERROR_LOG_EVENTS = {
    "GOAWAY": "upstream sent goaway",
    "connect refused": "connect() failed (111: Connection refused) while connecting to upstream",
    "closed before the header": "upstream prematurely closed connection while reading response header",
    "reset": "(104: Connection reset by peer)",
    "temporarily disabled": "upstream server temporarily disabled",
    "no live upstreams": "no live upstreams",
}


def error_log_events(text: str) -> dict[str, Counter[str]]:
    """What nginx's error log says went wrong with upstreams, by event and by the upstream it names."""
    out: dict[str, Counter[str]] = {}
    for line in text.splitlines():
        for event, words in ERROR_LOG_EVENTS.items():
            if words in line:
                upstream = re.search(r'upstream: "[a-z]+://([0-9.:]+)', line)
                out.setdefault(event, Counter())[upstream.group(1) if upstream else "?"] += 1
    return out


@dataclass
class Proxied:
    """One access-log line: a request as nginx passed it on."""

    protocol: str
    status: int
    upstreams: list[str]
    upstream_statuses: list[str]


def proxied(access_log: list[str]) -> list[Proxied]:
    out = []
    for line in access_log:
        m = re.search(r'"POST (\S+) [^"]*" (\d+) .* upstream="([^"]*)" upstream_status="([^"]*)"', line)
        if m:
            out.append(Proxied("grpc" if m.group(1) == PREDICT else "rest", int(m.group(2)),
                               m.group(3).split(", "), m.group(4).split(", ")))
    return out


def test_rolling_restart_behind_nginx_fails_no_request(tmp_path: Path, tls: Tls) -> None:
    """Three replicas behind the shipped nginx conf under closed-loop load (2 REST, 2 gRPC callers, 200 ms a
    request; the gRPC channels with the retry policy of deploy/nginx/README.md): each in turn SIGTERMed, waited for
    (exit 0), started again and waited for (/readyz 200) before the next. No request fails, and each replica takes
    traffic again once back.

    Observed (eleven runs, one beside two CPU-bound processes): each replica exits 0.2-0.6 s after SIGTERM and is
    ready 0.6-4.6 s after it is started; 76-217 requests a run, none failed; nginx's error log has only "connect()
    failed (111: Connection refused)" (2-10 per stopped port), and each of those requests was sent on to another
    replica and answered (access log upstream_status="502, 200"; 16-62 a run). Nothing was cut mid-request: the
    draining replica finished what it had.
    Without the retry policy a gRPC call that crosses a replica's shutdown can fail, as nginx never sends a gRPC
    call twice: one CI run of this test (before the policy) had one call fail UNAVAILABLE "pyserving is not
    reachable behind the proxy" (nginx: "recv() failed (104: Connection reset by peer)"); with 2 replicas, 8 gRPC
    callers and 5 ms a call, 16 of 31,052 calls over 20 restarts came back CANCELLED (grpc-core cancels a call
    that arrives as the server shuts down; it was never run). With the policy: 0 of 29,707 failed. REST needs no
    client help: nginx resends (non_idempotent)."""
    with (replicas(tmp_path, 3) as reps, balancer(tmp_path / "nginx", tls, reps) as lb,
          Load(lb.callers(grpc_retry=True)) as load):
        load.wait_for(8)
        restarts = []
        back_at = {}
        for replica in reps:
            t0 = time.monotonic()
            replica.signal(signal.SIGTERM)
            rc = replica.wait(GRACE_S + 10)
            assert rc == 0, replica.log()
            t1 = time.monotonic()
            replica.start()
            replica.wait_ready()
            back_at[replica.number] = time.monotonic()
            restarts.append((replica.number, round(t1 - t0, 2), round(back_at[replica.number] - t1, 2)))
            load.wait_for(4)
        load.wait_for(8)
        outcomes = load.stop()
        events = error_log_events(lb.error_log())
        access = proxied(lb.access_log())
    failures = [o for o in outcomes if o.kind != "ok"]
    resent = [p for p in access if len(p.upstreams) > 1]
    print(f"\nrestarts (replica, s to exit after SIGTERM, s to ready after start): {restarts}\n"
          f"requests: {summary(outcomes)}\n"
          f"answered by replica: {dict(Counter(o.replica for o in outcomes if o.kind == 'ok'))}\n"
          f"nginx error log: {events}\nsent to a second replica by nginx: {len(resent)} "
          f"({dict(Counter((p.protocol, tuple(p.upstream_statuses)) for p in resent))})\n"
          + "".join(f"  {o}\n" for o in failures))
    assert not failures, failures
    # Every REST request was answered by nginx's second try at worst; a gRPC call that nginx failed (a reset
    # connection) was sent again by the client's channel, and answered (above).
    assert all(p.upstream_statuses[-1] == "200" for p in access if p.protocol == "rest"), access
    assert len(outcomes) > 30
    # Each replica took traffic again once it was back (nginx set none aside: max_fails=0).
    for number, t in back_at.items():
        assert any(o.replica == number and o.started > t for o in outcomes), (number, back_at)


@pytest.mark.parametrize("next_upstream", ["shipped", "without non_idempotent", "shipped, gRPC retry policy"])
def test_a_killed_replica_behind_nginx(tmp_path: Path, tls: Tls, next_upstream: str) -> None:
    """Three replicas behind nginx under closed-loop load (2 REST, 2 gRPC callers, 200 ms a request); replica 2
    SIGKILLed mid-stream, after 12 answers; 12 more answers after it.

    Observed with nginx 1.22 (the same in every run; the exact requests differ):
    - nginx's error log: "upstream prematurely closed connection while reading response header from upstream"
      (once in a while for gRPC "recv() failed (104: Connection reset by peer)" instead) once for the REST and
      once for the gRPC port of the killed replica (the requests on it then), then
      "connect() failed (111: Connection refused) while connecting to upstream" about twice per port, as round
      robin comes back to it. Each refused connection is sent on to another replica and answered (access log
      upstream="<killed>, <other>" upstream_status="502, 200"): 4-5 requests sent on per run.
    - shipped conf (proxy_next_upstream ... non_idempotent): the REST request in flight on the killed replica is
      sent on too, and answered 200; no REST request fails. The gRPC call in flight on it fails: the client sees
      UNAVAILABLE "pyserving is not reachable behind the proxy" (nginx's 502 in gRPC shape, access log status 204,
      upstream_status "502"); nginx never sends a gRPC call twice. 1 failure in ~29 requests.
    - without non_idempotent (nginx's default): the REST request in flight fails too, HTTP 502
      {"error": "pyserving is not reachable behind the proxy"}. 2 failures in ~30 requests.
    - After the kill every answer comes from replicas 1 and 3.
    With front-end processes (the default on 2+ cores; the SIGKILL reaches the model process): the REST request in
    flight gets 503 from a front end and, with the shipped conf (http_503 non_idempotent), is sent on and answered
    (upstream_status "503, 200"); the gRPC call in flight fails UNAVAILABLE with pyserving's own "The model process
    is not reachable ..." (nginx logs it 200: the status is in the trailers). Same count of failures.
    - gRPC channels with the retry policy of deploy/nginx/README.md (shipped conf): no failure at all (5 runs, 70
      gRPC calls): the client sends the failed call again, and round robin takes it to another replica.
    Asserted: traffic goes on, on replicas 1 and 3 only; each failure was in flight on the killed replica (started
    before it was reaped, ended after the kill, nginx's access log names the killed replica alone), at most one per
    caller, as many as nginx logged; everything nginx sent on was first tried on the killed replica and answered;
    with the shipped conf, no REST failure; with the retry policy too, no failure.
    """
    retry = next_upstream == "shipped, gRPC retry policy"

    def edit(text: str) -> str:
        if next_upstream.startswith("shipped"):
            return text
        assert "proxy_next_upstream error timeout http_503 non_idempotent;" in text
        return text.replace("proxy_next_upstream error timeout http_503 non_idempotent;",
                            "proxy_next_upstream error timeout http_503;")

    with (replicas(tmp_path, 3) as reps, balancer(tmp_path / "nginx", tls, reps, edit) as lb,
          Load(lb.callers(grpc_retry=retry)) as load):
        load.wait_for(12)
        killed = reps[1]
        kill_at = time.monotonic()
        killed.signal(signal.SIGKILL)
        killed.wait(10)
        reaped_at = time.monotonic()
        load.wait_for(12)
        outcomes = load.stop()
        events = error_log_events(lb.error_log())
        access = proxied(lb.access_log())
    failures = [o for o in outcomes if o.kind != "ok"]
    after = Counter(o.replica for o in outcomes if o.kind == "ok" and o.started > reaped_at)
    resent = [p for p in access if len(p.upstreams) > 1]
    failed_lines = [p for p in access if p.upstream_statuses[-1] != "200"]
    print(f"\nkilled replica {killed.number} (REST {killed.rest}, gRPC {killed.grpc})\n"
          f"requests: {summary(outcomes)}\nanswered by replica after the kill: {dict(after)}\n"
          f"nginx error log: {events}\nsent to a second replica by nginx: {len(resent)}\n"
          + "".join(f"  {p}\n" for p in resent) + "failed at nginx:\n" + "".join(f"  {p}\n" for p in failed_lines)
          + "".join(f"  {o} (killed at {kill_at:.3f}, reaped at {reaped_at:.3f})\n" for o in failures))

    # Traffic goes on, on the two others only.
    assert set(after) == {1, 3}, after
    if retry:
        assert not failures, failures
        return
    # What failed was in flight on the killed replica: sent there (nginx's log names it alone), started before it
    # was gone, at most one per caller; and nginx's log and the clients agree on how many.
    # With front-end processes (the default on 2+ cores) the killed process is the model process: its front ends
    # answer what was in flight 503 / UNAVAILABLE, saying so, and close. nginx sends a 503 on to another replica
    # (http_503, with non_idempotent for a POST); a gRPC call's UNAVAILABLE comes in its trailers (HTTP 200 to
    # nginx) and reaches the client.
    front_ends = FRONTEND_PROCESSES_IN_USE > 0
    killed_ports = {"rest": killed.rest, "grpc": killed.grpc}
    for line in failed_lines:
        assert line.upstreams == [killed_ports[line.protocol]], line
        assert line.upstream_statuses == (["503"] if front_ends and line.protocol == "rest" else ["502"]), line
    for protocol in ("rest",) if front_ends else ("rest", "grpc"):
        assert len([o for o in failures if o.protocol == protocol]) == len(
            [p for p in failed_lines if p.protocol == protocol]), (failures, failed_lines)
    assert all(o.started < reaped_at and o.ended > kill_at for o in failures), failures
    assert max(Counter(o.caller for o in failures).values(), default=0) <= 1, failures
    gone = "The model process is not reachable (it exited or is restarting). Retry the request shortly."
    expected = ({"rest": f"HTTP 503 {json.dumps({'error': gone}, separators=(',', ':')).encode()!r}",
                 "grpc": f"UNAVAILABLE: {gone}"} if front_ends else
                {"rest": 'HTTP 502 b\'{"error": "pyserving is not reachable behind the proxy"}\\n\'',
                 "grpc": "UNAVAILABLE: pyserving is not reachable behind the proxy"})
    assert all(o.kind == "error" and o.detail == expected[o.protocol] for o in failures), failures
    if next_upstream == "shipped":
        # REST requests in flight on the killed replica were sent to another one (non_idempotent).
        assert not [o for o in failures if o.protocol == "rest"], failures
    # Everything nginx sent to a second replica was first tried on the killed one, and was answered.
    assert all(p.upstreams[0] == killed_ports[p.protocol] and p.upstream_statuses[-1] == "200" for p in resent), resent
