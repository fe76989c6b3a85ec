"""What TLS and authentication cost per request: the small model served four ways in one run (plain, API-key auth,
TLS, TLS + auth), REST driven by wrk and gRPC by h2load, both C load generators, at one concurrency.

    python bench/security.py [--duration 8] [--warmup 2] [--concurrency 32] [--rounds 3] [--plot security.png]

Ratios are against the plain server measured in the same run; the four servers are measured in turn, `--rounds`
times, and medians reported, so a noisy minute hits every configuration. Besides QPS it reports the server's CPU
time per request (from /proc), which a busy machine disturbs less. Auth is an API key (SHA-256 + constant-time compare
per request); TLS is TF Serving's SSLConfig (--ssl_config_file) on both ports. Needs wrk and h2load (Debian:
wrk, nghttp2-client), trustme, and matplotlib for --plot. Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
KEY = "bench-" + "k" * 40
CONFIGS = {"plain": (False, False), "auth": (False, True), "tls": (True, False), "tls+auth": (True, True)}


@dataclass
class Row:
    config: str
    protocol: str
    qps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(scratch: Path) -> tuple[Path, Path, Path, Path, Path]:
    """The small model, TLS files, an auth config, and the two request bodies (JSON, gRPC frame)."""
    import trustme

    model = scratch / "models" / "small"
    if not (model / "1").is_dir():
        subprocess.run([sys.executable, str(BENCH / "models.py"), "export-small", str(model)], check=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ssl_config = scratch / "ssl.config"
    pem = lambda blob: json.dumps(blob.decode())  # noqa: E731
    ssl_config.write_text(f"server_key: {pem(leaf.private_key_pem.bytes())}\n"
                          f"server_cert: {pem(b''.join(b.bytes() for b in leaf.cert_chain_pems))}\n")
    auth = scratch / "auth.config"
    auth.write_text(f'api_key {{ name: "bench" sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}" '
                    'scope: "small:predict" }\n')
    x = np.random.default_rng(0).random((1, 16), dtype=np.float32)
    body = scratch / "body.json"
    body.write_text(json.dumps({"instances": x.tolist()}))
    from pyserving.codecs.tfserving.protos import predict_pb2
    from pyserving.codecs.tfserving.tensor import fill_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "small"
    fill_proto(request.inputs["x"], x, tensor_content=True)
    payload = request.SerializeToString()
    frame = scratch / "predict.grpc"
    frame.write_bytes(struct.pack(">BI", 0, len(payload)) + payload)  # gRPC's length-prefixed message
    return model, ssl_config, auth, body, frame


def start(model: Path, tls: Path | None, auth: Path | None, log: Path, *, src: Path = REPO,
          extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int, int]:
    """`pyserving serve` of the small model from the pyserving tree `src`; returns (process, REST, gRPC port)."""
    rest, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", f"--port={grpc_port}",
           f"--rest_api_port={rest}", "--model_name=small", f"--model_base_path={model}", *extra]
    cmd += [f"--ssl_config_file={tls}"] if tls else []
    cmd += [f"--auth_config_file={auth}"] if auth else []
    # PYTHONSAFEPATH: `python -m` would put the current directory first on sys.path, and run from the repository
    # root that tree would shadow `src` (bench/ab_commits.py then compared the checkout with itself)
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONSAFEPATH="1")
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {log}")
        if "Exporting HTTP/REST API" in log.read_text(errors="replace"):
            return proc, rest, grpc_port
        time.sleep(0.2)
    raise RuntimeError("server did not start in 120 s")


def cpu_s(pid: int) -> float:
    """CPU seconds the server process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def wrk(url: str, body: Path, header: str, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    env = dict(os.environ, BENCH_BODY=str(body), BENCH_HEADER=header)
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s",
                          str(REPO / "pyserving" / "tools" / "wrk_post.lua"), url], capture_output=True, text=True, env=env,
                         timeout=seconds + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    r = json.loads(line[len("BENCH_JSON "):])
    return (r["requests"] / (r["duration_us"] / 1e6), r["p50_us"] / 1000, r["p99_us"] / 1000,
            sum(r["errors"].values()))


