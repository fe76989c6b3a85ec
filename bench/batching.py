"""The article's batching table, reproduced: pyserving without and with --enable_batching, REST and gRPC, against the
in-process limit of each model and against other servers, all measured in one run on this machine.

    python bench/batching.py [--quick] [--duration S] [--plot out.png] [--scratch DIR] [--skip-peers]

What runs, one thing at a time (see bench/README.md):
  1. models: the article's CNN (224x224x3 -> 10, compute-bound) and a small dense model (16 -> 32 -> 4,
     overhead-bound), exported under SCRATCH/models once and reused;
  2. the in-process limit of each model: `TensorFlowRuntime().load(...).run(...)` in a closed loop at several batch
     sizes and 1-2 calling threads, nothing else running (bench/models.py);
  3. a bare uvicorn + starlette app doing the small model's math in numpy: the ceiling of a Python HTTP server;
  4. pyserving, without and with batching, for each model, REST and gRPC at each concurrency, loaded by
     `pyserving bench`'s engine (pyserving/tools/loadgen.py: wrk, h2load, or Python clients without them);
  5. Seldon MLServer (adaptive batching) and NVIDIA Triton via PyTriton (dynamic batching) serving the small
     SavedModel, over REST with the V2 inference protocol, each from its own venv under SCRATCH (made on first use).

Everything listens on 127.0.0.1 only; every process this script starts is stopped when it ends, on errors and on
Ctrl-C too. Scratch files (venvs, models, request bodies, logs, results JSON) stay under --scratch.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
# pyserving's own load generator (`pyserving bench`): wrk for REST, h2load for gRPC, Python clients without them
from pyserving.tools.loadgen import WRK_SCRIPT, LoadGenerator, LoadSpec, Target, build_payload  # noqa: E402

# The batching parameters each model is served with (TF Serving's BatchingParameters, one file per model).
#  small: a signature call costs about the same for 1 row or 64, so batches should be as big as the traffic allows;
#         1 ms is short next to the ~10 ms a request spends queued at concurrency 32, one thread runs batches back to
#         back while the event loop fills the next one.
#  cnn:   compute-bound; in-process, 2 threads calling at batch 8 (or 4) is the best there is (the limit's table
#         shows it), a short timeout because one image alone already takes ~6-10 ms, and two batch threads so a batch
#         can be assembled and decoded while the other runs. (A sweep on 2 cores, gRPC at concurrency 32: 8/2 threads
#         190 img/s, 4/2 threads 175, 8/1 thread 178, 2/2 threads 143.)
BATCHING = {
    "small": {"max_batch_size": 64, "batch_timeout_micros": 1000, "max_enqueued_batches": 1000,
              "num_batch_threads": 1},
    "cnn": {"max_batch_size": 8, "batch_timeout_micros": 2000, "max_enqueued_batches": 1000,
            "num_batch_threads": 2},
}
# The peers' own batchers, set like pyserving's small-model batcher.
PEER_MAX_BATCH = BATCHING["small"]["max_batch_size"]
PEER_DELAY_S = BATCHING["small"]["batch_timeout_micros"] / 1e6

# Python gRPC client processes at concurrency >= 8 (below: 1), used only where h2load is not installed. The small
# model's client needs ~0.2 ms of Python per call, so one process would cap the rate; the CNN's few hundred calls/s
# need one, and a second only takes CPU from the server.
GRPC_PROCS = {"small": 2, "cnn": 1}

# name, input key, output key, one example's shape, limit batch sizes
MODELS = {
    "small": ("x", "y", [16], [1, 8, 64, 256]),
    "cnn": ("images", "predictions", [224, 224, 3], [1, 2, 4, 8]),
}

TARGET_CONCURRENCY = 32
NOISY = 0.3
"""cores used by other processes during a point above which that point is flagged (!) as disturbed"""


# ------------------------------------------------------------------------------------------------ process handling

_procs: list[subprocess.Popen[Any]] = []


def track(p: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
    _procs.append(p)
    return p


def stop(p: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM the process group this script started (its children too: tritonserver, MLServer workers), then KILL."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # anything left in the group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if p in _procs:
        _procs.remove(p)


def stop_all() -> None:
    while _procs:
        stop(_procs[-1], grace=5.0)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by the live processes of one process group (a server and its children)."""
    if pgid is None:
        return 0.0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total / _TICK


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat), whoever used them."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _TICK


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PYSERVING_SRC = str(REPO)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["BENCH_PYSERVING_SRC"] = PYSERVING_SRC
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start(name: str, cmd: list[str], logs: Path, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
    log = open(logs / f"{name}.log", "w")
    p = track(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env or child_env(), start_new_session=True, cwd=str(logs)))
    log.close()
    return p


def log_tail(logs: Path, name: str, lines: int = 25) -> str:
    try:
        return "\n".join((logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(p: subprocess.Popen[Any], url: str, name: str, logs: Path, timeout: float,
               expect: bytes | None = None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited with {p.returncode} while starting; its log ends:\n"
                               f"{log_tail(logs, name)}")
        try:
            status, body = http(url, timeout=2)
            if status == 200 and (expect is None or expect in body):
                return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} was not ready after {timeout:.0f} s ({url}); its log ends:\n{log_tail(logs, name)}")


def smoke(url: str, body: bytes, name: str) -> None:
    status, answer = http(url, body, timeout=60)
    if status != 200:
        raise RuntimeError(f"{name}: POST {url} answered {status}: {answer[:500]!r}")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60).stdout.strip()


