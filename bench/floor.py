"""How close pyserving's single-process request paths come to their floors: the small model over gRPC (h2load) and
REST (wrk), next to a bare grpc.aio servicer and a bare starlette app doing the least a Python server can do.

    python bench/floor.py [--rounds 3] [--duration 5] [--warmup 1] [--concurrency 32] [--plot floor.png]
                          [--src DIR] [--base-src DIR] [--protocols grpc,rest] [--serve-flags "--flag=value ..."]
                          [--variant NAME=FLAGS ...]

Servers, all started once and kept up (idle ones cost nothing), measured in turn, `--rounds` times:
  * bare-grpc: bench/peers/grpc_servicer.py, grpc.aio decoding the PredictRequest and answering a fixed
    PredictResponse (the gRPC ceiling);
  * bare-grpc-hop: the same servicer making one round trip per call to an echo process (`--hop`): the floor of a
    server whose model lives in another process (pyserving's front ends and model process);
  * bare-starlette: bench/peers/starlette_app.py, uvicorn + starlette + orjson + the model's math in numpy (the
    REST ceiling);
  * bare-starlette-hop: the same app making one round trip per request to an echo process (`--hop`), REST's
    floor of a server with a model process;
  * pyserving: `pyserving serve` of the small model (no batching) from --src (default: this checkout), with serve's
    defaults (one front-end process per core);
  * pyserving[NAME] (with --variant NAME=FLAGS): the same with more flags, e.g. one-process=--frontend_processes=0;
  * pyserving-base (with --base-src DIR): the same from another tree, e.g. the main branch, for before/after.

Load: h2load (32 streams over 4 connections, a length-prefixed PredictRequest as the body) and wrk (`-c32`), both
C, on the same machine. Reported per server and protocol: median req/s, median server CPU per request (utime+stime
of the server's process group over the measured window, from /proc: steadier than req/s on a shared machine),
each as a ratio to the bare peer, and how busy the rest of the machine was (load average, other processes' CPU).
Everything listens on 127.0.0.1, every point is bounded in time, and every process started here is stopped at the
end (on errors and Ctrl-C too). Needs wrk and h2load (Debian: wrk, nghttp2-client); matplotlib for --plot.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from batching import (  # noqa: E402  (bench's own runners: one copy)
    child_env,
    free_port,
    group_cpu_s,
    log_tail,
    machine_busy_s,
    start,
    stop,
    stop_all,
    wait_ready,
)
from security import h2load, setup, wrk  # noqa: E402

PREDICT_GRPC = "/tensorflow.serving.PredictionService/Predict"
PREDICT_REST = "/v1/models/small:predict"
PEER = {"gRPC": "bare-grpc", "REST": "bare-starlette"}
Runner = Callable[[str, Path, str, int, float], tuple[float, float, float, int]]


@dataclass
class Server:
    name: str
    proc: Any
    urls: dict[str, str]
    """protocol -> URL the load generator hits"""


@dataclass
class Point:
    server: str
    protocol: str
    qps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)
    errors: int = 0


def wait_log(proc: Any, logs: Path, name: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; its log ends:\n{log_tail(logs, name)}")
        if text in (logs / f"{name}.log").read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not start in {timeout:.0f} s; its log ends:\n{log_tail(logs, name)}")


def start_servers(args: argparse.Namespace, model: Path, logs: Path) -> list[Server]:
    servers: list[Server] = []
    for suffix, hop in (("", []), ("-hop", ["--hop"])):  # each bare peer alone, then with a round trip per call
        if "grpc" in args.protocols:
            name, port = f"bare-grpc{suffix}", free_port()
            p = start(name, [sys.executable, str(BENCH / "peers" / "grpc_servicer.py"), str(port), *hop], logs)
            wait_log(p, logs, name, "bare grpc.aio servicer on", 60)
            servers.append(Server(name, p, {"gRPC": f"http://127.0.0.1:{port}{PREDICT_GRPC}"}))
        if "rest" in args.protocols:
            name, port = f"bare-starlette{suffix}", free_port()
            p = start(name, [sys.executable, str(BENCH / "peers" / "starlette_app.py"), str(model / "weights.npz"),
                             str(port), *hop], logs)
            wait_ready(p, f"http://127.0.0.1:{port}/readyz", name, logs, 60)
            servers.append(Server(name, p, {"REST": f"http://127.0.0.1:{port}{PREDICT_REST}"}))
    trees = [("pyserving", args.src, "")] + ([("pyserving-base", args.base_src, "")] if args.base_src else [])
    trees += [(f"pyserving[{name}]", args.src, flags) for name, flags in args.variant]
    for name, src, variant_flags in trees:
        grpc_port, rest_port = free_port(), free_port()
        p = start(name, [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", f"--port={grpc_port}",
                         f"--rest_api_port={rest_port}", "--model_name=small", f"--model_base_path={model}",
                         *args.serve_flags.split(), *variant_flags.split()],
                  logs, env=child_env(PYTHONPATH=str(src), TF_CPP_MIN_LOG_LEVEL="3"))
        wait_ready(p, f"http://127.0.0.1:{rest_port}/v1/models/small", name, logs, 180, expect=b"AVAILABLE")
        servers.append(Server(name, p, {"gRPC": f"http://127.0.0.1:{grpc_port}{PREDICT_GRPC}",
                                        "REST": f"http://127.0.0.1:{rest_port}{PREDICT_REST}"}))
    return servers


def measure(run: Runner, url: str, body: Path, pgid: int, args: argparse.Namespace) -> tuple[float, float, float, int]:
    """(req/s, server CPU us per request, cores other processes kept busy, errors) of one point."""
    run(url, body, "", args.concurrency, args.warmup)
    cpu0, busy0, t0 = group_cpu_s(pgid), machine_busy_s(), time.monotonic()
    qps, _, _, errors = run(url, body, "", args.concurrency, args.duration)
    cpu1, busy1, t1 = group_cpu_s(pgid), machine_busy_s(), time.monotonic()
    served = qps * args.duration
    server_s = cpu1 - cpu0
    # machine busy time minus the server's; the load generator's share is counted in "other" too, so this is an
    # upper bound on what unrelated processes took
    other = max(0.0, (busy1 - busy0) - server_s) / (t1 - t0)
    return qps, server_s / served * 1e6 if served else float("nan"), other, errors


def table(points: list[Point], args: argparse.Namespace) -> str:
    med = statistics.median
    by = {(p.server, p.protocol): p for p in points}
    lines = [f"{'server':16s} {'proto':5s} {'req/s':>9s} {'x peer':>7s} {'CPU us/req':>11s} {'peer/CPU':>9s} "
             f"{'other cores':>12s} {'errors':>6s}"]
    for p in points:
        peer = by.get((PEER[p.protocol], p.protocol))
        qps, cpu = med(p.qps), med(p.cpu_us)
        x = f"{qps / med(peer.qps):7.2f}" if peer else f"{'-':>7s}"
        c = f"{med(peer.cpu_us) / cpu:9.2f}" if peer else f"{'-':>9s}"
        lines.append(f"{p.server:16s} {p.protocol:5s} {qps:9.0f} {x} {cpu:11.0f} {c} {med(p.other_cores):12.2f} "
                     f"{p.errors:6d}")
    return "\n".join(lines)


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [pr for pr in ("gRPC", "REST") if any(p.protocol == pr for p in points)]
    servers = list(dict.fromkeys(p.server for p in points))
    by = {(p.server, p.protocol): p for p in points}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(servers)
    for ax, (label, values) in zip(axes, (("requests/s (median)", lambda p: statistics.median(p.qps)),
                                          ("server CPU per request, us (median)",
                                           lambda p: statistics.median(p.cpu_us)))):
        for i, server in enumerate(servers):
            xs = [j + i * width for j, pr in enumerate(protocols) if (server, pr) in by]
            ys = [values(by[(server, pr)]) for pr in protocols if (server, pr) in by]
            ax.bar(xs, ys, width=width, label=server)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(protocols))], protocols)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="every point measured this many times, in turn; medians")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each point")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--protocols", default="grpc,rest", type=lambda s: [x.strip().lower() for x in s.split(",")])
    p.add_argument("--src", type=Path, default=REPO, help="the pyserving tree to serve from (default: this one)")
    p.add_argument("--base-src", type=Path, help="also serve from this tree (before/after in one run)")
    p.add_argument("--serve-flags", default="", help="more `pyserving serve` flags for both trees, space-separated")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   type=lambda v: tuple(v.split("=", 1)) if "=" in v else (v, ""),
                   help="also serve this tree with these extra flags, e.g. --variant 'one-process=--frontend_processes=0'"
                        " (repeatable; the row is named pyserving[NAME])")
    p.add_argument("--plot", type=Path)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pyserving-bench")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install -y wrk nghttp2-client)")
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.scratch.mkdir(parents=True, exist_ok=True)
    logs = args.scratch / "logs"
    logs.mkdir(exist_ok=True)
    model, _, _, body, frame = setup(args.scratch)
    load_before = os.getloadavg()
    print(f"small model, c={args.concurrency}, {args.duration:g} s points after {args.warmup:g} s warm-up, "
          f"{args.rounds} interleaved rounds; load average before: {' '.join(f'{x:.2f}' for x in load_before)}",
          flush=True)
    servers = start_servers(args, model, logs)
    runs: dict[str, tuple[Runner, Path]] = {"gRPC": (h2load, frame), "REST": (wrk, body)}
    points: dict[tuple[str, str], Point] = {}
    try:
        for round_ in range(args.rounds):
            for server in servers:
                for protocol, url in server.urls.items():
                    if protocol.lower() not in args.protocols:
                        continue
                    run, payload = runs[protocol]
                    qps, cpu_us, other, errors = measure(run, url, payload, server.proc.pid, args)
                    point = points.setdefault((server.name, protocol), Point(server.name, protocol))
                    point.qps.append(qps)
                    point.cpu_us.append(cpu_us)
                    point.other_cores.append(other)
                    point.errors += errors
                    print(f"  round {round_ + 1} {server.name:16s} {protocol:5s} {qps:8.0f} req/s  server CPU "
                          f"{cpu_us:6.0f} us/request  other cores {other:.2f}"
                          f"{f'  ERRORS {errors}' if errors else ''}", flush=True)
    finally:
        for server in servers:
            stop(server.proc)
    load_after = os.getloadavg()
    ordered = sorted(points.values(), key=lambda p: (p.protocol != "gRPC", not p.server.startswith("bare"), p.server))
    print(f"\nmedians over {args.rounds} rounds (x peer: req/s over the bare peer's; peer/CPU: the bare peer's CPU per "
          "request over this one's, 1.0 = as cheap as the floor)")
    print(table(ordered, args))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}, after: "
          f"{' '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} cores); other cores: machine busy time "
          "minus the server's over each point, load generator included")
    if args.plot:
        plot(ordered, args.plot, f"small model, c={args.concurrency}, medians of {args.rounds} interleaved rounds")
    return 1 if any(p.errors for p in ordered) else 0


if __name__ == "__main__":
    sys.exit(main())
