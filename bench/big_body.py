"""Does a big body hurt everyone else? Small REST (and gRPC) predicts measured alone and while another client keeps
POSTing a ~50 MB JSON body to the same model, in interleaved rounds, against one `pyserving serve` on 127.0.0.1.

    python bench/big_body.py [--body-mb 50] [--rounds 3] [--seconds 10] [--rate 50] [--plot FILE.png]

The model is y = 2x + 1 on float32 [-1, N] (exported here with TensorFlow, once, under --scratch). Small requests
are one row, sent by --clients REST threads and --grpc-clients gRPC threads at a fixed total --rate (gRPC: the
same server's other front end, to see whether it is hurt too); a request's latency counts from the moment it was
due, not from when a blocked thread got round to sending it, so a stalled server shows up as the wait it caused
rather than as one slow request. The big bodies come from a separate process (so their upload and download do not
share this process's GIL with the small client), back to back for the whole "big" window; the window lasts until the
last big body in flight has its answer, and only then does the next "alone" window start.

Prints, per condition and protocol, p50 / p99 / max latency of the small requests, how many and how many failed,
and server CPU; then each big body's upload, wait for the answer's headers, download and status; writes a PNG.
Everything listens on 127.0.0.1 and stops by itself (also on Ctrl-C); the default run takes about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL = "affine"
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------- shared with soak.py

def export_affine(target: Path, width: int, bias: float = 1.0) -> Path:
    """A SavedModel at `target`: serving_default y = 2x + bias (x float32 [-1, width]) and `strlen` n =
    tf.strings.length(s) (s string [-1]), so base64 input has a signature to be checked against."""
    import tensorflow as tf

    class Affine(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 2.0 * x + bias}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
        def strlen(self, s: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"n": tf.strings.length(s)}

    module = Affine()
    # A name that is not all digits: a server polling the parent never sees a half-written version.
    staged = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(staged), signatures={"serving_default": module.serve, "strlen": module.strlen})
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staged, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log: Path, ready: list[str], rest_port: int, timeout: float = 180.0,
                 src: Path = REPO) -> subprocess.Popen[bytes]:
    """`python -m pyserving serve ARGS` in its own process group, ready once GET /v1/models/M says AVAILABLE for
    every M in `ready`."""
    # PYTHONSAFEPATH: else `python -m` run from another pyserving tree would import that tree, not `src`
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyserving", "serve", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    pending = list(ready)
    try:
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} while starting; see {log}:\n"
                                   + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout:g} s; see {log}")
            if model_available(rest_port, pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.2)
    except BaseException:  # Ctrl-C too: it runs in its own session, so nobody else would stop it
        stop_server(proc)
        raise
    return proc


def model_available(rest_port: int, model: str, version: int | None = None) -> bool:
    """Whether GET /v1/models/MODEL lists an AVAILABLE version (`version`, if given)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/{model}", timeout=5) as r:
            statuses = json.loads(r.read())["model_version_status"]
    except (OSError, ValueError, KeyError):
        return False
    return any(s["state"] == "AVAILABLE" and (version is None or int(s["version"]) == version) for s in statuses)