def pyserving_source(commit: str | None, scratch: Path) -> tuple[str, str]:
    """Where the servers import pyserving from: the working tree, or REV's tree exported under scratch."""
    global PYSERVING_SRC
    if not commit:
        head = git("rev-parse", "--short", "HEAD") or "?"
        dirty = git("status", "--porcelain", "--", "pyserving")
        PYSERVING_SRC = str(REPO)
        return PYSERVING_SRC, f"working tree {REPO} (HEAD {head}{', pyserving/ has uncommitted changes' if dirty else ''})"
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if not sha:
        raise SystemExit(f"--commit {commit}: not a commit in {REPO}")
    dest = scratch / f"src-{sha[:12]}"
    if not (dest / "pyserving" / "__init__.py").exists():
        tmp = scratch / f".src-{sha[:12]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "pyserving"], capture_output=True,
                                 check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True, timeout=120)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    PYSERVING_SRC = str(dest)
    subject = git("log", "-1", "--format=%h %s", sha)
    return PYSERVING_SRC, f"commit {subject[:100]} (exported to {dest})"


# ---------------------------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    model: str
    server: str
    protocol: str
    batching: str
    concurrency: int
    qps: float
    p50: float
    p90: float
    p99: float
    requests: int
    errors: int
    server_cpu: float = float("nan")
    """cores the server's processes kept busy while measured"""
    load_cpu: float = float("nan")
    """cores the load generator kept busy"""
    other_cpu: float = float("nan")
    """cores busy with anything else on the machine meanwhile (other users' jobs make a point noisy)"""
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)


