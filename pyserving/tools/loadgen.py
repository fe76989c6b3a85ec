"""The load generator behind `pyserving bench`, `pyserving batching tune` and bench/*.py: one place that knows how to
drive a TF Serving-compatible server and what its own driving costs.

Generators, cheapest first (on a 2-core machine a Python client can take a core from the server it measures):
  * wrk (REST, closed loop, duration): `wrk -t1 -cN -dDs --latency -s wrk_post.lua URL`; the Lua script's `done`
    hook prints one JSON line with wrk's own latency percentiles (pyserving/tools/wrk_post.lua);
  * h2load (gRPC, closed loop, duration or count): the PredictRequest framed as gRPC frames it (a zero byte, a
    4-byte big-endian length, the message), `content-type: application/grpc` and `te: trailers`; latencies from its
    per-request `--log-file`. h2load counts HTTP 200s, and gRPC answers errors with 200 and a `grpc-status`
    trailer, so one real gRPC call with the same body checks it first; if that call fails, the run falls back to
    the Python clients, which see each status;
  * Python client processes (anything, including open loop and request counts): httpx for REST, grpc.aio for gRPC
    with the serialized request passed through as bytes; the load is split over `procs` processes.

CPU: the generator's CPU seconds come from getrusage(RUSAGE_CHILDREN) around each run (wrk, h2load and the
client processes are children that have exited by then) plus this process's own; the server's from its process
tree's utime+stime in /proc, when its pid is given or found from its listening port.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyserving.dtypes import DType

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
METADATA_METHOD = "/tensorflow.serving.PredictionService/GetModelMetadata"
WORKER_FLAG = "--loadgen-worker"
_TICK = os.sysconf("SC_CLK_TCK")


class LoadError(Exception):
    """Something the user can fix (a wrong address, model or input file); the message says what."""


# ------------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    protocol: str
    """"rest" or "grpc"."""
    address: str
    """REST: base URL (http://127.0.0.1:8501); gRPC: host:port."""
    model: str
    signature: str = "serving_default"
    version: int | None = None
    rest_path: str = ""
    """REST only: POST here instead of TF Serving's predict path (e.g. /v2/models/M/infer, with a Payload built
    for it)."""
    header: tuple[str, str] | None = None
    """REST only: one more request header (e.g. V2's Inference-Header-Content-Length)."""
    token: str = field(default="", repr=False)
    """An API key or JWT for a server with --auth_config_file: sent as `Authorization: Bearer` (REST header, gRPC
    metadata)."""

    def headers(self) -> list[tuple[str, str]]:
        """Extra request headers (HTTP/1.1 REST or HTTP/2 gRPC), credentials included."""
        out = [self.header] if self.header is not None and self.protocol == "rest" else []
        if self.token:
            out.append(("authorization", f"Bearer {self.token}"))
        return out

    @property
    def predict_url(self) -> str:
        if self.rest_path:
            return self.address.rstrip("/") + self.rest_path
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.address.rstrip('/')}/v1/models/{self.model}{version}:predict"

    @property
    def port(self) -> int | None:
        if self.protocol == "rest":
            return urllib.parse.urlsplit(self.address).port or 80
        try:
            return int(self.address.rpartition(":")[2])
        except ValueError:
            return None

    def describe(self) -> str:
        return self.predict_url if self.protocol == "rest" else f"grpc://{self.address}{PREDICT_METHOD}"


@dataclass(frozen=True)
class Payload:
    """One request, ready to send as often as needed."""

    rest_body: bytes
    grpc_message: bytes
    rows: int
    description: str