def h2load(url: str, frame: Path, header: str, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    """gRPC unary calls over 4 connections, `concurrency` streams in all (what one grpc client channel does)."""
    conns = 4
    cmd = ["h2load", f"-D{max(1, round(seconds))}", f"-c{conns}", f"-m{max(1, concurrency // conns)}",
           "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    cmd += ["-H", header] if header else []
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"(\d+) failed", out).group(1))  # type: ignore[union-attr]
    status = re.search(r"status codes: (\d+) 2xx", out)
    ok = int(status.group(1)) if status else 0
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))  # type: ignore[union-attr]
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    mean_ms = _ms(mean.group(1)) if mean else float("nan")
    return qps, mean_ms, float("nan"), failed + (done - ok)


def bar_plot(path: Path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    """Grouped bars: one group per label in `groups`, one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(groups))], values, width=width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def _median(rows: list[Row]) -> Row:
    med = lambda values: statistics.median(values)  # noqa: E731
    return Row(rows[0].config, rows[0].protocol, med([r.qps for r in rows]), med([r.p50_ms for r in rows]),
               med([r.p99_ms for r in rows]), sum(r.errors for r in rows), med([r.cpu_us for r in rows]))


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    return value / 1000 if text.endswith("us") else value * 1000 if text.endswith("s") and not text.endswith("ms") \
        else value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="configurations measured in turn this many times; medians")
    p.add_argument("--plot", type=Path)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pyserving-bench")
    args = p.parse_args()
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install -y wrk nghttp2-client)")
    args.scratch.mkdir(parents=True, exist_ok=True)
    model, ssl_config, auth_config, body, frame = setup(args.scratch)
    rows: list[Row] = []
    print(f"small model, c={args.concurrency}, {args.duration:g} s per point after {args.warmup:g} s warm-up; "
          f"{os.cpu_count()} cores")
    for name, (tls, auth) in [item for _ in range(args.rounds) for item in CONFIGS.items()]:
        proc, rest, grpc_port = start(model, ssl_config if tls else None, auth_config if auth else None,
                                      args.scratch / f"security-{name}.log")
        try:
            scheme = "https" if tls else "http"
            header = f"Authorization: Bearer {KEY}" if auth else ""
            rest_url = f"{scheme}://127.0.0.1:{rest}/v1/models/small:predict"
            grpc_url = f"{scheme}://127.0.0.1:{grpc_port}/tensorflow.serving.PredictionService/Predict"
            for protocol, run, url, payload in (("REST", wrk, rest_url, body), ("gRPC", h2load, grpc_url, frame)):
                run(url, payload, header, args.concurrency, args.warmup)
                cpu0 = cpu_s(proc.pid)
                qps, p50, p99, errors = run(url, payload, header, args.concurrency, args.duration)
                cpu_us = (cpu_s(proc.pid) - cpu0) / (qps * args.duration) * 1e6
                rows.append(Row(name, protocol, qps, p50, p99, errors, cpu_us))
                print(f"  {name:9s} {protocol:5s} {qps:9.1f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                      f"errors {errors}  server CPU {cpu_us:5.0f} us/request", flush=True)
        finally:
            stop(proc)
    rows = [_median([r for r in rows if (r.config, r.protocol) == key])
            for key in dict.fromkeys((r.config, r.protocol) for r in rows)]
    print(f"\nmedians of {args.rounds} interleaved rounds")
    base = {r.protocol: r for r in rows if r.config == "plain"}
    print("\nconfig    proto      QPS   p50 ms   p99 ms  errors  QPS x plain  CPU us/req  CPU x plain")
    for r in rows:
        b = base[r.protocol]
        print(f"{r.config:9s} {r.protocol:5s} {r.qps:8.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d}  "
              f"{r.qps / b.qps:11.3f}  {r.cpu_us:10.0f}  {r.cpu_us / b.cpu_us:11.3f}")
    print("(gRPC latency is h2load's mean time per request; h2load prints no percentiles)")
    if args.plot:
        names = list(CONFIGS)
        bar_plot(args.plot, names, {protocol: [next(r.qps for r in rows if (r.config, r.protocol) == (n, protocol))
                                               for n in names] for protocol in ("REST", "gRPC")},
                 "requests/s (median)", f"small model, c={args.concurrency}: cost of TLS and API-key auth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
