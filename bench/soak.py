"""Soak test (not run in CI): one `pyserving serve` with a polled --model_config_file, for --minutes, under valid
REST and gRPC traffic, hostile traffic, version swaps and config edits all at once; the server's RSS sampled
throughout.

    python bench/soak.py [--minutes 30] [--max-request-bytes N] [--plot soak.png] [--scratch DIR]

What runs at the same time, all against 127.0.0.1:
  - valid traffic (--rate requests/s, REST and gRPC): predicts to `stable` versions 1 and 2 (pinned) and unpinned,
    to `rolling` unpinned (its versions are being swapped), to `extra` unpinned while the config has served it
    for --settle seconds, and base64 strings to a second signature. Every failure counts: a non-200 / gRPC error,
    a wrong answer, a wrong version, a timeout. Want 0.
  - hostile traffic (--hostile-rate requests/s; the heavy kinds at most one every --heavy-every s): malformed JSON,
    deep nesting, bad base64, wrong dtypes, bad model/version paths, many or huge headers, bodies announced by
    Content-Length and never sent (short client timeouts), truncated bodies, oversize bodies (announced and
    chunked), gzip bombs and corrupt gzip, gRPC TensorProtos with huge dims and one float_val, wrong dtypes,
    tensor_content that does not match its shape, oversize gRPC messages. Each should get a 4xx or a gRPC error;
    a 5xx, a 2xx, a gRPC INTERNAL/UNKNOWN or a hang counts as unexpected (kinds that stall on purpose expect no
    answer, and a refused oversize body may also be a closed connection).
  - version swaps of `rolling` every --swap-every s: the SavedModel copied to the next version number (staged
    under a dot-name then renamed, or written in place file by file), old versions deleted after the new one is
    AVAILABLE or at once.
  - config edits every --edit-every s: `extra` added or removed by an atomic rename, or by truncating the file and
    writing it slowly (the server polls it half-written), or an invalid config left for a few polls and restored.

The server's RSS, threads and open fds come from /proc every --sample-every s, summed over the serve process and
every process under it (front ends), with the serve (model) process and the largest front end also apart. At the
end: counts, failures, unexpected answers with the exact request, RSS at start / after warm-up / end / max and its
growth per hour after warm-up (a straight-line fit), ERROR lines in the server's log, and how the server stopped
(SIGTERM, must exit).
Ctrl-C ends the run early with the same report. Exit status 1 when anything failed.

The server runs with its own limits unless --max-request-bytes is given (its defaults are what this tests).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import collections
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from big_body import export_affine, free_port, model_available, pct, proc_cpu_s, start_server, stop_server  # noqa: E402

WIDTH = 8
X = [0.25 * (i + 1) for i in range(WIDTH)]
BIAS = {("stable", 1): 1.0, ("stable", 2): 2.0, ("stable", None): 2.0, ("rolling", None): 1.0, ("extra", None): 3.0}
"""y = 2x + bias per (model, pinned version); unpinned `stable` is its highest specific version, 2."""
STRING = b"pyserving \xff soak"
GRPC_OK_ERRORS = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND"}


# ------------------------------------------------------------------------------------------------------ records

@dataclass
class Event:
    t: float
    kind: str  # "swap" | "edit"
    mode: str
    detail: str


@dataclass
class Stats:
    """Everything the threads record; one lock, held only to append or count."""

    t0: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    valid: list[tuple[float, str, float, bool]] = field(default_factory=list)  # (t, target, latency s, ok)
    failures: list[str] = field(default_factory=list)
    hostile: dict[str, collections.Counter[str]] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    hostile_times: list[float] = field(default_factory=list)
    hostile_kinds: list[str] = field(default_factory=list)
    hostile_seconds: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    unexpected: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    unexpected_count: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    snippets: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # swaps/edits the server did not follow
    samples: list[dict[str, float]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def valid_result(self, target: str, latency: float, error: str | None) -> None:
        with self.lock:
            self.valid.append((self.now(), target, latency, error is None))
            if error is not None and len(self.failures) < 50:
                self.failures.append(f"t={self.now():7.1f}s {target}: {error}")

    def hostile_result(self, kind: str, request: str, outcome: str, expected: bool, snippet: str) -> None:
        with self.lock:
            self.hostile[kind][outcome] += 1
            self.hostile_kinds.append(kind)
            self.hostile_times.append(self.now())
            if not expected:
                self.unexpected_count[kind] += 1
            # The first answer of each request variant and outcome: the same answer repeated says nothing new.
            seen = self.unexpected[kind] if not expected else self.examples[kind]
            if len(seen) < 8 and not any(u.split(" ", 1)[1] == f"{request} -> {outcome}" for u in seen):
                seen.append(f"t={self.now():.1f}s {request} -> {outcome}")
                self.snippets[f"{kind} {request} -> {outcome}"] = snippet

    def event(self, kind: str, mode: str, detail: str) -> None:
        with self.lock:
            self.events.append(Event(self.now(), kind, mode, detail))

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(f"t={self.now():.1f}s {text}")


class ExtraGate:
    """Whether valid traffic may go to `extra` (in the config and served for a while), and requests in flight to it,
    so a removal waits for them before the config drops the model."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._safe = False
        self._in_flight = 0

    def enter(self) -> bool:
        with self._cond:
            if self._safe:
                self._in_flight += 1
            return self._safe

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._safe = True

    def close(self, timeout: float = 60.0) -> None:
        with self._cond:
            self._safe = False
            self._cond.wait_for(lambda: self._in_flight == 0, timeout)


# ----------------------------------------------------------------------------------------------- model and config

def config_text(root: Path, with_extra: bool) -> str:
    extra = f'  config {{ name: "extra" base_path: "{root / "extra"}" model_platform: "tensorflow" }}\n'
    return ("model_config_list {\n"
            f'  config {{ name: "stable" base_path: "{root / "stable"}" model_platform: "tensorflow"\n'
            "           model_version_policy { specific { versions: 1 versions: 2 } } }\n"
            f'  config {{ name: "rolling" base_path: "{root / "rolling"}" model_platform: "tensorflow" }}\n'
            + (extra if with_extra else "") + "}\n")


