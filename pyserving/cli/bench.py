"""`pyserving bench`: load any TF Serving-compatible server over REST or gRPC and print the article's table.

    pyserving bench --rest http://127.0.0.1:8501 --grpc 127.0.0.1:8500 --model cnn --concurrency 1,8,32 \
        --duration 10 --plot bench.png

The engine is pyserving/tools/loadgen.py (wrk, h2load, or Python client processes); this module parses flags,
sweeps the points, shows progress and writes the table, the JSON and the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pyserving.tools.loadgen import LoadError, LoadGenerator, LoadSpec, Point, Target, build_payload

DESCRIPTION = """\
Load a TF Serving-compatible server (pyserving, TF Serving, anything speaking its REST or gRPC API) and print
QPS, latency p50/p90/p99 and errors per load point, with the CPU the load generator itself used (and the server's,
when it runs on this machine).

Load: closed loop (--concurrency N[,N...]: N requests always in flight) or open loop (--rate R[,R...]: requests
started R times a second whatever the answers, latency counted from the planned start); for --duration seconds
or --requests in all. Requests: random tensors shaped by the model's metadata (-1 dimensions become --batch rows)
or --input FILE (a TF Serving predict request JSON).

Generators: wrk for REST and h2load for gRPC when installed (C programs: they leave the CPU to the server), else,
or with --client python, Python client processes (--procs). wrk runs closed-loop timed REST points only; h2load
cannot see gRPC statuses, so one gRPC call checks the request first (on failure the Python clients run instead).
"""


def _numbers(text: str, kind: type, flag: str, minimum: float = 1e-9) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: want comma-separated numbers, e.g. 1,8,32") from None
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: want numbers >= {minimum:g}, e.g. 1,8,32")
    return values


def add_target_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rest", metavar="URL", help="the server's REST address, e.g. http://127.0.0.1:8501")
    p.add_argument("--grpc", metavar="HOST:PORT", help="the server's gRPC address, e.g. 127.0.0.1:8500")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--signature", default="serving_default", help="signature name (default: %(default)s)")
    p.add_argument("--model-version", type=int, help="a specific version (default: the latest)")
    p.add_argument("--batch", type=int, default=1, help="rows per request for -1 dimensions (default: 1)")
    p.add_argument("--input", metavar="FILE", help="a TF Serving predict request JSON to send instead of random data")
    p.add_argument("--client", choices=("auto", "native", "python"), default="auto",
                   help="auto: wrk/h2load when they fit, else Python; native: wrk/h2load or fail; python: Python "
                        "client processes only (default: auto)")
    p.add_argument("--procs", type=int, default=0, help="Python client processes (default: min(2, cores))")
    p.add_argument("--threads", type=int, default=1, help="wrk/h2load threads (default 1: leave the CPU to the server)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take (default: %(default)s)")
    p.add_argument("--server-pid", type=int, help="the server's pid, for its CPU use (default: found by port)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="an API key or JWT (first line of FILE; or the PYSERVING_TOKEN environment variable) for a "
                        "server with --auth_config_file, sent as Authorization: Bearer")


def targets_from(args: argparse.Namespace, p: argparse.ArgumentParser) -> list[Target]:
    out = []
    token = os.environ.get("PYSERVING_TOKEN", "")
    if args.token_file:
        try:
            token = args.token_file.read_text().strip().splitlines()[0]
        except (OSError, IndexError) as exc:
            p.error(f"--token-file {args.token_file}: {exc or 'empty'}")
    if args.rest:
        url = args.rest if "://" in args.rest else f"http://{args.rest}"
        out.append(Target("rest", url, args.model, args.signature, args.model_version, token=token))
    if args.grpc:
        out.append(Target("grpc", args.grpc, args.model, args.signature, args.model_version, token=token))
    if not out:
        p.error("give --rest URL and/or --grpc HOST:PORT")
    if args.batch < 1:
        p.error("--batch: at least 1")
    return out


class ProgressLine:
    """One `\\r` line on stderr while a point runs, when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = ""

    def __call__(self, fraction: float) -> None:
        if self.enabled:
            width = 30
            done = int(fraction * width)
            sys.stderr.write(f"\r  {self.label:<28} [{'#' * done}{'.' * (width - done)}] {100 * fraction:5.1f}%")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 75 + "\r")
            sys.stderr.flush()


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(points: Sequence[Point], extra: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """The article's table: QPS, latency percentiles and errors, then what each side's CPU cost per request.
    `extra` adds leading columns (name, one value per point)."""
    head = [name for name, _ in extra] + ["protocol", "load", "generator", "requests", "errors", "QPS", "p50 ms",
                                          "p90 ms", "p99 ms", "client CPU ms/req (cores)",
                                          "server CPU ms/req (cores)", "other cores"]
    rows = []
    for i, pt in enumerate(points):
        client = f"{_fmt(pt.per_request_ms(pt.client_cpu_s), 3)} ({_fmt(pt.cores(pt.client_cpu_s))})"
        server = ("-" if math.isnan(pt.server_cpu_s)
                  else f"{_fmt(pt.per_request_ms(pt.server_cpu_s), 3)} ({_fmt(pt.cores(pt.server_cpu_s))})")
        rows.append([values[i] for _, values in extra] + [
            pt.protocol, pt.label, pt.generator, str(pt.requests), str(pt.errors), _fmt(pt.qps, 1), _fmt(pt.p50),
            _fmt(pt.p90), _fmt(pt.p99), client, server, _fmt(pt.cores(pt.other_cpu_s))])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def plot(points: Sequence[Point], path: Path, title: str, series_of: object = None) -> str:
    """Latency (p50 and p99) against throughput, one line per series; returns what happened, for the user."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot: matplotlib is not installed (pip install 'pyserving[tools]'); {path} not written"
    key = series_of or (lambda pt: f"{pt.protocol} ({pt.generator}, {pt.mode} loop)")
    series: dict[str, list[Point]] = {}
    for pt in points:
        if pt.requests and pt.qps > 0:  # a point where nothing succeeded has no latency to draw
            series.setdefault(key(pt), []).append(pt)  # type: ignore[operator]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, pts in series.items():
        pts = sorted(pts, key=lambda p: p.level)  # along the sweep: past saturation the line bends back
        line, = ax.plot([p.qps for p in pts], [p.p99 for p in pts], "-o", label=f"{name} p99")
        ax.plot([p.qps for p in pts], [p.p50 for p in pts], "--", marker="s", color=line.get_color(),
                label=f"{name} p50", alpha=0.7)
        for p in pts:
            ax.annotate(p.label, (p.qps, p.p99), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


def run_points(generator: LoadGenerator, specs: Sequence[LoadSpec], warmup_s: float, progress: ProgressLine,
               echo: bool = True) -> list[Point]:
    """Each spec after `warmup_s` seconds of unmeasured load at the same level (the first point of a fresh server
    pays for lazy initialisation otherwise)."""
    points = []
    for spec in specs:
        level = f"rate {spec.rate:g}/s" if spec.rate else f"c={spec.concurrency}"
        if warmup_s > 0:
            progress.label = f"{generator.target.protocol} {level} warm-up"
            generator.run(LoadSpec(spec.concurrency, spec.rate, warmup_s, 0, spec.timeout_s, spec.max_in_flight),
                          progress)
        progress.label = f"{generator.target.protocol} {level}"
        pt = generator.run(spec, progress)
        progress.clear()
        if echo:
            err = f"  {pt.errors} errors, first: {pt.first_error[:200]}" if pt.errors else ""
            print(f"  {pt.protocol:4} {pt.label:>8} {pt.generator:7} {pt.qps:9.1f} req/s  p50 {_fmt(pt.p50):>8}  "
                  f"p99 {_fmt(pt.p99):>8} ms{err}", flush=True)
        points.append(pt)
    return points


def specs_from(args: argparse.Namespace) -> list[LoadSpec]:
    requests = args.requests or 0
    if args.rate:
        return [LoadSpec(rate=r, duration=args.duration, requests=requests, timeout_s=args.timeout,
                         max_in_flight=args.max_in_flight) for r in args.rate]
    return [LoadSpec(concurrency=c, duration=args.duration, requests=requests, timeout_s=args.timeout)
            for c in args.concurrency]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyserving bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_flags(p)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=lambda s: _numbers(s, int, "--concurrency"), default=[1, 8, 32],
                      help="closed loop: requests in flight, a comma-separated sweep (default: 1,8,32)")
    load.add_argument("--rate", type=lambda s: _numbers(s, float, "--rate"),
                      help="open loop: requests started per second, a comma-separated sweep")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, default=10.0, help="seconds per point (default: %(default)s)")
    amount.add_argument("--requests", type=int, help="requests per point instead of a duration")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each point "
                                                               "(default: %(default)s)")
    p.add_argument("--max-in-flight", type=int, default=1000,
                   help="open loop: requests in flight at most; later arrivals count as errors (default: %(default)s)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write latency against throughput as a PNG")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every point as JSON")
    return p


def main(argv: Sequence[str]) -> int:
    p = parser()
    args = p.parse_args(list(argv))
    targets = targets_from(args, p)
    if args.requests is not None and args.requests < 1:
        p.error("--requests: at least 1")
    if args.duration <= 0:
        p.error("--duration: more than 0 seconds")
    progress = ProgressLine(not args.no_progress)
    points: list[Point] = []
    notes: list[str] = []
    try:
        for target in targets:
            payload = build_payload(target, batch=args.batch, input_file=args.input, timeout_s=args.timeout)
            with LoadGenerator(target, payload, client=args.client, procs=args.procs, threads=args.threads,
                               server_pid=args.server_pid) as gen:
                print(f"{target.describe()}: {payload.description} ({payload.rows} row(s) per request); "
                      f"server pid {gen.server_pid or 'not found (no server CPU column)'}", flush=True)
                points += run_points(gen, specs_from(args), args.warmup, progress)
                notes += gen.notes
    except LoadError as exc:
        progress.clear()
        print(f"pyserving bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.clear()
        print("pyserving bench: interrupted", file=sys.stderr)
        return 130
    print()
    print(f"=== {args.model}: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S')}; QPS = successful "
          f"requests/s; CPU in ms per request and (cores kept busy) ===")
    print(table(points))
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    empty = [pt for pt in points if pt.requests == 0]
    if empty:
        print(f"note: no request finished within {len(empty)} point(s) ({', '.join(pt.label for pt in empty)}): "
              "lengthen --duration or lower the load")
    busy = [pt for pt in points if pt.cores(pt.other_cpu_s) > 0.3]
    if busy:
        print(f"note: other processes kept over 0.3 cores busy during {len(busy)} of {len(points)} points "
              "(other cores): those figures are noisy")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([pt.as_dict() for pt in points], indent=1))
        print(f"results JSON: {args.json}")
    if args.plot:
        print(plot(points, args.plot, f"pyserving bench: {args.model}, {os.cpu_count()} cores, "
                                      f"{time.strftime('%Y-%m-%d %H:%M')}"))
    return 0