def run_wrk(url: str, body_file: Path, concurrency: int, duration: float, warmup: float,
            server_pgid: int | None = None, timeout_s: int = 60) -> dict[str, Any]:
    env = child_env(BENCH_BODY=str(body_file))

    def wrk(seconds: float) -> str:
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
               "--latency", "-s", str(WRK_SCRIPT), url]
        p = track(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   start_new_session=True))
        try:
            out, _ = p.communicate(timeout=seconds + timeout_s + 30)
        finally:
            stop(p, grace=1)
        return out

    if warmup > 0:
        wrk(warmup)
    srv0, load0, all0, t0 = group_cpu_s(server_pgid), children_cpu_s(), machine_busy_s(), time.monotonic()
    out = wrk(duration)
    srv1, load1, all1, t1 = group_cpu_s(server_pgid), children_cpu_s(), machine_busy_s(), time.monotonic()
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
    r = json.loads(line[len("BENCH_JSON "):])
    secs = r["duration_us"] / 1e6
    errors = sum(r["errors"].values())
    return {"qps": (r["requests"] - r["errors"]["status"]) / secs, "p50": r["p50_us"] / 1000,
            "p90": r["p90_us"] / 1000, "p99": r["p99_us"] / 1000, "requests": r["requests"], "errors": errors,
            "first_error": json.dumps(r["errors"]) if errors else "",
            "server_cpu": (srv1 - srv0) / (t1 - t0) if server_pgid else float("nan"),
            "load_cpu": (load1 - load0) / (t1 - t0),
            "other_cpu": max(0.0, ((all1 - all0) - (srv1 - srv0) - (load1 - load0)) / (t1 - t0))}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scratch: Path = args.scratch
        self.logs = self.scratch / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []
        self.limits: dict[str, dict[str, Any]] = {}
        self.generators: dict[Target, LoadGenerator] = {}
        self.versions: dict[str, str] = {}
        self.bodies: dict[str, Path] = {}
        self.skipped: list[str] = []
        self.server_pid: int | None = None
        self.src, self.src_label = pyserving_source(args.commit, self.scratch)

    # -------------------------------------------------------------------------------------------- preparation

    def start_server(self, name: str, cmd: list[str], logs: Path,
                     env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
        p = start(name, cmd, logs, env)
        self.server_pid = p.pid  # its process group: CPU use is summed over it
        return p

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def models_dir(self, name: str) -> Path:
        return self.scratch / "models" / name

    def prepare_models(self) -> None:
        for name in self.args.models:
            base = self.models_dir(name)
            if not (base / "1" / "saved_model.pb").exists() or (name == "small" and not (base / "weights.npz").exists()):
                self.say(f"exporting the {name} model to {base}")
                out = subprocess.run([sys.executable, str(BENCH / "models.py"), f"export-{name}", str(base)],
                                     capture_output=True, text=True, env=child_env(), timeout=600)
                if out.returncode != 0:
                    raise RuntimeError(f"export of {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")

    def prepare_bodies(self) -> None:
        import numpy as np
        import orjson

        rng = np.random.default_rng(3)
        d = self.scratch / "bodies"
        d.mkdir(exist_ok=True)
        for name in self.args.models:
            x = rng.random((1, *MODELS[name][2]), dtype=np.float32)
            path = d / f"{name}-rows.json"
            path.write_bytes(orjson.dumps({"instances": x.tolist()}))
            self.bodies[name] = path
            if name == "small":
                v2 = d / "small-v2.json"
                v2.write_bytes(orjson.dumps({"inputs": [
                    {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}))
                self.bodies["small-v2"] = v2

    def measure_limits(self, when: str) -> None:
        """In-process limits; called at the start and at the end of the run, keeping each configuration's best, so
        that another job that happened to run during one of the two passes cannot lower the limit."""
        quick = self.args.quick
        for name in self.args.models:
            batches = MODELS[name][3]
            seconds = (0.6 if quick else 1.5) if name == "small" else (1.0 if quick else 2.0)
            self.say(f"in-process limit of {name} ({when}): batches {batches}, 1-2 threads, {seconds} s each")
            all0, own0, t0 = machine_busy_s(), children_cpu_s(), time.monotonic()
            out = subprocess.run(
                [sys.executable, str(BENCH / "models.py"), "limit", "--model", name, "--path",
                 str(self.models_dir(name) / "1"), "--batches", ",".join(map(str, batches)), "--threads", "1,2",
                 "--seconds", str(seconds)],
                capture_output=True, text=True, env=child_env(), timeout=600,
            )
            if out.returncode != 0:
                raise RuntimeError(f"in-process limit of {name} failed:\n{out.stderr[-4000:]}")
            other = max(0.0, ((machine_busy_s() - all0) - (children_cpu_s() - own0)) / (time.monotonic() - t0))
            measured = json.loads(out.stdout.strip().splitlines()[-1])["results"]
            old = self.limits.get(name)
            merged = {(r["batch"], r["threads"]): r for r in measured}
            if old:
                for r in old["results"]:
                    key = (r["batch"], r["threads"])
                    if r["rows_per_s"] > merged[key]["rows_per_s"]:
                        merged[key] = r
            results = sorted(merged.values(), key=lambda r: (r["batch"], r["threads"]))
            self.limits[name] = {
                "results": results, "best": max(results, key=lambda r: r["rows_per_s"]),
                "other_cpu": (old or {}).get("other_cpu", []) + [other],
            }
            for r in measured:
                print(f"    batch {r['batch']:>4} x {r['threads']} thread(s): {r['rows_per_s']:>10.0f} rows/s "
                      f"({r['ms_per_call']:.2f} ms per call)")
            b = self.limits[name]["best"]
            flag = f"  ! disturbed (> {NOISY} cores)" if other > NOISY else ""
            print(f"    other processes kept {other:.2f} cores busy meanwhile{flag}; best so far: "
                  f"{b['rows_per_s']:.0f} rows/s at batch {b['batch']}, {b['threads']} thread(s)")

    # ------------------------------------------------------------------------------------------------- loads

    def add(self, model: str, server: str, protocol: str, batching: str, c: int, r: dict[str, Any]) -> None:
        row = Row(model, server, protocol, batching, c, r["qps"], r["p50"], r["p90"], r["p99"], r["requests"],
                  r["errors"], r.get("server_cpu", float("nan")), r.get("load_cpu", float("nan")),
                  r.get("other_cpu", float("nan")), r.get("first_error", ""))
        self.rows.append(row)
        err = f"  ERRORS {row.errors}: {row.note}" if row.errors else ""
        print(f"    {model:5} {server:10} {protocol:4} {batching:8} c={c:<3} {row.qps:9.1f} req/s  "
              f"p50 {row.p50:8.2f}  p90 {row.p90:8.2f}  p99 {row.p99:8.2f} ms  cpu: server {row.server_cpu:.2f} "
              f"load {row.load_cpu:.2f} other {row.other_cpu:.2f}{err}", flush=True)

    def rest_points(self, model: str, server: str, batching: str, url: str, body: Path,
                    concurrencies: list[int]) -> None:
        for c in concurrencies:
            r = self.least_disturbed(lambda: run_wrk(url, body, c, self.args.duration, self.args.warmup,
                                                     self.server_pid))
            self.add(model, server, "REST", batching, c, r)
            time.sleep(0.3)

    def engine_points(self, model: str, batching: str, target: Target, concurrencies: list[int]) -> None:
        """pyserving's rows: the same engine as `pyserving bench` (wrk for REST, h2load for gRPC)."""
        for c in concurrencies:
            self.add(model, "pyserving", "REST" if target.protocol == "rest" else "gRPC", batching, c,
                     self.least_disturbed(lambda: self.engine_point(target, c)))
            time.sleep(0.3)

    def generator(self, target: Target) -> LoadGenerator:
        gen = self.generators.get(target)
        if gen is None:
            procs = self.args.grpc_procs or GRPC_PROCS.get(target.model, 1)
            gen = self.generators[target] = LoadGenerator(target, build_payload(target), procs=procs,
                                                          server_pid=self.server_pid, workdir=str(self.scratch))
        return gen

    def engine_point(self, target: Target, c: int) -> dict[str, Any]:
        gen = self.generator(target)
        if self.args.warmup > 0:
            gen.run(LoadSpec(concurrency=c, duration=self.args.warmup, timeout_s=60))
        pt = gen.run(LoadSpec(concurrency=c, duration=self.args.duration, timeout_s=60))
        return {"qps": pt.qps, "p50": pt.p50, "p90": pt.p90, "p99": pt.p99, "requests": pt.requests,
                "errors": pt.errors, "first_error": pt.first_error, "server_cpu": pt.cores(pt.server_cpu_s),
                "load_cpu": pt.cores(pt.client_cpu_s), "other_cpu": pt.cores(pt.other_cpu_s)}

    def close_generators(self) -> None:
        for gen in self.generators.values():
            gen.close()
        self.generators.clear()

    def least_disturbed(self, measure: Any) -> dict[str, Any]:
        """Measure; while other processes disturbed it (othCPU > NOISY), measure again, up to --retries times, and
        keep the least disturbed measurement."""
        best = measure()
        for _ in range(self.args.retries):
            if best["other_cpu"] <= NOISY:
                break
            print(f"      (other processes kept {best['other_cpu']:.2f} cores busy: measuring again)", flush=True)
            again = measure()
            if again["other_cpu"] < best["other_cpu"]:
                best = again
        return best

    # ------------------------------------------------------------------------------------------------ servers

    def run_starlette(self) -> None:
        port = free_port()
        p = self.start_server("starlette", [sys.executable, str(BENCH / "peers" / "starlette_app.py"),
                                str(self.models_dir("small") / "weights.npz"), str(port)], self.logs)
        try:
            wait_ready(p, f"http://127.0.0.1:{port}/readyz", "starlette", self.logs, 60)
            url = f"http://127.0.0.1:{port}/v1/models/small:predict"
            smoke(url, self.bodies["small"].read_bytes(), "starlette")
            self.say("bare starlette + numpy (no TensorFlow, no batching)")
            self.rest_points("small", "starlette", "-", url, self.bodies["small"], self.args.peer_concurrency)
        finally:
            stop(p)

    def run_pyserving(self, model: str, batching: bool) -> None:
        grpc_port, rest_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", f"--model_name={model}",
               f"--model_base_path={self.models_dir(model)}"]
        label = "no"
        if batching:
            params = BATCHING[model]
            f = self.scratch / f"batching-{model}.pbtxt"
            f.write_text("".join(f"{k} {{ value: {v} }}\n" for k, v in params.items()))
            cmd += ["--enable_batching=true", f"--batching_parameters_file={f}"]
            label = "yes"
        cmd += self.args.serve_flags.split()
        name = f"pyserving-{model}-{'batching' if batching else 'nobatching'}"
        p = self.start_server(name, cmd, self.logs, env=child_env(PYTHONPATH=self.src))
        try:
            took = wait_ready(p, f"http://127.0.0.1:{rest_port}/v1/models/{model}", name, self.logs, 180,
                              expect=b"AVAILABLE")
            url = f"http://127.0.0.1:{rest_port}/v1/models/{model}:predict"
            smoke(url, self.bodies[model].read_bytes(), name)
            extra = ""
            if batching:
                extra = " with " + " ".join(f"{k}={v}" for k, v in BATCHING[model].items())
            if self.args.serve_flags:
                extra += f", serve flags {self.args.serve_flags}"
            self.say(f"pyserving {model}, batching {label}{extra} (ready in {took:.1f} s)")
            if "rest" in self.args.protocols:
                self.engine_points(model, label, Target("rest", f"http://127.0.0.1:{rest_port}", model),
                                   self.args.concurrency)
            if "grpc" in self.args.protocols:
                self.engine_points(model, label, Target("grpc", f"127.0.0.1:{grpc_port}", model),
                                   self.args.concurrency)
            if self.args.profile and batching == (self.args.profile_batching == "yes") and model == "small":
                self.profile(p, url, f"127.0.0.1:{grpc_port}", model, label)
        finally:
            self.close_generators()
            stop(p)
        warned = batching and "batching_parameters are not implemented" in log_tail(self.logs, name, 400)
        if warned:
            print(f"    NOTE: {name} logged that batching is not implemented: these 'batching' rows ran unbatched")
            for row in self.rows:
                if row.model == model and row.server == "pyserving" and row.batching == "yes":
                    row.batching = "yes*"
                    self.skipped.append("batching rows marked yes* ran unbatched (engine not in this checkout)")

    def profile(self, p: subprocess.Popen[Any], url: str, target: str, model: str, label: str) -> None:
        """py-spy the server for 10 s under REST, then gRPC load at the target concurrency; summaries into logs/."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            print("    (no py-spy: pip install py-spy to profile)")
            return
        c = TARGET_CONCURRENCY
        for protocol in ("REST", "gRPC"):
            stem = self.logs / f"profile-{model}-batching-{label}-{protocol}"
            self.say(f"profiling pyserving ({model}, batching {label}) for 10 s under {protocol} load, c={c}")
            load: subprocess.Popen[Any] | None = None
            thread = None
            if protocol == "REST":
                load = track(subprocess.Popen(
                    ["wrk", "-t1", f"-c{c}", "-d14s", "-s", str(WRK_SCRIPT), url],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=child_env(BENCH_BODY=str(self.bodies[model])), start_new_session=True))
            else:
                import threading

                gen = self.generator(Target("grpc", target, model))
                thread = threading.Thread(target=gen.run, args=(LoadSpec(concurrency=c, duration=13.0),),
                                          daemon=True)
                thread.start()
            try:
                time.sleep(2)
                spy_out = subprocess.run(
                    [spy, "record", "-d", "10", "-r", "200", "-t", "--nonblocking", "-f", "raw",
                     "-o", f"{stem}.raw", "-p", str(p.pid)], capture_output=True, text=True, timeout=60)
                if spy_out.returncode != 0:
                    print(f"    py-spy failed: {spy_out.stderr[-500:]}")
                summarize_profile(Path(f"{stem}.raw"), Path(f"{stem}.txt"))
                print(f"    profile: {stem}.txt (collapsed stacks: {stem}.raw)")
            finally:
                if load is not None:
                    stop(load, grace=1)
                if thread is not None:
                    thread.join(timeout=30)

    def ensure_venv(self, name: str, packages: list[str]) -> Path | None:
        venv = self.scratch / f"venv-{name}"
        marker = venv / ".bench-installed"
        if marker.exists():
            return venv
        base = getattr(sys, "_base_executable", None) or sys.executable
        self.say(f"one-time set-up: {venv} with {' '.join(packages)} (not part of the timed run)")
        try:
            if not (venv / "bin" / "python").exists():
                subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            print(f"    could not set up {venv}: {exc}; skipping {name}")
            return None
        marker.write_text(" ".join(packages) + "\n")
        return venv

    def peer_version(self, venv: Path, dist: str) -> str:
        out = subprocess.run([str(venv / "bin" / "python"), "-c",
                              f"import importlib.metadata as m; print(m.version({dist!r}))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "?"

    def run_mlserver(self, tf_pin: str) -> None:
        venv = self.ensure_venv("mlserver", ["mlserver", "uvloop<0.22", tf_pin])
        if venv is None:
            self.skipped.append("MLServer (venv set-up failed)")
            return
        self.versions["MLServer"] = self.peer_version(venv, "mlserver")
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        repo = self.scratch / "mlserver-repo"
        shutil.rmtree(repo, ignore_errors=True)
        (repo / "small").mkdir(parents=True)
        (repo / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
            "parallel_workers": 0, "debug": False,
        }))
        (repo / "small" / "model-settings.json").write_text(json.dumps({
            "name": "small", "implementation": "mlserver_runtime.SmallSavedModel",
            "max_batch_size": PEER_MAX_BATCH, "max_batch_time": PEER_DELAY_S,
            "parameters": {"uri": str(self.models_dir("small") / "1")},
        }))
        p = self.start_server("mlserver", [str(venv / "bin" / "mlserver"), "start", str(repo)], self.logs,
                  env=child_env(PYTHONPATH=str(BENCH / "peers")))
        try:
            took = wait_ready(p, f"http://127.0.0.1:{http_port}/v2/models/small/ready", "mlserver", self.logs, 180)
            url = f"http://127.0.0.1:{http_port}/v2/models/small/infer"
            smoke(url, self.bodies["small-v2"].read_bytes(), "mlserver")
            self.say(f"MLServer {self.versions['MLServer']}, parallel_workers=0, adaptive batching "
                     f"max_batch_size={PEER_MAX_BATCH} max_batch_time={PEER_DELAY_S}s (ready in {took:.1f} s)")
            self.rest_points("small", "MLServer", "adaptive", url, self.bodies["small-v2"],
                             self.args.peer_concurrency)
        finally:
            stop(p)

    def run_triton(self, tf_pin: str) -> None:
        venv = self.ensure_venv("pytriton", ["nvidia-pytriton", tf_pin])
        if venv is None:
            self.skipped.append("Triton (venv set-up failed)")
            return
        self.versions["Triton"] = "PyTriton " + self.peer_version(venv, "nvidia-pytriton")
        libdir = subprocess.run([str(venv / "bin" / "python"), "-c",
                                 "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, timeout=60).stdout.strip()
        ld = ":".join(x for x in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if x)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        workspace = self.scratch / "pytriton-workspace"
        shutil.rmtree(workspace, ignore_errors=True)
        p = self.start_server("triton", [str(venv / "bin" / "python"), str(BENCH / "peers" / "pytriton_server.py"),
                             str(self.models_dir("small") / "1"), str(http_port), str(grpc_port), str(metrics_port),
                             "--max-batch-size", str(PEER_MAX_BATCH), "--delay-us", str(int(PEER_DELAY_S * 1e6)),
                             "--instances", str(self.args.triton_instances), "--workspace", str(workspace)],
                  self.logs, env=child_env(LD_LIBRARY_PATH=ld))
        try:
            took = wait_ready(p, f"http://127.0.0.1:{http_port}/v2/models/small/ready", "triton", self.logs, 240)
            url = f"http://127.0.0.1:{http_port}/v2/models/small/infer"
            smoke(url, self.bodies["small-v2"].read_bytes(), "triton")
            self.say(f"Triton ({self.versions['Triton']}), dynamic batching max_batch_size={PEER_MAX_BATCH} "
                     f"max_queue_delay={int(PEER_DELAY_S * 1e6)}us, {self.args.triton_instances} instance(s) "
                     f"(ready in {took:.1f} s)")
            self.rest_points("small", "Triton", "dynamic", url, self.bodies["small-v2"], self.args.peer_concurrency)
        finally:
            stop(p)
            shutil.rmtree(workspace, ignore_errors=True)

    # --------------------------------------------------------------------------------------------------- run

    def run(self) -> None:
        t0 = time.monotonic()
        a = self.args
        self.prepare_models()
        self.prepare_bodies()
        self.measure_limits("start")
        if "small" in a.models:
            self.run_starlette()
        for model in a.models:
            for batching in (False, True):
                self.run_pyserving(model, batching)
        if a.skip_peers:
            self.skipped.append("MLServer and Triton (--skip-peers)")
        elif "small" in a.models:
            tf_pin = f"tensorflow=={importlib.metadata.version('tensorflow')}"
            for peer in (self.run_mlserver, self.run_triton):
                try:
                    peer(tf_pin)
                except RuntimeError as exc:  # one peer failing must not lose the rest of the table
                    print(f"    {peer.__name__[4:]} failed: {exc}")
                    self.skipped.append(f"{peer.__name__[4:]} (failed to run; see {self.logs})")
        self.measure_limits("end")
        self.elapsed = time.monotonic() - t0


# ----------------------------------------------------------------------------------------------------- reporting


def find(rows: list[Row], **kw: Any) -> Row | None:
    return next((r for r in rows if all(getattr(r, k) == v for k, v in kw.items())), None)


def compute_ratios(b: Bench) -> None:
    for r in b.rows:
        if r.server == "pyserving" and r.batching.startswith("yes"):
            base = find(b.rows, model=r.model, server="pyserving", protocol=r.protocol, batching="no",
                        concurrency=r.concurrency)
            if base and base.qps:
                r.ratios["xNoBatch"] = r.qps / base.qps
        lim = b.limits.get(r.model, {}).get("best", {}).get("rows_per_s")
        if lim:
            r.ratios["/limit"] = r.qps / lim
        if r.model == "small":
            for peer in ("starlette", "MLServer", "Triton"):
                base = find(b.rows, model="small", server=peer, concurrency=r.concurrency)
                if base and base is not r and base.qps:
                    r.ratios["/" + peer] = r.qps / base.qps


RATIO_COLUMNS = ["xNoBatch", "/limit", "/starlette", "/MLServer", "/Triton"]


def table(b: Bench) -> str:
    head = (f"{'model':5} {'server':9} {'proto':5} {'batch':8} {'conc':>4} {'QPS':>8} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'p99 ms':>7} {'err':>3} {'srvCPU':>6} {'ldCPU':>5} {'othCPU':>6} " + " ".join(f"{c:>10}" for c in RATIO_COLUMNS))
    lines = [head, "-" * len(head)]
    order = {"pyserving": 0, "starlette": 1, "MLServer": 2, "Triton": 3}
    rows = sorted(b.rows, key=lambda r: (list(MODELS).index(r.model), order.get(r.server, 9),
                                         r.protocol != "REST", r.batching, r.concurrency))
    last = None
    for r in rows:
        key = (r.model, r.server, r.protocol, r.batching)
        if last and key[:3] != last[:3]:
            lines.append("")
        last = key
        ratios = " ".join(f"{r.ratios[c]:>10.3g}" if c in r.ratios else f"{'-':>10}" for c in RATIO_COLUMNS)
        lines.append(f"{r.model:5} {r.server:9} {r.protocol:5} {r.batching:8} {r.concurrency:>4} {r.qps:>8.1f} "
                     f"{r.p50:>7.2f} {r.p90:>7.2f} {r.p99:>7.2f} {r.errors:>3} {r.server_cpu:>6.2f} "
                     f"{r.load_cpu:>5.2f} {r.other_cpu:>5.2f}{'!' if r.other_cpu > NOISY else ' '} {ratios}")
    for name, lim in b.limits.items():
        best = lim["best"]
        lines.append(f"in-process limit, {name} (best of {len(lim.get('other_cpu', []))} passes): "
                     f"{best['rows_per_s']:.0f} rows/s (batch {best['batch']}, "
                     f"{best['threads']} calling thread(s), {best['ms_per_call']:.2f} ms per call)")
    return "\n".join(lines)


def targets(b: Bench) -> list[tuple[str, str]]:
    c = TARGET_CONCURRENCY
    out: list[tuple[str, str]] = []

    def check(what: str, num: Row | None, den: Row | None | float, want: float, den_name: str) -> None:
        if num is None or den is None:
            out.append(("n/a ", f"{what}: not measured in this run"))
            return
        den_qps = den if isinstance(den, float) else den.qps
        ratio = num.qps / den_qps if den_qps else 0.0
        ok = ratio >= want and num.errors == 0
        errs = f", {num.errors} errors" if num.errors else ""
        out.append(("PASS" if ok else "MISS",
                    f"{what}: {ratio:.2f}x (want >= {want:g}x): {num.qps:.0f} vs {den_name} {den_qps:.0f}{errs}"))

    for proto in ("REST", "gRPC"):
        check(f"small {proto} c={c} batching / no batching",
              find(b.rows, model="small", server="pyserving", protocol=proto, batching="yes", concurrency=c),
              find(b.rows, model="small", server="pyserving", protocol=proto, batching="no", concurrency=c),
              3.0, "no batching")
    best_rest = find(b.rows, model="small", server="pyserving", protocol="REST", batching="yes", concurrency=c)
    for peer, want in (("MLServer", 3.0), ("Triton", 2.0), ("starlette", 0.6)):
        check(f"small REST c={c} pyserving batching / {peer}", best_rest,
              find(b.rows, model="small", server=peer, concurrency=c), want, peer)
    lim = b.limits.get("cnn", {}).get("best", {}).get("rows_per_s")
    check(f"cnn gRPC c={c} batching / in-process limit",
          find(b.rows, model="cnn", server="pyserving", protocol="gRPC", batching="yes", concurrency=c),
          float(lim) if lim else None, 0.85, "limit")
    return out


def plot(b: Bench, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); no plot written to {path}")
        return
    models = [m for m in MODELS if any(r.model == m for r in b.rows)]
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 4.8 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        series: dict[str, list[Row]] = {}
        for r in b.rows:
            if r.model == model:
                label = f"{r.server} {r.protocol}" + (f" batching={r.batching}" if r.server == "pyserving" else
                                                      ("" if r.batching == "-" else f" ({r.batching} batching)"))
                series.setdefault(label, []).append(r)
        qps_ax, p99_ax = axes[i]
        for label, rows in series.items():
            rows.sort(key=lambda r: r.concurrency)
            xs = [r.concurrency for r in rows]
            style = "-" if rows[0].server == "pyserving" else "--"
            marker = "o" if rows[0].protocol == "REST" else "s"
            qps_ax.plot(xs, [r.qps for r in rows], style, marker=marker, label=label)
            p99_ax.plot(xs, [r.p99 for r in rows], style, marker=marker, label=label)
        lim = b.limits.get(model, {}).get("best")
        top = max((r.qps for r in b.rows if r.model == model), default=0)
        title = f"{model}: throughput"
        if lim and lim["rows_per_s"] <= 3 * top:
            qps_ax.axhline(lim["rows_per_s"], color="black", linestyle=":", linewidth=1,
                           label=f"in-process limit ({lim['rows_per_s']:.0f}/s, batch {lim['batch']})")
        elif lim:  # the small model's limit is orders of magnitude above any server: say it, do not draw it
            title += f" (in-process limit {lim['rows_per_s']:,.0f} rows/s, off the chart)"
        qps_ax.set_title(title)
        qps_ax.set_xlabel("concurrent requests")
        qps_ax.set_ylabel("requests/s")
        qps_ax.set_ylim(bottom=0)
        p99_ax.set_title(f"{model}: p99 latency")
        p99_ax.set_xlabel("concurrent requests")
        p99_ax.set_ylabel("ms")
        p99_ax.set_yscale("log")
        for ax in (qps_ax, p99_ax):
            ax.set_xticks(sorted({r.concurrency for r in b.rows if r.model == model}))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"pyserving batching benchmark, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def summarize_profile(raw: Path, out: Path, top: int = 18) -> None:
    """py-spy's collapsed stacks -> per thread: share of samples, then the hottest leaf (self) and on-stack frames.

    A leaf `Handle._run (asyncio/events.py:80)` is a callback implemented in C/Cython (grpc.aio's, uvicorn's
    httptools parser): py-spy sees no Python frame below it.
    """
    try:
        text = raw.read_text()
    except OSError:
        out.write_text("no profile recorded\n")
        return
    stacks: dict[str, list[tuple[list[str], int]]] = {}
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        name = frames[0].split(": ", 1)[-1]
        group = name.rstrip("0123456789").rstrip("_") if name.startswith("pyserving-model") else name
        stacks.setdefault(group, []).append((frames[1:], int(n)))
    total = sum(n for group in stacks.values() for _, n in group)
    lines = [f"{total} samples at 200 Hz over 10 s (a thread busy the whole time: ~2000)", "", "threads:"]
    ordered = sorted(stacks.items(), key=lambda kv: -sum(n for _, n in kv[1]))
    for group, entries in ordered:
        lines.append(f"  {sum(n for _, n in entries):6d}  {group}")
    for group, entries in ordered[:3]:
        count = sum(n for _, n in entries)
        if count < total * 0.05:
            continue
        excl: dict[str, int] = {}
        incl: dict[str, int] = {}
        for frames, n in entries:
            if frames:
                excl[frames[-1]] = excl.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
        lines += ["", f"{group}: {count} samples; self time by frame (% of this thread's samples):"]
        lines += [f"  {100 * v / count:5.1f}%  {k}" for k, v in sorted(excl.items(), key=lambda kv: -kv[1])[:top]]
        lines += [f"{group}: on-stack (inclusive), pyserving's and its frameworks' frames:"]
        skip = ("asyncio/runners", "asyncio/base_events.py:6", "<frozen runpy>", "__main__", "cli/main.py",
                "cli/serve.py", "threading.py", "asyncio/events.py:80)")
        hot = [(k, v) for k, v in sorted(incl.items(), key=lambda kv: -kv[1]) if not any(x in k for x in skip)]
        lines += [f"  {100 * v / count:5.1f}%  {k}" for k, v in hot[:top]]
    out.write_text("\n".join(lines) + "\n")


def wait_quiet(limit_s: float, below: float = 0.2, window_s: float = 3.0) -> None:
    t0 = time.monotonic()
    while True:
        a = machine_busy_s()
        time.sleep(window_s)
        busy = (machine_busy_s() - a) / window_s
        if busy < below:
            print(f"machine quiet ({busy:.2f} cores busy) after {time.monotonic() - t0:.0f} s")
            return
        if time.monotonic() - t0 > limit_s:
            print(f"machine still busy ({busy:.2f} cores) after {limit_s:.0f} s: going ahead anyway")
            return


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="shorter points, concurrency 1 and 32 only, peers at 32 only (under ~3 minutes)")
    p.add_argument("--duration", type=float, help="seconds measured per point (default 8, --quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load before each point (default 2, --quick 1)")
    p.add_argument("--plot", type=Path, help="write a PNG: QPS and p99 latency vs concurrency per configuration")
    p.add_argument("--scratch", type=Path, default=Path(os.environ.get("PYSERVING_BENCH_SCRATCH",
                                                                        "/tmp/pyserving-bench")),
                   help="venvs, exported models, bodies, logs and results (default: %(default)s)")
    p.add_argument("--skip-peers", action="store_true", help="no MLServer and no Triton")
    p.add_argument("--models", default="small,cnn", help="comma-separated subset of small,cnn (default: both)")
    p.add_argument("--concurrency", help="comma-separated concurrencies for pyserving (default 1,16,32; --quick 1,32)")
    p.add_argument("--protocols", default="rest,grpc", help="pyserving's protocols to load (default: %(default)s)")
    p.add_argument("--grpc-procs", type=int,
                   help="Python gRPC client processes at concurrency >= 8 when h2load is not installed "
                        "(default: 2 for small, 1 for cnn)")
    p.add_argument("--triton-instances", type=int, default=1, help="model instances in Triton (default: %(default)s)")
    p.add_argument("--retries", type=int, metavar="N",
                   help=f"measure a point again, up to N times, while other processes keep over {NOISY} cores busy "
                        "(default 1; 0 with --quick)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="first wait up to S seconds for other processes to use under 0.2 cores (default: don't)")
    p.add_argument("--commit", metavar="REV",
                   help="benchmark pyserving as committed at REV (git archive into SCRATCH/src-SHA) instead of the "
                        "working tree, e.g. --commit HEAD while others edit the checkout")
    p.add_argument("--batching", action="append", default=[], metavar="MODEL:KEY=VALUE[,KEY=VALUE]",
                   help="override a model's batching parameters, e.g. small:max_batch_size=32,num_batch_threads=2")
    p.add_argument("--serve-flags", default="",
                   help="more `pyserving serve` flags, space-separated, e.g. --serve-flags=--frontend_processes=0 "
                        "(default: none, i.e. serve's defaults: one front-end process per core)")
    p.add_argument("--profile", action="store_true",
                   help="also py-spy pyserving (small model, c=32) for 10 s under REST and 10 s under gRPC load; needs py-spy")
    p.add_argument("--profile-batching", choices=("yes", "no"), default="yes",
                   help="which small-model server --profile records (default: %(default)s)")
    a = p.parse_args(argv)
    a.duration = a.duration or (3.0 if a.quick else 8.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 2.0)
    a.retries = a.retries if a.retries is not None else (0 if a.quick else 1)
    a.concurrency = ([int(c) for c in a.concurrency.split(",")] if a.concurrency
                     else ([1, 32] if a.quick else [1, 16, 32]))
    a.peer_concurrency = [TARGET_CONCURRENCY] if a.quick else a.concurrency
    a.models = [m for m in a.models.split(",") if m]
    a.protocols = [x.strip().lower() for x in a.protocols.split(",") if x.strip()]
    if not a.protocols or set(a.protocols) - {"rest", "grpc"}:
        p.error("--protocols: a comma-separated subset of rest,grpc")
    for spec in a.batching:
        model, _, pairs = spec.partition(":")
        if model not in BATCHING or not pairs:
            p.error(f"--batching {spec!r}: want MODEL:KEY=VALUE[,KEY=VALUE] with MODEL one of {sorted(BATCHING)}")
        for pair in pairs.split(","):
            key, _, value = pair.partition("=")
            if not value.isdigit():
                p.error(f"--batching {spec!r}: {pair!r} is not KEY=INTEGER")
            BATCHING[model][key] = int(value)
    unknown = set(a.models) - set(MODELS)
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; choose from {sorted(MODELS)}")
    if shutil.which("wrk") is None:
        p.error("wrk is not installed: apt-get install -y wrk")
    a.scratch = a.scratch.resolve()
    if a.scratch == REPO or REPO in a.scratch.parents:
        p.error(f"--scratch must be outside the repository ({REPO})")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(stop_all)
    cores = os.cpu_count()
    print(f"pyserving batching benchmark: {cores} cores ({cpu_model()}), Python {platform.python_version()}, "
          f"TensorFlow {importlib.metadata.version('tensorflow')}; scratch {args.scratch}")
    print(f"points: {args.duration:g} s measured after {args.warmup:g} s warm-up; pyserving at concurrency "
          f"{args.concurrency}, baselines at {args.peer_concurrency}; wrk -t1 for REST, "
          "pyserving's load generator (pyserving/tools/loadgen.py: wrk for REST, h2load for gRPC) for pyserving")
    for model in args.models:
        print(f"batching parameters, {model}: " + " ".join(f"{k} {{ value: {v} }}" for k, v in BATCHING[model].items()))
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    bench = Bench(args)
    print(f"pyserving under test: {bench.src_label}")
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", file=sys.stderr)
        stop_all()
        return 130
    finally:
        stop_all()
    compute_ratios(bench)
    print()
    print(f"=== results ({cores} cores, {bench.elapsed:.0f} s; QPS = requests/s = rows/s; latencies in ms; ratios: "
          f"this row's QPS over the named baseline's at the same concurrency, /limit over the model's in-process "
          f"best) ===")
    print(table(bench))
    noisy = [r for r in bench.rows if r.other_cpu > NOISY]
    if noisy:
        print(f"! {len(noisy)} of {len(bench.rows)} points ran while other processes kept more than {NOISY} cores busy "
              f"(othCPU); on a {cores}-core machine those figures are low and noisy: rerun when the machine is quiet")
    if bench.versions:
        print("peers: " + ", ".join(f"{k} {v}" for k, v in bench.versions.items()))
    for s in dict.fromkeys(bench.skipped):
        print(f"skipped: {s}")
    print()
    print(f"=== targets at concurrency {TARGET_CONCURRENCY} ===")
    results = targets(bench)
    for status, text in results:
        print(f"{status} {text}")
    out = args.scratch / "results" / f"batching-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "cores": cores, "cpu": cpu_model(), "args": {k: str(v) for k, v in vars(args).items()},
        "batching": BATCHING, "limits": bench.limits, "rows": [asdict(r) for r in bench.rows],
        "targets": results, "versions": bench.versions,
    }, indent=1))
    print(f"\nresults JSON: {out}")
    if args.plot:
        plot(bench, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