def _signature_from_rest(target: Target, timeout_s: float) -> dict[str, tuple[DType, list[int] | None]]:
    version = f"/versions/{target.version}" if target.version is not None else ""
    url = f"{target.address.rstrip('/')}/v1/models/{target.model}{version}/metadata"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(target.headers())),
                                    timeout=timeout_s) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise LoadError(f"GET {url} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise LoadError(f"cannot reach {url}: {exc}; is the server up, and is --rest its REST address?") from None
    sigs = body.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    if target.signature not in sigs:
        raise LoadError(f"model {target.model} has no signature {target.signature!r} (it has {sorted(sigs)}); "
                        "pass --signature")
    out: dict[str, tuple[DType, list[int] | None]] = {}
    for alias, info in sigs[target.signature].get("inputs", {}).items():
        shape = info.get("tensor_shape", {})
        dims = None if shape.get("unknown_rank") else [int(d.get("size", -1)) for d in shape.get("dim", [])]
        out[alias] = (DType[info.get("dtype", "DT_FLOAT")], dims)
    return out


def _signature_from_grpc(target: Target, timeout_s: float) -> dict[str, tuple[DType, list[int] | None]]:
    import grpc

    from pyserving.codecs.tfserving.protos import get_model_metadata_pb2
    from pyserving.codecs.tfserving.protos.services import unpack_signature_def_map

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = target.model
    if target.version is not None:
        request.model_spec.version.value = target.version
    with grpc.insecure_channel(target.address) as channel:
        call = channel.unary_unary(METADATA_METHOD, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString)
        try:
            response = call(request, timeout=timeout_s, metadata=target.headers() or None)
        except grpc.RpcError as exc:
            raise LoadError(f"GetModelMetadata on {target.address} failed: {exc.code().name}: {exc.details()}; "
                            "is the server up, and is --grpc its gRPC address?") from None
    sigs = unpack_signature_def_map(response.metadata["signature_def"]).signature_def
    if target.signature not in sigs:
        raise LoadError(f"model {target.model} has no signature {target.signature!r} (it has {sorted(sigs)}); "
                        "pass --signature")
    out: dict[str, tuple[DType, list[int] | None]] = {}
    for alias, info in sigs[target.signature].inputs.items():
        dims = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
        out[alias] = (DType(info.dtype), dims)
    return out


def signature_inputs(target: Target, timeout_s: float = 30.0) -> dict[str, tuple[DType, list[int] | None]]:
    """The signature's inputs: alias -> (dtype, shape with -1 for any size; None for unknown rank)."""
    fetch = _signature_from_rest if target.protocol == "rest" else _signature_from_grpc
    return fetch(target, timeout_s)


def random_inputs(inputs: Mapping[str, tuple[DType, list[int] | None]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors of each input's dtype and shape; -1 dimensions become `batch`."""
    rng = np.random.default_rng(seed)
    out = {}
    for alias, (dtype, dims) in inputs.items():
        if dims is None:
            raise LoadError(f"input {alias!r} has an unknown rank in the model's metadata: give a request body with "
                            "--input FILE")
        shape = [batch if d < 0 else d for d in dims]
        if dtype == DType.DT_STRING:
            value = np.full(shape, b"pyserving", dtype=object)
        elif dtype == DType.DT_BOOL:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype.numpy, np.integer):
            value = rng.integers(0, 10, size=shape).astype(dtype.numpy)
        elif np.issubdtype(dtype.numpy, np.floating):
            value = rng.random(shape, dtype=np.float32).astype(dtype.numpy)
        else:
            raise LoadError(f"input {alias!r} is {dtype.name}, which random inputs do not cover: give --input FILE")
        out[alias] = value
    return out


def inputs_from_json(body: Mapping[str, Any], inputs: Mapping[str, tuple[DType, list[int] | None]]) -> dict[str, np.ndarray]:
    """A TF Serving REST predict body (row `instances` or columnar `inputs`) as arrays of the signature's dtypes,
    for sending it over gRPC."""
    def array(alias: str, value: Any) -> np.ndarray:
        if alias not in inputs:
            raise LoadError(f"the --input body names input {alias!r}; the signature's inputs are {sorted(inputs)}")
        dtype = inputs[alias][0]
        if dtype == DType.DT_STRING:
            return np.asarray(value, dtype=object)
        return np.asarray(value, dtype=dtype.numpy)

    if "inputs" in body:
        given = body["inputs"]
        if isinstance(given, dict):
            return {k: array(k, v) for k, v in given.items()}
        if len(inputs) != 1:
            raise LoadError(f"the --input body's `inputs` is one tensor but the signature has {len(inputs)} inputs")
        return {next(iter(inputs)): array(next(iter(inputs)), given)}
    if "instances" in body:
        rows = body["instances"]
        if rows and isinstance(rows[0], dict):
            return {k: array(k, [row[k] for row in rows]) for k in rows[0]}
        if len(inputs) != 1:
            raise LoadError(f"the --input body's instances are plain values but the signature has {len(inputs)} "
                            "inputs: give each instance as an object")
        return {next(iter(inputs)): array(next(iter(inputs)), rows)}
    raise LoadError("the --input body has neither `instances` nor `inputs` (TF Serving's predict request JSON)")


def _json_value(a: np.ndarray) -> Any:
    if a.dtype == object:
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(a).tolist()
    return a.tolist()


def build_payload(target: Target, *, batch: int = 1, input_file: str | None = None, seed: int = 0,
                  timeout_s: float = 30.0) -> Payload:
    """The request each load generator sends: from --input FILE, or random tensors shaped by the metadata."""
    from pyserving.codecs.tfserving.protos import predict_pb2
    from pyserving.codecs.tfserving.tensor import fill_proto

    spec = signature_inputs(target, timeout_s)
    signature = target.signature
    if input_file:
        try:
            raw = Path(input_file).read_bytes()
            body = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise LoadError(f"--input {input_file}: {exc}; give a TF Serving predict request JSON file") from None
        if not isinstance(body, dict):
            raise LoadError(f"--input {input_file}: want a JSON object with `instances` or `inputs`")
        signature = body.get("signature_name", signature)
        arrays = inputs_from_json(body, spec)
        rest_body = raw
        what = f"{input_file}"
    else:
        arrays = random_inputs(spec, batch, seed)
        rest_body = json.dumps({"signature_name": signature,
                                "inputs": {k: _json_value(v) for k, v in arrays.items()}}).encode()
        what = "random " + ", ".join(f"{k}: {v.dtype if v.dtype != object else 'string'}{list(v.shape)}"
                                     for k, v in arrays.items())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = target.model
    request.model_spec.signature_name = signature
    if target.version is not None:
        request.model_spec.version.value = target.version
    for alias, value in arrays.items():
        fill_proto(request.inputs[alias], value, tensor_content=value.dtype != object)
    rows = max((v.shape[0] if v.ndim else 1) for v in arrays.values()) if arrays else 0
    return Payload(rest_body, request.SerializeToString(), rows, what)


# ---------------------------------------------------------------------------------------------------------- CPU


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) used so far by `pid` and its live descendants."""
    if pid is None:
        return float("nan")
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (rest := _stat(int(entry))) is not None:
            parents[int(entry)] = int(rest[1])
            ticks[int(entry)] = int(rest[11]) + int(rest[12])
    if pid not in ticks:
        return float("nan")
    total, frontier = 0, {pid}
    while frontier:
        total += sum(ticks.get(p, 0) for p in frontier)
        frontier = {child for child, parent in parents.items() if parent in frontier}
    return total / _TICK


def machine_busy_s() -> float:
    """CPU seconds every core has spent busy so far (/proc/stat), whoever used them."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _TICK


def pid_listening_on(port: int | None) -> int | None:
    """The pid of the process listening on 127.0.0.1/0.0.0.0/[::]:port on this machine, if this user can see it."""
    if port is None:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rpartition(":")[2], 16) == port:
                        inodes.add(f"socket:[{cols[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------------------------ results


@dataclass
class Point:
    """One measured load point."""

    protocol: str
    mode: str
    """"closed" (a fixed number of requests in flight) or "open" (requests started at a fixed rate)."""
    level: float
    """Concurrency (closed) or requests/s offered (open)."""
    generator: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    qps: float = 0.0
    """Successful requests per second."""
    p50: float = float("nan")
    p90: float = float("nan")
    p99: float = float("nan")
    client_cpu_s: float = float("nan")
    server_cpu_s: float = float("nan")
    other_cpu_s: float = float("nan")
    """CPU seconds everything else on the machine used meanwhile (a busy machine makes a point noisy)."""
    wall_s: float = 0.0
    """Seconds the run took start to end (generator start-up included): what CPU seconds are divided by."""
    first_error: str = ""
    note: str = ""
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"c={self.level:g}" if self.mode == "closed" else f"{self.level:g}/s"

    def per_request_ms(self, cpu_s: float) -> float:
        return 1000 * cpu_s / self.requests if self.requests else float("nan")

    def cores(self, cpu_s: float) -> float:
        return cpu_s / self.wall_s if self.wall_s else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(latencies_ms: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> list[float]:
    if not len(latencies_ms):
        return [float("nan")] * len(qs)
    return [float(x) for x in np.percentile(np.asarray(latencies_ms, dtype=np.float64), qs)]


@dataclass
class LoadSpec:
    """What to run: closed loop at `concurrency` or open loop at `rate`; for `duration` seconds or `requests`."""

    concurrency: int = 1
    rate: float = 0.0
    duration: float = 5.0
    requests: int = 0
    timeout_s: float = 30.0
    max_in_flight: int = 1000
    """Open loop: requests the client keeps in flight at most; arrivals beyond it count as errors."""

    @property
    def mode(self) -> str:
        return "open" if self.rate > 0 else "closed"


Progress = Callable[[float], None]
"""Told the fraction done (0..1) now and then while a point runs."""


class LoadGenerator:
    """Runs load points against one target with one payload; picks wrk/h2load when they can do the job."""

    def __init__(self, target: Target, payload: Payload, *, client: str = "auto", procs: int = 0,
                 threads: int = 1, server_pid: int | None = None, workdir: str | None = None) -> None:
        if client not in ("auto", "native", "python"):
            raise LoadError(f"--client {client}: use auto, native (wrk/h2load) or python")
        self.target, self.payload, self.client = target, payload, client
        self.procs = procs or max(1, min(2, os.cpu_count() or 1))
        self.threads = max(1, threads)
        self.server_pid = server_pid if server_pid is not None else pid_listening_on(target.port)
        self._tmp = tempfile.TemporaryDirectory(prefix="pyserving-bench-", dir=workdir)
        tmp = Path(self._tmp.name)
        self.rest_body_file = tmp / "body.json"
        self.rest_body_file.write_bytes(payload.rest_body)
        self.grpc_body_file = tmp / "body.grpc"
        self.grpc_body_file.write_bytes(b"\x00" + struct.pack(">I", len(payload.grpc_message)) + payload.grpc_message)
        self.notes: list[str] = []
        self._grpc_checked: str | None = None
        self._python_cpu_s = 0.0

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- choosing ---------------------------------------------------------------------------------------------

    def generator_for(self, spec: LoadSpec) -> str:
        if self.client == "python":
            return "python"
        native = None
        if self.target.protocol == "rest" and spec.mode == "closed" and not spec.requests and shutil.which("wrk"):
            native = "wrk"
        if self.target.protocol == "grpc" and spec.mode == "closed" and shutil.which("h2load"):
            native = "h2load" if self.grpc_check() == "" else None
        if native is None and self.client == "native":
            why = {"rest": "wrk runs closed-loop duration runs only, and must be installed (apt-get install wrk)",
                   "grpc": "h2load runs closed-loop runs only, must be installed (apt-get install nghttp2-client), "
                           "and needs the request to succeed (" + (self._grpc_checked or "") + ")"}
            raise LoadError(f"--client native: {why[self.target.protocol]}")
        return native or "python"

    def grpc_check(self) -> str:
        """One Predict with a real gRPC client: "" when it succeeds, else what failed (h2load cannot tell)."""
        if self._grpc_checked is None:
            import grpc

            with grpc.insecure_channel(self.target.address) as channel:
                call = channel.unary_unary(PREDICT_METHOD)
                try:
                    call(self.payload.grpc_message, timeout=60, metadata=self.target.headers() or None)
                    self._grpc_checked = ""
                except grpc.RpcError as exc:
                    self._grpc_checked = f"{exc.code().name}: {exc.details()}"
                    self.notes.append(f"gRPC check call failed ({self._grpc_checked}): h2load counts HTTP 200s and "
                                      "would miss these errors, so the Python clients ran the gRPC points")
        return self._grpc_checked

    # --- running ---------------------------------------------------------------------------------------------

    def run(self, spec: LoadSpec, progress: Progress | None = None) -> Point:
        generator = self.generator_for(spec)
        level = spec.rate if spec.mode == "open" else spec.concurrency
        point = Point(self.target.protocol.replace("rest", "REST").replace("grpc", "gRPC"), spec.mode, level,
                      generator)
        srv0, busy0 = process_tree_cpu_s(self.server_pid), machine_busy_s()
        kids0, own0, t0 = _children_cpu_s(), _own_cpu_s(), time.monotonic()
        if generator == "wrk":
            self._run_wrk(spec, point, progress)
        elif generator == "h2load":
            self._run_h2load(spec, point, progress)
            self.notes.append("h2load sees HTTP statuses only: a gRPC error status during the run (after the check "
                              "call succeeded) counts as a success there; --client python counts each one")
        else:
            self._run_python(spec, point, progress)
        point.wall_s = time.monotonic() - t0
        point.client_cpu_s = (_children_cpu_s() - kids0) + (_own_cpu_s() - own0)
        if generator == "python":
            # the client processes' own count from `go` to their result: their interpreter start-up and imports
            # are not load
            point.client_cpu_s = self._python_cpu_s + (_own_cpu_s() - own0)
        point.server_cpu_s = process_tree_cpu_s(self.server_pid) - srv0
        busy = machine_busy_s() - busy0
        point.other_cpu_s = max(0.0, busy - point.client_cpu_s - (0 if math.isnan(point.server_cpu_s)
                                                                     else point.server_cpu_s))
        return point

    def _watch(self, proc: subprocess.Popen[Any], seconds: float, progress: Progress | None, limit_s: float) -> None:
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                if progress is not None and seconds > 0:
                    progress(min(1.0, elapsed / seconds))
                if elapsed > limit_s:
                    raise LoadError(f"{proc.args[0]} did not finish within {limit_s:.0f} s")
                time.sleep(0.2)
        except BaseException:
            # wrk/h2load run in their own session (so that a terminal's Ctrl-C reaches us, not them): stop them
            # here, or they go on loading the server after we are gone
            _stop(proc)
            raise

    def _run_wrk(self, spec: LoadSpec, point: Point, progress: Progress | None) -> None:
        seconds = max(1, round(spec.duration))
        threads = min(self.threads, spec.concurrency)
        cmd = ["wrk", f"-t{threads}", f"-c{spec.concurrency}", f"-d{seconds}s", f"--timeout={max(1, round(spec.timeout_s))}s",
               "--latency", "-s", str(WRK_SCRIPT), self.target.predict_url]
        env = dict(os.environ, BENCH_BODY=str(self.rest_body_file))
        env.pop("BENCH_HEADER", None)
        env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in self.target.headers())
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._watch(proc, seconds, progress, seconds + spec.timeout_s + 30)
            out.seek(0)
            text = out.read().decode(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise LoadError(f"wrk printed no result (exit {proc.returncode}): {text[-500:]}")
        r = json.loads(line[len("BENCH_JSON "):])
        errs = r["errors"]
        point.seconds = r["duration_us"] / 1e6
        point.requests = r["requests"] + errs["connect"] + errs["read"] + errs["write"] + errs["timeout"]
        point.errors = sum(errs.values())
        point.error_kinds = {k: v for k, v in errs.items() if v}
        if errs["status"]:
            point.first_error = "HTTP status other than 2xx/3xx (wrk does not keep the body)"
        point.qps = (r["requests"] - errs["status"]) / point.seconds if point.seconds else 0.0
        point.p50, point.p90, point.p99 = r["p50_us"] / 1000, r["p90_us"] / 1000, r["p99_us"] / 1000

    def _run_h2load(self, spec: LoadSpec, point: Point, progress: Progress | None) -> None:
        with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
            log_file = Path(tmp) / "requests.log"
            url = f"http://{self.target.address}{PREDICT_METHOD}"
            clients = min(spec.concurrency, spec.requests) if spec.requests else spec.concurrency  # h2load: n >= c
            threads = min(self.threads, clients)
            amount = ["-n", str(spec.requests)] if spec.requests else [f"-D{max(1, round(spec.duration))}"]
            extra = [a for k, v in self.target.headers() for a in ("-H", f"{k}: {v}")]
            cmd = ["h2load", f"-c{clients}", "-m1", f"-t{threads}", *amount,
                   "-H", "content-type: application/grpc", "-H", "te: trailers", *extra,
                   "-d", str(self.grpc_body_file), f"--log-file={log_file}", url]
            expected = spec.duration if not spec.requests else 0
            with tempfile.TemporaryFile() as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                t0 = time.monotonic()
                self._watch(proc, expected, progress, (expected or 600) + spec.timeout_s + 30)
                wall = time.monotonic() - t0
                out.seek(0)
                text = out.read().decode(errors="replace")
            rows = []
            if log_file.exists():
                for line in log_file.read_text().splitlines():
                    cols = line.split("\t")
                    if len(cols) >= 3:
                        rows.append((int(cols[0]), int(cols[1]), int(cols[2])))
        counts = _h2load_counts(text)
        if counts is None:
            raise LoadError(f"h2load printed no result (exit {proc.returncode}): {text[-500:]}")
        ok = [r for r in rows if r[1] == 200]
        # h2load: done = succeeded + failed; failed includes non-2xx answers and `errored` (stream/connection
        # failures), which includes `timeout`
        point.requests = int(counts["done"])
        point.errors = int(counts["failed"])
        if point.errors:
            point.first_error = (f"{int(counts['failed'] - counts['errored'])} non-2xx answers, "
                                 f"{int(counts['errored'])} stream or connection errors ({int(counts['timeout'])} "
                                 "timeouts); h2load keeps no body")
            point.error_kinds = {k: int(counts[k]) for k in ("failed", "errored", "timeout") if counts[k]}
        if ok:
            start = min(r[0] for r in ok) / 1e6
            end = max(r[0] + r[2] for r in ok) / 1e6
            point.seconds = max(end - start, 1e-6)
        else:
            point.seconds = counts.get("seconds") or wall
        point.qps = len(ok) / point.seconds
        point.p50, point.p90, point.p99 = percentiles([r[2] / 1000 for r in ok])

    def _run_python(self, spec: LoadSpec, point: Point, progress: Progress | None) -> None:
        procs = max(1, min(self.procs, spec.concurrency if spec.mode == "closed" else self.procs))
        body_file = self.rest_body_file if self.target.protocol == "rest" else Path(self.rest_body_file.parent,
                                                                                     "request.pb")
        if self.target.protocol == "grpc" and not body_file.exists():
            body_file.write_bytes(self.payload.grpc_message)
        shares = _split(spec.concurrency, procs) if spec.mode == "closed" else [0] * procs
        rates = [spec.rate / procs] * procs
        counts = _split(spec.requests, procs) if spec.requests else [0] * procs
        workers = []
        for i in range(procs):
            job = {"protocol": self.target.protocol, "url": self.target.predict_url, "target": self.target.address,
                   "headers": self.target.headers(),
                   "body_file": str(body_file), "concurrency": shares[i], "rate": rates[i] if spec.rate else 0,
                   "duration": spec.duration, "requests": counts[i], "timeout_s": spec.timeout_s,
                   "max_in_flight": max(1, spec.max_in_flight // procs)}
            if spec.requests and counts[i] == 0:
                continue
            workers.append(_Worker(job))
        try:
            for w in workers:
                w.wait_ready(60)
            for w in workers:
                w.go()
            t0 = time.monotonic()
            limit = (spec.duration if not spec.requests else 600) + spec.timeout_s + 60
            while any(w.result is None for w in workers):
                time.sleep(0.2)
                if progress is not None:
                    if spec.requests:
                        progress(min(1.0, sum(w.done for w in workers) / spec.requests))
                    else:
                        progress(min(1.0, (time.monotonic() - t0) / spec.duration))
                if time.monotonic() - t0 > limit:
                    raise LoadError(f"the client processes did not finish within {limit:.0f} s")
                dead = [w for w in workers if w.result is None and w.proc.poll() is not None and w.finished]
                if dead:
                    raise LoadError(f"a client process exited without a result: {dead[0].stderr_tail()}")
        finally:
            for w in workers:
                w.stop()
        results = [w.result for w in workers if w.result is not None]
        self._python_cpu_s = sum(r["cpu_s"] for r in results)
        lat = [x for r in results for x in r["latencies_ms"]]
        point.errors = sum(r["errors"] for r in results)
        point.requests = len(lat) + point.errors
        kinds: dict[str, int] = {}
        for r in results:
            for k, v in r["error_kinds"].items():
                kinds[k] = kinds.get(k, 0) + v
        point.error_kinds = kinds
        point.first_error = next((r["first_error"] for r in results if r["first_error"]), "")
        point.seconds = max(r["ended"] for r in results) - min(r["started"] for r in results) if results else 0.0
        point.qps = len(lat) / point.seconds if point.seconds else 0.0
        point.p50, point.p90, point.p99 = percentiles(lat)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _h2load_counts(text: str) -> dict[str, float] | None:
    import re

    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                  r"(\d+) timeout", text)
    if m is None:
        return None
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    out: dict[str, float] = dict(zip(keys, map(int, m.groups())))
    t = re.search(r"finished in ([\d.]+)(ms|s)", text)
    if t:
        out["seconds"] = float(t.group(1)) / (1000 if t.group(2) == "ms" else 1)
    return out


def _stop(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=5)


class _Worker:
    """One client process: it says `ready` once connected, starts on `go`, prints `p N` progress lines and
    one JSON result line."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyserving.tools.loadgen", WORKER_FLAG, json.dumps(job)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            start_new_session=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])),
        )
        self.done = 0
        self.result: dict[str, Any] | None = None
        self.finished = False
        self._ready = threading.Event()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self._ready.set()
            elif line.startswith("p "):
                self.done = int(line[2:])
            elif line.startswith("{"):
                self.result = json.loads(line)
        self.finished = True
        self._ready.set()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr = (self._stderr + [line])[-20:]

    def stderr_tail(self) -> str:
        return "".join(self._stderr)[-1000:]

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s) or self.finished:
            raise LoadError(f"a client process did not start: {self.stderr_tail()}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _stop(self.proc)


# ------------------------------------------------------------------------------------------------------ worker


async def _worker(job: dict[str, Any]) -> dict[str, Any]:
    body = Path(job["body_file"]).read_bytes()
    timeout = job["timeout_s"]
    if job["protocol"] == "rest":
        import httpx

        n = max(job["concurrency"], 1) if not job["rate"] else job["max_in_flight"]
        headers = {"Content-Type": "application/json", **dict(job["headers"])}
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                                   timeout=timeout, headers=headers)
        url = job["url"]

        async def send() -> str:
            r = await client.post(url, content=body)
            if r.status_code == 200:
                return ""
            return f"HTTP {r.status_code}: {r.text[:300]}"

        async def close() -> None:
            await client.aclose()
    else:
        import grpc

        channel = grpc.aio.insecure_channel(job["target"])
        call = channel.unary_unary(PREDICT_METHOD)
        metadata = tuple((k, v) for k, v in job["headers"]) or None

        async def send() -> str:
            try:
                await call(body, timeout=timeout, metadata=metadata)
                return ""
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        async def close() -> None:
            await channel.close()
        await channel.channel_ready()

    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    first_error = ""

    def record(started: float, outcome: str) -> None:
        nonlocal errors, first_error
        if outcome:
            errors += 1
            kind = outcome.split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
            first_error = first_error or outcome
        else:
            latencies.append((time.perf_counter() - started) * 1000)

    async def one(started: float) -> None:
        try:
            outcome = await send()
        except Exception as exc:  # connection refused, timeouts: the request failed, the run goes on
            outcome = f"{type(exc).__name__}: {exc}"
        record(started, outcome)

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.perf_counter()
    cpu_started = time.process_time()
    wall_started = time.time()
    deadline = started + job["duration"]
    budget = job["requests"]
    issued = 0

    async def report() -> None:
        while True:
            await asyncio.sleep(0.25)
            print(f"p {len(latencies) + errors}", flush=True)

    reporter = asyncio.create_task(report())
    if job["rate"]:
        interval = 1.0 / job["rate"]
        in_flight: set[asyncio.Task[None]] = set()
        while (issued < budget) if budget else (time.perf_counter() < deadline):
            at = started + issued * interval
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            issued += 1
            if len(in_flight) >= job["max_in_flight"]:
                record(at, f"client limit: over {job['max_in_flight']} requests in flight (the server fell behind "
                           "the offered rate)")
                continue
            # latency from the planned start, so a stalled server is not hidden (coordinated omission)
            task = asyncio.create_task(one(at))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout + 5)
    else:
        async def loop() -> None:
            nonlocal issued
            while (issued < budget) if budget else (time.perf_counter() < deadline):
                issued += 1
                await one(time.perf_counter())

        await asyncio.gather(*(loop() for _ in range(job["concurrency"])))
    ended = time.perf_counter()
    reporter.cancel()
    await close()
    return {"latencies_ms": latencies, "errors": errors, "error_kinds": kinds, "first_error": first_error,
            "started": wall_started, "ended": wall_started + (ended - started),
            "cpu_s": time.process_time() - cpu_started}


def _worker_main(job_json: str) -> int:
    result = asyncio.run(_worker(json.loads(job_json)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit("pyserving.tools.loadgen is a library; run `pyserving bench`")