def stop_server(proc: subprocess.Popen[bytes], grace: float = 30.0) -> tuple[int | None, float]:
    """SIGTERM the server's process group and wait; returns (exit status, seconds it took). A server still there
    after `grace` is KILLed and reported with status None."""
    t0 = time.monotonic()
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        code: int | None = proc.wait(grace)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - t0
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its group
    except ProcessLookupError:
        pass
    if code is None:
        proc.wait(10)
    return code, took


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy so far, whoever used them (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / TICK


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# ------------------------------------------------------------------------------------------------ the big sender

def big_sender(port: int, body_path: Path) -> int:
    """Child process: read the body, say `ready`, wait for a deadline on stdin (a CLOCK_MONOTONIC time, shared by
    every process), then POST the body back to back until then, one JSON line per body on stdout."""
    body = body_path.read_bytes()
    path = f"/v1/models/{MODEL}:predict"
    print("ready", flush=True)
    deadline = float(sys.stdin.readline())
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        record: dict[str, Any] = {"start": t0, "bytes": len(body)}
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            t_sent = time.monotonic()
            resp = conn.getresponse()
            t_head = time.monotonic()
            answer = resp.read()
            t_done = time.monotonic()
            record.update(status=resp.status, upload_s=t_sent - t0, wait_s=t_head - t_sent,
                          download_s=t_done - t_head, total_s=t_done - t0, answer_bytes=len(answer))
            if resp.status != 200:
                record["error"] = answer[:300].decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            record.update(status=0, total_s=time.monotonic() - t0, error=repr(exc))
            if conn is not None:
                conn.close()
            conn = None
        print(json.dumps(record), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ the small client

@dataclass
class Sample:
    due: float  # when it should have been sent (CLOCK_MONOTONIC)
    latency_s: float  # answer time minus `due`
    ok: bool
    condition: str
    round: int
    protocol: str


@dataclass
class Window:
    condition: str
    round: int
    start: float
    end: float = 0.0
    server_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    bigs: list[dict[str, Any]] = field(default_factory=list)


class SmallClient:
    """One thread per entry of `protocols` ("REST" or "gRPC"), together sending one-row predicts at `rate` per
    second, evenly spaced, while `active` is set."""

    def __init__(self, rest_port: int, grpc_port: int, width: int, rate: float, protocols: list[str]) -> None:
        self.rest_port, self.grpc_port, self.rate, self.protocols = rest_port, grpc_port, rate, protocols
        self.width = width
        self.body = json.dumps({"instances": [[0.5] * width]}).encode()
        self.expect = [2.0] * width
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.condition, self.round = "", 0
        self.active = threading.Event()
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(i, proto), daemon=True)
                         for i, proto in enumerate(protocols)]

    def start(self) -> None:
        for w in self._workers:
            w.start()

    def close(self) -> None:
        self.done.set()
        self.active.set()
        for w in self._workers:
            w.join(30)

    def _rest_caller(self) -> Any:
        conn: list[http.client.HTTPConnection | None] = [None]

        def call() -> str | None:
            try:
                if conn[0] is None:
                    conn[0] = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=60)
                conn[0].request("POST", f"/v1/models/{MODEL}:predict", self.body, {"Content-Type": "application/json"})
                resp = conn[0].getresponse()
                answer = resp.read()
                if resp.status == 200 and json.loads(answer)["predictions"] == [self.expect]:
                    return None
                return f"REST {resp.status} {answer[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                if conn[0] is not None:
                    conn[0].close()
                conn[0] = None
                return f"REST {exc!r}"

        return call

    def _grpc_caller(self) -> Any:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}"))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        x = request.inputs["x"]
        x.dtype = 1  # DT_FLOAT
        x.tensor_shape.dim.add(size=1)
        x.tensor_shape.dim.add(size=self.width)
        x.float_val.extend([0.5] * self.width)

        def call() -> str | None:
            try:
                y = stub.Predict(request, timeout=60).outputs["y"]
                got = list(y.float_val) or [float(v) for v in memoryview(y.tensor_content).cast("f")]
                return None if got == self.expect else f"gRPC answer {got}"
            except grpc.RpcError as exc:
                return f"gRPC {exc.code().name} {exc.details()!r}"

        return call

    def _run(self, index: int, protocol: str) -> None:
        call = self._grpc_caller() if protocol == "gRPC" else self._rest_caller()
        period = len(self.protocols) / self.rate
        while not self.done.is_set():
            self.active.wait()
            # Threads start out of phase so that together they send evenly spaced requests.
            due = time.monotonic() + index / self.rate
            while self.active.is_set() and not self.done.is_set():
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                    continue
                condition, rnd = self.condition, self.round
                error = call()
                done = time.monotonic()
                with self._lock:
                    self.samples.append(Sample(due, done - due, error is None, condition, rnd, protocol))
                    if error is not None:
                        self.errors.append(error)
                due += period


# ------------------------------------------------------------------------------------------------------ the run