def invalid_configs(root: Path) -> list[str]:
    """Configs the server must refuse while it keeps serving the last good one."""
    return [
        f'model_config_list {{ config {{ name: "stable" base_path: "{root / "stable"}" nam: "typo" }} }}\n',
        'model_config_list { config { name: "stable" model_version_policy { specific { versions: "one" } } }\n',
        (f'model_config_list {{ config {{ name: "stable" base_path: "{root / "stable"}" }}\n'
         f'  config {{ name: "stable" base_path: "{root / "rolling"}" }} }}\n'),  # one name twice
    ]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def write_slowly(path: Path, text: str, stop: threading.Event, pause: float = 1.3) -> None:
    """Truncate, then write in three pieces with pauses longer than the poll: the server reads it empty and
    half-written."""
    cut = [0, len(text) // 3, 2 * len(text) // 3, len(text)]
    with path.open("w") as f:
        f.flush()
        for a, b in zip(cut, cut[1:]):
            stop.wait(pause)
            f.write(text[a:b])
            f.flush()


def copy_version(template: Path, target: Path, staged: bool) -> None:
    if staged:
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(template, tmp)
        os.rename(tmp, target)
        return
    # In place, graph first and variables a second later, as an exporter writing into the base path does.
    target.mkdir()
    for item in sorted(template.iterdir(), key=lambda p: p.is_dir()):
        if item.is_dir():
            time.sleep(1.0)
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy(item, target / item.name)


def versions(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())


# ------------------------------------------------------------------------------------------------- valid traffic

def rest_valid(port: int, stats: Stats, gate: ExtraGate, rate: float, stop: threading.Event, seed: int) -> None:
    """One thread of valid REST predicts at `rate`/s, round robin over the targets that are valid now."""
    targets: list[tuple[str, int | None, str]] = [
        ("stable", 1, "rows"), ("stable", 2, "columns"), ("stable", None, "rows"), ("rolling", None, "rows"),
        ("extra", None, "rows"), ("stable", 1, "strlen"), ("rolling", None, "columns"), ("extra", None, "strlen"),
    ]
    rng = random.Random(seed)
    rng.shuffle(targets)
    conn: http.client.HTTPConnection | None = None
    period, due, i = 1 / rate, time.monotonic(), 0
    while not stop.is_set():
        due = max(due + period, time.monotonic() - 1)  # after a stall, no burst of more than a second's worth
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        model, version, form = targets[i % len(targets)]
        i += 1
        if model == "extra" and not gate.enter():
            continue
        label = f"REST {model}{'/' + str(version) if version else ''} {form}"
        t0 = time.monotonic()
        error: str | None = None
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            error = _rest_predict(conn, model, version, form)
        except (OSError, http.client.HTTPException) as exc:
            error = repr(exc)
        finally:
            if model == "extra":
                gate.leave()
        if error is not None and conn is not None:
            conn.close()
            conn = None
        stats.valid_result(label, time.monotonic() - t0, error)
    if conn is not None:
        conn.close()


def _rest_predict(conn: http.client.HTTPConnection, model: str, version: int | None, form: str) -> str | None:
    """One predict; None when the answer is right, else what was wrong."""
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    if form == "strlen":
        doc: dict[str, Any] = {"signature_name": "strlen", "instances": [
            {"b64": base64.b64encode(STRING).decode()}, {"b64": base64.b64encode(b"abc").decode()}]}
    elif form == "columns":
        doc = {"inputs": {"x": [X]}}
    else:
        doc = {"instances": [X]}
    conn.request("POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        return f"POST {path} {doc} -> {resp.status} {body[:300]!r}"
    answer = json.loads(body)
    if form == "strlen":
        want: Any = [len(STRING), 3]
        got = answer.get("predictions")
    else:
        want = [[2 * v + BIAS[(model, version)] for v in X]]
        got = answer.get("predictions") if form == "rows" else answer.get("outputs")
    if got != want:
        return f"POST {path} -> 200 but {got} (want {want})"
    served = resp.getheader("X-Model-Version")
    if version is not None and served != str(version):
        return f"POST {path} -> answered by version {served}"
    return None


def grpc_valid(port: int, stats: Stats, gate: ExtraGate, rate: float, stop: threading.Event) -> None:
    """Valid gRPC predicts at `rate`/s through TF Serving's own generated stubs."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    targets: list[tuple[str, int | None, str]] = [
        ("stable", 1, ""), ("rolling", None, ""), ("stable", 2, ""), ("extra", None, ""), ("stable", None, ""),
        ("rolling", None, "strlen"),
    ]
    requests = {}
    for model, version, sig in targets:
        r = predict_pb2.PredictRequest()
        r.model_spec.name = model
        if version is not None:
            r.model_spec.version.value = version
        if sig:
            r.model_spec.signature_name = sig
            r.inputs["s"].CopyFrom(tf.make_tensor_proto([STRING, b"abc"]))
        else:
            r.inputs["x"].CopyFrom(tf.make_tensor_proto([X], dtype=tf.float32))
        requests[(model, version, sig)] = r
    period, due, i = 1 / rate, time.monotonic(), 0
    try:
        while not stop.is_set():
            due = max(due + period, time.monotonic() - 1)
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            model, version, sig = targets[i % len(targets)]
            i += 1
            if model == "extra" and not gate.enter():
                continue
            label = f"gRPC {model}{'/' + str(version) if version else ''} {sig or 'x'}"
            t0 = time.monotonic()
            error: str | None = None
            try:
                response = stub.Predict(requests[(model, version, sig)], timeout=10)
                if sig:
                    got, want = tf.make_ndarray(response.outputs["n"]).tolist(), [len(STRING), 3]
                else:
                    got = tf.make_ndarray(response.outputs["y"]).tolist()
                    want = [[2 * v + BIAS[(model, version)] for v in X]]
                if got != want:
                    error = f"Predict {model}/{version} -> {got} (want {want})"
                elif version is not None and response.model_spec.version.value != version:
                    error = f"Predict {model}/{version} -> answered by version {response.model_spec.version.value}"
            except grpc.RpcError as exc:
                error = f"Predict {model}/{version} {sig} -> {exc.code().name} {exc.details()!r}"
            finally:
                if model == "extra":
                    gate.leave()
            stats.valid_result(label, time.monotonic() - t0, error)
    finally:
        channel.close()


# ----------------------------------------------------------------------------------------------- hostile traffic

@dataclass
class Answer:
    outcome: str  # "400", "no answer", "closed", "reset", "grpc INVALID_ARGUMENT", ...
    snippet: str = ""


def read_answer(sock: socket.socket, timeout: float) -> Answer:
    """The status of the HTTP answer on `sock`, with the first bytes of its body."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < 1 << 16:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        if b"\r\n\r\n" in data and len(data.partition(b"\r\n\r\n")[2]) < 200:
            sock.settimeout(0.5)
            data += sock.recv(4096)
    except socket.timeout:
        if not data:
            return Answer("no answer")
    except (ConnectionResetError, BrokenPipeError):
        if not data:
            return Answer("reset")
    if not data:
        return Answer("closed")
    status = data.split(b" ", 2)[1].decode(errors="replace") if data.startswith(b"HTTP/") else "garbage"
    return Answer(status, data.partition(b"\r\n\r\n")[2][:200].decode(errors="replace"))


def http_exchange(port: int, head: str, body: bytes | Iterator[bytes] = b"", timeout: float = 20.0,
                  half_close: bool = False) -> Answer:
    """Send `head` (request line and headers, without the blank line) and `body`, stopping early once the server
    has answered, then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n")
            for chunk in ([body] if isinstance(body, bytes) else body):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered (or closed) before the whole body went
                sock.sendall(chunk)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except socket.timeout:
            pass  # the server stopped reading; what it says matters, not that it did not read
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_answer(sock, timeout)


def post_head(path: str, length: int | None, extra: str = "") -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{size}{extra}"
            "Connection: close\r\n")


class Hostile:
    """Every hostile request kind; each `kind_*` method sends one (or a few) and records what came back."""

    REST_OK = re.compile(r"4\d\d")

    def __init__(self, rest: int, grpc_port: int, stats: Stats, oversize: int, bomb: bytes, bomb_size: int) -> None:
        """`oversize`: bytes of the oversize bodies; `bomb`: gzip of `bomb_size` zero bytes."""
        import grpc

        self.rest, self.stats, self.oversize, self.bomb, self.bomb_size = rest, stats, oversize, bomb, bomb_size
        big = 1 << 30
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[
            ("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)])
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.variant: collections.Counter[str] = collections.Counter()

    def close(self) -> None:
        self.channel.close()

    def pick(self, kind: str, options: list[Any]) -> Any:
        self.variant[kind] += 1
        return options[(self.variant[kind] - 1) % len(options)]

    def rest_record(self, kind: str, request: str, answer: Answer, also_ok: tuple[str, ...] = ()) -> None:
        expected = bool(self.REST_OK.fullmatch(answer.outcome)) or answer.outcome in also_ok
        self.stats.hostile_result(kind, request, answer.outcome, expected, answer.snippet)

    def post(self, kind: str, what: str, path: str, body: bytes, extra: str = "") -> None:
        answer = http_exchange(self.rest, post_head(path, len(body), extra), body)
        self.rest_record(kind, f"POST {path} {what}", answer)

    # -- cheap kinds ----------------------------------------------------------------------------------------------

    def kind_malformed_json(self) -> None:
        body = self.pick("malformed_json", [b'{"instances": [[1.0, 2.0', b'{"instances": [1.0,]}', b"\xff\xfe{}",
                                            b'{"instances": NaN}', b"", b"null", b'{"instances": [[1e999999]]}'])
        self.post("malformed_json", f"body {body!r}", "/v1/models/stable:predict", body)

    def kind_deep_nesting(self) -> None:
        depth = self.pick("deep_nesting", [100_000, 2_000, 1_000_000])
        body = b'{"instances": ' + b"[" * depth + b"1.0" + b"]" * depth + b"}"
        self.post("deep_nesting", f"{{\"instances\": [[[...1.0...]]]}} nested {depth} deep ({len(body)} bytes)",
                  "/v1/models/stable:predict", body)
        obj = b'{"a":' * depth + b"1" + b"}" * depth
        self.post("deep_nesting", f"{{\"a\":{{\"a\":...}}}} nested {depth} deep", "/v1/models/stable:predict", obj)

    def kind_bad_base64(self) -> None:
        # ("YWJj=", one '=' too many, is served: Python's decoder and, as far as we read it, absl's accept it)
        value = self.pick("bad_base64", ["@@not*base64@@", "====", "YW\nJj", 12, {"b64": "YQ=="}])
        body = json.dumps({"signature_name": "strlen", "instances": [{"b64": value}]}).encode()
        self.post("bad_base64", f"body {body.decode()}", "/v1/models/stable/versions/1:predict", body)

    def kind_wrong_dtype(self) -> None:
        doc = self.pick("wrong_dtype", [
            # (No wrong shapes: TF Serving's C++ Session does not check a feed against the placeholder's shape,
            # and this element-wise model serves [1, 8, 1] or [1, 9] as TF Serving does.)
            {"instances": [["a"] * WIDTH]}, {"instances": [[True] * WIDTH]}, {"inputs": {"x": {"a": 1}}},
            {"inputs": {"y": [X]}},
            {"instances": [{"b64": "YWJj"}]}, {"signature_name": "strlen", "instances": [[1.0, 2.0]]},
            {"instances": [[None] * WIDTH]}, {"instances": [[1.0] * WIDTH, [1.0]]},
        ])
        body = json.dumps(doc).encode()
        self.post("wrong_dtype", f"body {body.decode()}", "/v1/models/stable:predict", body)

    def kind_bad_target(self) -> None:
        path = self.pick("bad_target", [
            "/v1/models/nope:predict", "/v1/models/stable/versions/7:predict",
            "/v1/models/stable/versions/99999999999999999999:predict", "/v1/models/stable/labels/nope:predict",
            "/v1/models/stable:explode", "/v1/models/" + "a" * 10_000 + ":predict",
        ])
        self.post("bad_target", "with a valid body", path, json.dumps({"instances": [X]}).encode())

    def kind_many_headers(self) -> None:
        count, size = self.pick("many_headers", [(10_000, 8), (1, 1 << 20), (100_000, 8)])
        extra = "".join(f"X-Hostile-{i}: {'v' * size}\r\n" for i in range(count))
        self.post("many_headers", f"with {count} extra headers of {size} bytes each, valid body",
                  "/v1/models/stable:predict", json.dumps({"instances": [X]}).encode(), extra)

    def kind_stalled(self) -> None:
        """Connections that announce a body (or headers) and never send it; the client gives up after 1.5 s."""
        partial = self.pick("stalled", ["body", "headers"])
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", self.rest), timeout=5)
            if partial == "body":
                s.sendall((post_head("/v1/models/stable:predict", 100_000) + "\r\n").encode() + b'{"instances": [[')
            else:
                s.sendall(b"POST /v1/models/stable:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            socks.append(s)
        deadline = time.monotonic() + 1.5
        for s in socks:
            answer = read_answer(s, max(0.01, deadline - time.monotonic()))
            s.close()
            self.rest_record("stalled", f"POST /v1/models/stable:predict, stalled mid-{partial} (20 at once, "
                                        "client gives up after 1.5 s)", answer, also_ok=("no answer", "closed"))

    def kind_truncated(self) -> None:
        answer = http_exchange(self.rest, post_head("/v1/models/stable:predict", 100_000), b'{"instances": [[1.0',
                               timeout=10, half_close=True)
        self.rest_record("truncated", "POST /v1/models/stable:predict, Content-Length 100000, 18 bytes sent, then "
                                      "shutdown(SHUT_WR)", answer, also_ok=("closed", "no answer"))

    def kind_grpc_huge_dims(self) -> None:
        from tensorflow_serving.apis import predict_pb2

        dims = self.pick("grpc_huge_dims", [[2**40, WIDTH], [2**31, 2**31, 2**31], [2**62], [2**63 - 1, 2],
                                            [-1, WIDTH], [2**33, WIDTH]])
        r = predict_pb2.PredictRequest()
        r.model_spec.name = "stable"
        r.inputs["x"].dtype = 1  # DT_FLOAT
        for d in dims:
            r.inputs["x"].tensor_shape.dim.add(size=d)
        r.inputs["x"].float_val.append(1.0)
        self.grpc("grpc_huge_dims", f"Predict stable, x DT_FLOAT dims {dims}, float_val [1.0]", r)

    def kind_grpc_wrong_dtype(self) -> None:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        which = self.pick("grpc_wrong_dtype", ["string", "int64", "content", "no input", "strlen float",
                                               "bad dtype"])
        r = predict_pb2.PredictRequest()
        r.model_spec.name = "stable"
        if which == "string":
            r.inputs["x"].CopyFrom(tf.make_tensor_proto([[b"a"] * WIDTH]))
        elif which == "int64":
            r.inputs["x"].CopyFrom(tf.make_tensor_proto([[1] * WIDTH], dtype=tf.int64))
        elif which == "content":  # 7 bytes for a [1, WIDTH] float tensor
            r.inputs["x"].dtype = 1
            r.inputs["x"].tensor_shape.dim.add(size=1)
            r.inputs["x"].tensor_shape.dim.add(size=WIDTH)
            r.inputs["x"].tensor_content = b"1234567"
        elif which == "no input":
            pass
        elif which == "strlen float":
            r.model_spec.signature_name = "strlen"
            r.inputs["s"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
        else:
            r.inputs["x"].dtype = 999
            r.inputs["x"].float_val.append(1.0)
        self.grpc("grpc_wrong_dtype", f"Predict stable, {which}", r)

    # -- heavy kinds ----------------------------------------------------------------------------------------------

    def kind_oversize(self) -> None:
        chunked = self.pick("oversize", [False, True])
        piece = b"0" * (1 << 18)
        count = -(-self.oversize // len(piece))

        def body() -> Iterator[bytes]:
            for _ in range(count):
                yield b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece
            if chunked:
                yield b"0\r\n\r\n"

        size = count * len(piece)
        answer = http_exchange(self.rest, post_head("/v1/models/stable:predict", None if chunked else size), body())
        self.rest_record("oversize", f"POST /v1/models/stable:predict, {size} bytes of '0' "
                                     f"{'chunked, no Content-Length' if chunked else 'with Content-Length'}", answer,
                         also_ok=("closed", "reset"))

    def kind_gzip(self) -> None:
        small = gzip.compress(json.dumps({"instances": [X]}).encode())
        what, body = self.pick("gzip", [
            (f"gzip bomb, {len(self.bomb)} bytes -> {self.bomb_size >> 20} MiB of zeros", self.bomb),
            ("gzip of a valid body with its CRC flipped", small[:-8] + bytes(b ^ 0xFF for b in small[-8:-4])
             + small[-4:]),
            ("gzip of a valid body, cut in half", small[: len(small) // 2]),
            ("plain JSON announced as gzip", json.dumps({"instances": [X]}).encode()),
        ])
        answer = http_exchange(self.rest, post_head("/v1/models/stable:predict", len(body),
                                                    "Content-Encoding: gzip\r\n"), body)
        self.rest_record("gzip", f"POST /v1/models/stable:predict, {what}", answer, also_ok=("closed", "reset"))

    def kind_grpc_oversize(self) -> None:
        from tensorflow_serving.apis import predict_pb2

        r = predict_pb2.PredictRequest()
        r.model_spec.name = "stable"
        r.inputs["x"].dtype = 1
        r.inputs["x"].tensor_shape.dim.add(size=1)
        r.inputs["x"].tensor_shape.dim.add(size=WIDTH)
        r.inputs["x"].tensor_content = b"\0" * self.oversize
        self.grpc("grpc_oversize", f"Predict stable, x [1, {WIDTH}] with {self.oversize} bytes of tensor_content", r)

    def grpc(self, kind: str, request: str, message: Any) -> None:
        import grpc

        try:
            self.stub.Predict(message, timeout=20)
            outcome, snippet, expected = "grpc OK", "", False
        except grpc.RpcError as exc:
            code = exc.code().name
            outcome, snippet, expected = f"grpc {code}", (exc.details() or "")[:200], code in GRPC_OK_ERRORS
        self.stats.hostile_result(kind, request, outcome, expected, snippet)


CHEAP = ["malformed_json", "deep_nesting", "bad_base64", "wrong_dtype", "bad_target", "grpc_huge_dims",
         "grpc_wrong_dtype", "stalled", "truncated", "many_headers"]
HEAVY = ["oversize", "gzip", "grpc_oversize"]
BOMB_BYTES = 1 << 30


def make_bomb(size: int) -> bytes:
    """gzip of `size` zero bytes (about size/1000 bytes)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(16 << 20)
    parts = [z.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join(parts) + z.flush()


def hostile_loop(h: Hostile, rate: float, heavy_every: float, stop: threading.Event, stats: Stats) -> None:
    period, due, i, j = 1 / rate, time.monotonic(), 0, 0
    next_heavy = time.monotonic() + heavy_every / 2
    while not stop.is_set():
        due = max(due + period, time.monotonic() - 1)
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        if stop.is_set():
            break
        if time.monotonic() >= next_heavy:
            kind, next_heavy = HEAVY[j % len(HEAVY)], time.monotonic() + heavy_every
            j += 1
        else:
            kind = CHEAP[i % len(CHEAP)]
            i += 1
        t0 = time.monotonic()
        try:
            getattr(h, f"kind_{kind}")()
            with stats.lock:
                stats.hostile_seconds[kind].append(time.monotonic() - t0)
        except Exception as exc:  # a broken client case must not end the soak; it is reported as one
            stats.hostile_result(kind, "(the client failed)", f"client error {type(exc).__name__}", False, str(exc))


# -------------------------------------------------------------------------------------- swaps, edits, sampling

def swap_loop(root: Path, rest: int, every: float, stop: threading.Event, stats: Stats) -> None:
    base, template = root / "rolling", root / "template"
    nxt = max(versions(base)) + 1
    i = 0
    while not stop.wait(every):
        staged = i % 2 == 0
        at_once = (i // 2) % 2 == 1
        old = versions(base)
        t0 = time.monotonic()
        copy_version(template, base / str(nxt), staged)
        if at_once:
            for v in old:
                shutil.rmtree(base / str(v), ignore_errors=True)
        while not model_available(rest, "rolling", nxt) and time.monotonic() - t0 < 90 and not stop.is_set():
            stop.wait(0.2)
        took = time.monotonic() - t0
        if not model_available(rest, "rolling", nxt):
            if not stop.is_set():
                stats.problem(f"rolling version {nxt} not AVAILABLE {took:.0f} s after it was written")
        if not at_once:
            for v in old:
                shutil.rmtree(base / str(v), ignore_errors=True)
        mode = f"{'staged' if staged else 'in place'}, old deleted {'at once' if at_once else 'after'}"
        stats.event("swap", mode, f"v{nxt} AVAILABLE after {took:.1f} s")
        nxt, i = nxt + 1, i + 1


def edit_loop(root: Path, config: Path, rest: int, every: float, settle: float, gate: ExtraGate,
              stop: threading.Event, stats: Stats) -> None:
    with_extra = True
    bad = invalid_configs(root)
    modes = ["atomic", "slow", "invalid"]
    i = 0
    while not stop.wait(every):
        mode = modes[i % len(modes)]
        if mode == "invalid":
            text = bad[(i // len(modes)) % len(bad)]
            write_atomically(config, text) if i % 2 else write_slowly(config, text, stop, pause=0.3)
            stop.wait(3.5)  # three polls of the broken file
            write_atomically(config, config_text(root, with_extra))
            stats.event("edit", "invalid", f"{text.splitlines()[0][:60]!r}... for 3.5 s, then restored")
        else:
            if with_extra:
                gate.close()  # no valid request to extra in flight while it leaves the config
            with_extra = not with_extra
            text = config_text(root, with_extra)
            write_atomically(config, text) if mode == "atomic" else write_slowly(config, text, stop)
            t0 = time.monotonic()
            while (model_available(rest, "extra") != with_extra and time.monotonic() - t0 < 90
                   and not stop.is_set()):
                stop.wait(0.2)
            took = time.monotonic() - t0
            if model_available(rest, "extra") != with_extra and not stop.is_set():
                stats.problem(f"extra still {'not ' if with_extra else ''}AVAILABLE {took:.0f} s after a {mode} "
                              f"edit {'adding' if with_extra else 'removing'} it")
            elif with_extra:
                stop.wait(settle)
                gate.open()
            stats.event("edit", mode, f"extra {'added' if with_extra else 'removed'}, "
                                      f"{'AVAILABLE' if with_extra else 'gone'} after {took:.1f} s")
        i += 1


def read_proc(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # MiB
            elif key == "Threads":
                out[key] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    out["cpu_s"] = proc_cpu_s(pid)
    return out


def read_server(pid: int) -> dict[str, float]:
    """The whole server: the `pyserving serve` process (the model process when front ends run) and every process
    under it. VmRSS / Threads / fds / cpu_s are sums over all of them (CPU of children that exited is lost);
    model_rss is the top process's, frontend_rss the largest child's, procs how many there are."""
    top = read_proc(pid)
    out = dict(top, model_rss=top["VmRSS"], frontend_rss=0.0, procs=1.0)
    for child in psutil.Process(pid).children(recursive=True):
        try:
            c = read_proc(child.pid)
        except OSError:  # exited between the listing and the read
            continue
        for key in ("VmRSS", "Threads", "fds", "cpu_s"):
            out[key] += c[key]
        out["frontend_rss"] = max(out["frontend_rss"], c["VmRSS"])
        out["procs"] += 1
    return out


def sample_loop(pid: int, every: float, stop: threading.Event, stats: Stats) -> None:
    while True:
        try:
            s = read_server(pid)
        except (OSError, psutil.Error):
            stats.problem("the server process is gone")
            return
        with stats.lock:
            s.update(t=stats.now(), valid=len(stats.valid), hostile=len(stats.hostile_times))
            stats.samples.append(s)
        if stop.wait(every):
            return


# ------------------------------------------------------------------------------------------------------- report

def error_lines(log: Path, config: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """The server log's errors, (ours, expected): JSON lines at ERROR/CRITICAL by message (numbers blanked), and
    plain-text tracebacks (uvicorn's own logger) by their exception line. Refusals of the invalid configs this
    script writes are expected."""
    ours: collections.Counter[str] = collections.Counter()
    expected: collections.Counter[str] = collections.Counter()
    in_traceback = False
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            in_traceback = False
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("ERROR", "CRITICAL"):
                message = str(rec.get("message", ""))
                first = re.sub(r"\d+", "N", message.splitlines()[0][:160] if message else "")
                if message.startswith(f"Ignoring {config}"):
                    expected[first] += 1
                else:
                    ours[first] += 1
        elif line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and re.match(r"[A-Za-z_][\w.]*(Error|Exception|Disconnect|Exit|Interrupt)\b", line):
            ours[f"traceback: {line[:160]}"] += 1
            in_traceback = False
    return ours, expected


def growth_per_hour(samples: list[dict[str, float]], after: float, key: str = "VmRSS") -> float:
    pts = [(s["t"], s[key]) for s in samples if s["t"] >= after]
    if len(pts) < 2:
        return float("nan")
    mt = statistics.fmean(t for t, _ in pts)
    mr = statistics.fmean(r for _, r in pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (r - mr) for t, r in pts) / var * 3600 if var else float("nan")


def floors(samples: list[dict[str, float]], after: float, key: str = "VmRSS") -> list[dict[str, float]]:
    """The lowest-`key` sample of each minute after `after`."""
    by_minute: dict[int, dict[str, float]] = {}
    for x in samples:
        if x["t"] >= after:
            m = int((x["t"] - after) // 60)
            if m not in by_minute or x[key] < by_minute[m][key]:
                by_minute[m] = x
    return [by_minute[m] for m in sorted(by_minute)]


def report(stats: Stats, warmup_s: float, stop_info: str, log: Path, config: Path,
           minutes: float) -> tuple[list[str], bool]:
    lines: list[str] = []
    failed_valid = sum(1 for v in stats.valid if not v[3])
    elapsed = stats.samples[-1]["t"] if stats.samples else 0.0
    lines.append(f"soak: {elapsed / 60:.1f} of {minutes:g} minutes")
    lines.append("")
    lines.append(f"valid requests: {len(stats.valid)}  failed: {failed_valid}")
    lines.append("  target                           n  failed   p50 ms   p99 ms   max ms")
    by_target: dict[str, list[tuple[float, bool]]] = collections.defaultdict(list)
    for _, target, lat, ok in stats.valid:
        by_target[target].append((lat * 1000, ok))
    for target in sorted(by_target):
        lat = [x for x, _ in by_target[target]]
        lines.append(f"  {target:28s} {len(lat):6d} {sum(1 for _, ok in by_target[target] if not ok):7d} "
                     f"{pct(lat, .5):8.2f} {pct(lat, .99):8.2f} {max(lat):8.1f}")
    for f in stats.failures[:10]:
        lines.append(f"  FAILED {f}")
    lines.append("")
    lines.append(f"hostile requests: {len(stats.hostile_times)}  unexpected answers: "
                 f"{sum(stats.unexpected_count.values())}")
    lines.append("  kind               n  unexp  max s  answers")
    for kind in CHEAP + HEAVY:
        c = stats.hostile.get(kind)
        if c:
            took = max(stats.hostile_seconds.get(kind, []), default=float("nan"))
            lines.append(f"  {kind:16s} {sum(c.values()):5d} {stats.unexpected_count[kind]:6d} {took:6.1f}  "
                         + ", ".join(f"{o}: {n}" for o, n in c.most_common()))
    lines.append("  (max s: the longest one call of the kind took, client side; 'stalled' waits 1.5 s on purpose)")
    bad_kinds = {k: v for k, v in stats.unexpected.items() if v}
    if bad_kinds:
        lines.append("  unexpected, first of each request and answer:")
    for kind, examples in bad_kinds.items():
        for e in examples:
            lines.append(f"    {kind}: {e} {stats.snippets[kind + ' ' + e.split(' ', 1)[1]][:160]!r}")
    lines.append("  heavy kinds' answers (expected):")
    for kind in HEAVY:
        for e in stats.examples.get(kind, []):
            lines.append(f"    {kind}: {e} {stats.snippets[kind + ' ' + e.split(' ', 1)[1]][:160]!r}")
    lines.append("")
    swaps = [e for e in stats.events if e.kind == "swap"]
    edits = [e for e in stats.events if e.kind == "edit"]
    for name, done in (("version swaps", swaps), ("config edits", edits)):
        modes = collections.Counter(e.mode for e in done)
        lines.append(f"{name}: {len(done)} (" + ", ".join(f"{m}: {n}" for m, n in modes.items()) + ")")
    for e in sorted(swaps[:4] + edits[:6], key=lambda e: e.t):
        lines.append(f"  t={e.t:6.1f}s {e.kind} ({e.mode}): {e.detail}")
    for p in stats.problems:
        lines.append(f"  PROBLEM {p}")
    lines.append("")
    s = stats.samples
    if s:
        after = next((x for x in s if x["t"] >= warmup_s), s[-1])
        lines.append(f"server RSS, all {s[-1]['procs']:.0f} processes (MiB): start {s[0]['VmRSS']:.0f}, after warm-up "
                     f"({after['t'] / 60:.1f} min) {after['VmRSS']:.0f}, end {s[-1]['VmRSS']:.0f}, max "
                     f"{max(x['VmRSS'] for x in s):.0f} (serve process's peak VmHWM "
                     f"{s[-1].get('VmHWM', float('nan')):.0f})")
        for key, what in (("VmRSS", "all processes"), ("model_rss", "serve (model) process"),
                          ("frontend_rss", "largest front end")):
            if key != "VmRSS" and s[-1]["procs"] < 2:
                continue
            lines.append(f"  growth after warm-up, {what}: {growth_per_hour(s, warmup_s, key):+.1f} MiB/hour "
                         f"(straight-line fit over {sum(1 for x in s if x['t'] >= warmup_s)} samples); of each "
                         f"minute's lowest: {growth_per_hour(floors(s, warmup_s, key), warmup_s, key):+.1f} MiB/hour"
                         + (f"; end {s[-1][key]:.0f} MiB" if key != "VmRSS" else ""))
        lines.append("  (heavy hostile requests make RSS spike and fall back; the lowest-per-minute fit follows the "
                     "floor a leak would raise; short runs give noise)")
        lines.append(f"  threads {s[0]['Threads']:.0f} -> {s[-1]['Threads']:.0f} (max "
                     f"{max(x['Threads'] for x in s):.0f}); open fds {s[0]['fds']:.0f} -> {s[-1]['fds']:.0f} "
                     f"(max {max(x['fds'] for x in s):.0f}); server CPU {s[-1]['cpu_s'] - s[0]['cpu_s']:.0f} s")
    errors, expected = error_lines(log, config)
    lines.append(f"server log: {sum(errors.values())} errors and tracebacks" + (":" if errors else "")
                 + f"  (and {sum(expected.values())} refusals of this script's invalid configs)")
    for msg, n in errors.most_common(8):
        lines.append(f"  {n:5d}  {msg}")
    lines.append(stop_info)
    ok = failed_valid == 0 and not bad_kinds and not stats.problems and not errors and "cleanly" in stop_info
    lines.append("RESULT: " + ("PASS" if ok else "FAIL"))
    return lines, ok


def plot(path: Path, stats: Stats, warmup_s: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib); no plot written to {path}")
        return
    s = stats.samples
    if len(s) < 2:
        return
    fig, (mem, rate) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    t = [x["t"] / 60 for x in s]
    mem.plot(t, [x["VmRSS"] for x in s], color="tab:blue", label="all processes")
    if s[-1]["procs"] > 1:
        mem.plot(t, [x["model_rss"] for x in s], color="tab:cyan", lw=0.8, label="serve (model) process")
        mem.plot(t, [x["frontend_rss"] for x in s], color="tab:orange", lw=0.8, label="largest front end")
        mem.legend(loc="lower left")
    mem.set_ylabel("server RSS, MiB", color="tab:blue")
    fds = mem.twinx()
    fds.plot(t, [x["fds"] for x in s], color="tab:gray", lw=0.8, label="open fds")
    fds.plot(t, [x["Threads"] for x in s], color="tab:olive", lw=0.8, label="threads")
    fds.set_ylabel("open fds / threads")
    fds.legend(loc="lower right")
    for e in stats.events:
        mem.axvline(e.t / 60, color="tab:green" if e.kind == "swap" else "tab:purple", lw=0.5, alpha=0.5)
    mem.axvline(warmup_s / 60, color="k", ls="--", lw=1)
    mem.set_title(f"server RSS: {growth_per_hour(s, warmup_s):+.0f} MiB/h after warm-up (dashed); "
                  "green: version swaps, purple: config edits", fontsize=10)
    mid = [(a["t"] + b["t"]) / 120 for a, b in zip(s, s[1:])]
    for key, color in (("valid", "tab:blue"), ("hostile", "tab:red")):
        rate.plot(mid, [(b[key] - a[key]) / (b["t"] - a["t"]) for a, b in zip(s, s[1:])], color=color,
                  label=f"{key} req/s")
    rate.set_ylabel("requests/s")
    rate.set_xlabel("minutes")
    p99 = rate.twinx()
    edges = [x["t"] for x in s]
    lat = [[v[2] * 1000 for v in stats.valid if a <= v[0] < b] for a, b in zip(edges, edges[1:])]
    p99.plot(mid, [pct(x, .99) for x in lat], color="tab:orange", lw=0.8, label="valid p99 ms")
    p99.set_yscale("log")
    p99.set_ylabel("valid p99, ms (log)", color="tab:orange")
    failed = [v[0] / 60 for v in stats.valid if not v[3]]
    if failed:
        rate.plot(failed, [0] * len(failed), "kx", label="failed valid")
    handles, labels = rate.get_legend_handles_labels()
    more_handles, more_labels = p99.get_legend_handles_labels()
    rate.legend(handles + more_handles, labels + more_labels, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


# --------------------------------------------------------------------------------------------------------- main

def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the same early, reported end as Ctrl-C


def prepare(root: Path) -> None:
    """stable/1 (bias 1), stable/2 (bias 2), extra/1 (bias 3), template (bias 1) and rolling/1 copied from it."""
    for name, bias in (("stable/1", 1.0), ("stable/2", 2.0), ("extra/1", 3.0), ("template", 1.0)):
        if not (root / name).is_dir():
            export_affine(root / name, WIDTH, bias)
    shutil.rmtree(root / "rolling", ignore_errors=True)
    (root / "rolling").mkdir()
    shutil.copytree(root / "template", root / "rolling" / "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the soak (default 30)")
    p.add_argument("--warmup-minutes", type=float, help="RSS growth is fitted after this (default: a fifth of "
                                                         "--minutes, at most 5)")
    p.add_argument("--rate", type=float, default=40.0, help="valid requests/s, REST and gRPC together (default 40)")
    p.add_argument("--hostile-rate", type=float, default=2.0, help="hostile requests/s (default 2)")
    p.add_argument("--heavy-every", type=float, default=10.0,
                   help="seconds between heavy hostile requests: oversize bodies and gzip bombs (default 10)")
    p.add_argument("--swap-every", type=float, default=20.0, help="seconds between version swaps (default 20)")
    p.add_argument("--edit-every", type=float, default=15.0, help="seconds between config edits (default 15)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds a model added by an edit must have been AVAILABLE before valid traffic uses it")
    p.add_argument("--sample-every", type=float, default=3.0, help="seconds between RSS samples (default 3)")
    p.add_argument("--max-request-bytes", type=int, default=0,
                   help="pass --max_request_bytes=N to the server (default: not passed; the server's own limits)")
    p.add_argument("--oversize-mb", type=float,
                   help="oversize bodies' size (default: 1 MiB over --max-request-bytes or the server's default 256 MiB)")
    p.add_argument("--serve-flags", default="",
                   help="more `pyserving serve` flags, space-separated (e.g. --serve-flags=--frontend_processes=0)")
    p.add_argument("--plot", type=Path, help="PNG to write (default: soak.png in the scratch folder)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pyserving-bench")
    args = p.parse_args(argv)
    warmup_s = 60 * (args.warmup_minutes if args.warmup_minutes is not None else min(5.0, args.minutes / 5))
    oversize = int(args.oversize_mb * (1 << 20)) if args.oversize_mb else \
        ((args.max_request_bytes or 256 << 20) + (1 << 20))  # just over the server's limit (default 256 MiB)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _on_sigterm)
    scratch = args.scratch / "soak"
    root = scratch / "models"
    (scratch / "logs").mkdir(parents=True, exist_ok=True)
    args.plot = args.plot or scratch / "soak.png"
    print("exporting the models ...", flush=True)
    prepare(root)
    bomb_size = max(BOMB_BYTES, 4 * args.max_request_bytes)
    bomb_file = scratch / f"bomb-{bomb_size}.gz"
    if not bomb_file.exists():
        bomb_file.write_bytes(make_bomb(bomb_size))
    bomb = bomb_file.read_bytes()
    config = scratch / "models.config"
    write_atomically(config, config_text(root, with_extra=True))
    rest, grpc_port = free_port(), free_port()
    log = scratch / "logs" / "server.log"
    flags = ["--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest}", f"--model_config_file={config}",
             "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=1"]
    flags += [f"--max_request_bytes={args.max_request_bytes}"] if args.max_request_bytes else []
    flags += args.serve_flags.split()
    print("pyserving serve " + " ".join(flags), flush=True)
    server = start_server(flags, log, ["stable", "rolling", "extra"], rest)
    stats = Stats(time.monotonic())
    stop = threading.Event()
    gate = ExtraGate()
    gate.open()
    try:
        hostile = Hostile(rest, grpc_port, stats, oversize, bomb, bomb_size)
    except BaseException:
        stop_server(server)
        raise
    threads = [
        threading.Thread(target=sample_loop, args=(server.pid, args.sample_every, stop, stats), name="sample"),
        *[threading.Thread(target=rest_valid, args=(rest, stats, gate, args.rate * 0.3, stop, k), name=f"rest{k}")
          for k in range(2)],
        threading.Thread(target=grpc_valid, args=(grpc_port, stats, gate, args.rate * 0.4, stop), name="grpc"),
        threading.Thread(target=hostile_loop, args=(hostile, args.hostile_rate, args.heavy_every, stop, stats),
                         name="hostile"),
        threading.Thread(target=swap_loop, args=(root, rest, args.swap_every, stop, stats), name="swap"),
        threading.Thread(target=edit_loop, args=(root, config, rest, args.edit_every, args.settle, gate, stop,
                                                 stats), name="edit"),
    ]
    print(f"soaking for {args.minutes:g} min: valid {args.rate:g}/s, hostile {args.hostile_rate:g}/s (heavy every "
          f"{args.heavy_every:g} s, oversize {oversize} bytes), swaps every {args.swap_every:g} s, edits every "
          f"{args.edit_every:g} s; log {log}", flush=True)
    stop_info = ""
    try:
        for t in threads:
            t.daemon = True
            t.start()
        end = time.monotonic() + 60 * args.minutes
        while time.monotonic() < end:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            if server.poll() is not None:
                stats.problem(f"the server exited on its own with status {server.returncode}")
                break
            with stats.lock:
                n, failed = len(stats.valid), sum(1 for v in stats.valid if not v[3])
                hn = len(stats.hostile_times)
                unexpected = sum(len(v) for v in stats.unexpected.values())
                rss = stats.samples[-1]["VmRSS"] if stats.samples else float("nan")
            print(f"  {stats.now() / 60:5.1f} min  valid {n} (failed {failed})  hostile {hn} (unexpected kinds' "
                  f"examples {unexpected})  swaps {sum(e.kind == 'swap' for e in stats.events)}  edits "
                  f"{sum(e.kind == 'edit' for e in stats.events)}  RSS {rss:.0f} MiB", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping early", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        hostile.close()
        if server.poll() is None:
            final = read_server(server.pid)
            with stats.lock:
                final.update(t=stats.now(), valid=len(stats.valid), hostile=len(stats.hostile_times))
                stats.samples.append(final)
        if server.poll() is None:
            code, took = stop_server(server)
            stop_info = (f"server: exited cleanly (status 0) {took:.1f} s after SIGTERM" if code == 0 else
                         f"server: exit status {code} {took:.1f} s after SIGTERM (None: still running, KILLed)")
        else:
            stop_info = f"server: had already exited with status {server.returncode}"
    lines, ok = report(stats, warmup_s, stop_info, log, config, args.minutes)
    print()
    print("\n".join(lines))
    if args.plot:
        plot(args.plot, stats, warmup_s)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