def write_body(path: Path, megabytes: float, width: int) -> int:
    """TF Serving's row format, `{"instances": [[w floats], ...]}`, of about `megabytes` MB; returns the rows."""
    import numpy as np

    rng = np.random.default_rng(0)
    block_rows = 1000
    block = ",".join("[" + ",".join(f"{v:.7g}" for v in row) + "]"
                     for row in rng.standard_normal((block_rows, width), dtype=np.float32)).encode()
    copies = max(1, round(megabytes * 1e6 / (len(block) + 1)))
    with path.open("wb") as f:
        f.write(b'{"instances":[')
        for i in range(copies):
            f.write(block if i == 0 else b"," + block)
        f.write(b"]}")
    return copies * block_rows


def run_window(client: SmallClient, server: subprocess.Popen[bytes], condition: str, rnd: int, seconds: float,
               sender_cmd: list[str] | None, big_timeout: float) -> Window:
    sender = None
    if sender_cmd is not None:
        sender = subprocess.Popen(sender_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
        assert sender.stdin is not None and sender.stdout is not None
        if sender.stdout.readline().strip() != "ready":
            raise RuntimeError("the big-body sender did not start")
    own0, busy0, srv0 = proc_cpu_s(os.getpid()), machine_busy_s(), proc_cpu_s(server.pid)
    kids0 = children_cpu_s()
    window = Window(condition, rnd, time.monotonic())
    client.condition, client.round = condition, rnd
    client.active.set()
    if sender is not None:
        assert sender.stdin is not None and sender.stdout is not None
        try:
            sender.stdin.write(f"{window.start + seconds}\n")
            sender.stdin.flush()  # communicate() closes it
            out, _ = sender.communicate(timeout=seconds + big_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(sender.pid, signal.SIGKILL)
            out, _ = sender.communicate()
            window.bigs.append({"status": -1, "error": f"still in flight {big_timeout:g} s after the window"})
        finally:
            if sender.poll() is None:  # Ctrl-C or SIGTERM while waiting: it is in its own session, stop it here
                os.killpg(sender.pid, signal.SIGKILL)
                sender.wait()
        window.bigs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    else:
        time.sleep(seconds)
    client.active.clear()
    window.end = time.monotonic()
    window.server_cpu_s = proc_cpu_s(server.pid) - srv0
    sender_cpu = children_cpu_s() - kids0  # the sender, reaped by now (the server is not: it is still running)
    window.other_cpu_s = max(0.0, machine_busy_s() - busy0 - window.server_cpu_s
                             - (proc_cpu_s(os.getpid()) - own0) - sender_cpu)
    time.sleep(0.5)  # the last small requests' answers, before the next window's condition is set
    return window


def report(windows: list[Window], samples: list[Sample], errors: list[str], body_mb: float) -> list[str]:
    lines = []
    protocols = [p for p in ("REST", "gRPC") if any(s.protocol == p for s in samples)]
    lines.append("condition proto     n  failed   p50 ms   p90 ms   p99 ms   max ms   srv cores  other cores")
    for cond in ("alone", "big"):
        ws = [w for w in windows if w.condition == cond]
        span = sum(w.end - w.start for w in ws) or float("nan")
        cores = (f"{sum(w.server_cpu_s for w in ws) / span:11.2f} {sum(w.other_cpu_s for w in ws) / span:12.2f}")
        for proto in protocols:
            lat = [s.latency_s * 1000 for s in samples if (s.condition, s.protocol) == (cond, proto) and s.ok]
            failed = sum(1 for s in samples if (s.condition, s.protocol) == (cond, proto) and not s.ok)
            lines.append(f"{cond:9s} {proto:5s} {len(lat) + failed:5d} {failed:7d} {pct(lat, .5):8.2f} "
                         f"{pct(lat, .9):8.2f} {pct(lat, .99):8.2f} {max(lat, default=float('nan')):8.1f} {cores}")
            cores = ""
    lines.append("(latency from when each request was due; 'srv cores': the server's CPU over the windows' length; "
                 "'other cores': everything on the machine but the server and this benchmark)")
    lines.append("")
    lines.append("per round, p50 / p99 ms   " + "".join(f"{c + ' ' + p:>22s}" for c in ("alone", "big")
                                                        for p in protocols) + "   big bodies")
    for rnd in sorted({w.round for w in windows}):
        cells = []
        for cond in ("alone", "big"):
            for proto in protocols:
                lat = [s.latency_s * 1000 for s in samples
                       if (s.condition, s.protocol, s.round) == (cond, proto, rnd) and s.ok]
                cells.append(f"{pct(lat, .5):10.2f} / {pct(lat, .99):8.2f}")
        n_big = sum(len(w.bigs) for w in windows if w.round == rnd)
        lines.append(f"round {rnd:<3d}             " + "".join(cells) + f"   {n_big:10d}")
    bigs = [b for w in windows for b in w.bigs]
    lines.append("")
    failed = sum(1 for b in bigs if b.get("status") != 200)
    lines.append(f"big bodies ({body_mb:g} MB):  n {len(bigs)}  failed {failed}")
    good = [b for b in bigs if b.get("status") == 200]
    if good:
        lines.append("               median      max   (seconds)")
        for key, name in (("upload_s", "upload"), ("wait_s", "to headers"), ("download_s", "download"),
                          ("total_s", "total")):
            values = [b[key] for b in good]
            lines.append(f"  {name:11s} {statistics.median(values):8.2f} {max(values):8.2f}")
        lines.append(f"  answer size {statistics.median(b['answer_bytes'] for b in good) / 1e6:.1f} MB")
    for b in bigs:
        if b.get("status") != 200:
            lines.append(f"  failed big body: status {b.get('status')} {b.get('error', '')[:200]}")
    if errors:
        lines.append("")
        lines.append(f"small-request errors ({len(errors)}), first few:")
        lines += [f"  {e}" for e in errors[:5]]
    return lines


def plot(path: Path, windows: list[Window], samples: list[Sample], body_mb: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib); no plot written to {path}")
        return
    t0 = windows[0].start
    fig, (cdf, line) = plt.subplots(1, 2, figsize=(13, 4.5))
    styles = {"REST": "-", "gRPC": "--"}
    for cond, color in (("alone", "tab:blue"), ("big", "tab:red")):
        for proto, style in styles.items():
            lat = sorted(s.latency_s * 1000 for s in samples if (s.condition, s.protocol) == (cond, proto) and s.ok)
            if lat:
                cdf.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], style, color=color,
                         label=f"{cond} {proto} (n={len(lat)}, p99 {pct(lat, .99):.1f} ms)")
    cdf.set_xscale("log")
    cdf.set_xlabel("small predict latency, ms (log)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_title("latency CDF")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(loc="lower right")
    for w in windows:
        for b in w.bigs:
            if "start" in b and "total_s" in b:
                line.axvspan(b["start"] - t0, b["start"] - t0 + b["total_s"], color="tab:red", alpha=0.12, lw=0)
    for cond, color in (("alone", "tab:blue"), ("big", "tab:red")):
        for proto, marker in (("REST", "o"), ("gRPC", "x")):
            pts = [(s.due - t0, s.latency_s * 1000) for s in samples
                   if (s.condition, s.protocol) == (cond, proto) and s.ok]
            if pts:
                line.scatter([p[0] for p in pts], [p[1] for p in pts], s=3, marker=marker, color=color,
                             label=f"{cond} {proto}", linewidths=0.6)
    line.set_yscale("log")
    line.set_xlabel("time, s (shaded: a big body in flight)")
    line.set_ylabel("latency, ms (log)")
    line.set_title("small predicts over time")
    line.legend(loc="upper right", markerscale=4)
    fig.suptitle(f"one-row predicts alone vs while {body_mb:g} MB JSON bodies are POSTed (REST) to the same model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--body-mb", type=float, default=50.0, help="size of the big JSON body, MB (default 50)")
    p.add_argument("--width", type=int, default=16, help="the model's row width N (x is float32 [-1, N])")
    p.add_argument("--rounds", type=int, default=3, help="alone / big window pairs, interleaved (default 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each window (default 10)")
    p.add_argument("--rate", type=float, default=50.0, help="small requests per second, all threads (default 50)")
    p.add_argument("--clients", type=int, default=2, help="REST small-request client threads (default 2)")
    p.add_argument("--grpc-clients", type=int, default=1,
                   help="gRPC small-request client threads (default 1; the same server, another front end)")
    p.add_argument("--max-request-bytes", type=int, default=256 << 20,
                   help="the server's --max_request_bytes (default 256 MiB, so the big body is accepted)")
    p.add_argument("--big-timeout", type=float, default=120.0,
                   help="seconds a big body may still be in flight after its window before it counts as hung")
    p.add_argument("--plot", type=Path, help="PNG to write (default: big_body.png in the scratch folder)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pyserving-bench")
    p.add_argument("--_big-sender", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._big_sender:
        return big_sender(int(args._big_sender[0]), Path(args._big_sender[1]))

    signal.signal(signal.SIGTERM, _on_sigterm)
    scratch = args.scratch / "big_body"
    (scratch / "logs").mkdir(parents=True, exist_ok=True)
    args.plot = args.plot or scratch / "big_body.png"
    model_dir = scratch / "models" / f"{MODEL}-w{args.width}"
    if not (model_dir / "1").is_dir():
        print(f"exporting the model to {model_dir}/1 ...", flush=True)
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import big_body; "
                        "big_body.export_affine(big_body.Path(sys.argv[2]), int(sys.argv[3]))",
                        str(BENCH), str(model_dir / "1"), str(args.width)], check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    body_path = scratch / f"body-{args.body_mb:g}MB-w{args.width}.json"
    if not body_path.exists():
        rows = write_body(body_path, args.body_mb, args.width)
        print(f"big body: {body_path} ({body_path.stat().st_size / 1e6:.1f} MB, {rows} rows)", flush=True)
    rest, grpc_port = free_port(), free_port()
    log = scratch / "logs" / "server.log"
    server = start_server(["--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest}",
                           f"--model_name={MODEL}", f"--model_base_path={model_dir}",
                           f"--max_request_bytes={args.max_request_bytes}"], log, [MODEL], rest)
    sender_cmd = [sys.executable, str(Path(__file__).resolve()), "--_big-sender", str(rest), str(body_path)]
    client = SmallClient(rest, grpc_port, args.width, args.rate, ["REST"] * args.clients + ["gRPC"] * args.grpc_clients)
    if args.grpc_clients:
        # TensorFlow's protos come with TensorFlow: import it now, not while the first window is measured.
        importlib.import_module("tensorflow_serving.apis.prediction_service_pb2_grpc")
    windows: list[Window] = []
    try:
        client.start()
        client.condition = "warmup"
        client.active.set()
        time.sleep(2)
        client.active.clear()
        time.sleep(0.5)
        print(f"{os.cpu_count()} cores; {args.rounds} rounds of {args.seconds:g} s alone then {args.seconds:g} s with "
              f"{args.body_mb:g} MB bodies; small predicts at {args.rate:g}/s from "
              f"{args.clients} REST + {args.grpc_clients} gRPC threads", flush=True)
        for rnd in range(1, args.rounds + 1):
            for cond in ("alone", "big"):
                w = run_window(client, server, cond, rnd, args.seconds, sender_cmd if cond == "big" else None,
                               args.big_timeout)
                windows.append(w)
                lat = [s.latency_s * 1000 for s in client.samples if s.condition == cond and s.round == rnd]
                print(f"  round {rnd} {cond:5s} {w.end - w.start:5.1f} s  n {len(lat):4d}  p50 {pct(lat, .5):7.2f} "
                      f"ms  p99 {pct(lat, .99):8.2f} ms  big bodies {len(w.bigs)}", flush=True)
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited ({server.returncode}); see {log}")
    finally:
        client.close()
        code, took = stop_server(server)
        print(f"server stopped: exit status {code} after {took:.1f} s"
              + ("" if code == 0 else "  <-- not a clean exit"))
    samples = [s for s in client.samples if s.condition in ("alone", "big")]
    print()
    print("\n".join(report(windows, samples, client.errors, args.body_mb)))
    if args.plot:
        plot(args.plot, windows, samples, args.body_mb)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted (the server and the big-body sender were stopped)", file=sys.stderr)
        raise SystemExit(130) from None
