"""Two commits of pyserving, interleaved: is a change within noise? The small model, REST (wrk) and gRPC (h2load),
without and with batching, each commit's server measured in turn, `--rounds` times, medians compared.

    python bench/ab_commits.py BASE NEW [--rounds 3] [--duration 5] [--concurrency 32] [--plot ab.png]

Interleaving matters on a shared 2-core machine: a slow minute hits both commits instead of one. Each commit is
exported with `git archive` (as bench/batching.py --commit does) and served with `pyserving serve`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from batching import pyserving_source
from security import bar_plot, cpu_s, h2load, setup, start, stop, wrk

BATCHING_FILE = "max_batch_size { value: 64 } batch_timeout_micros { value: 1000 } " \
                "max_enqueued_batches { value: 1000 } num_batch_threads { value: 2 }"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--plot", type=Path)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pyserving-bench")
    args = p.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    model, _, _, body, frame = setup(args.scratch)
    batching = args.scratch / "ab_batching.config"
    batching.write_text(BATCHING_FILE)
    sources = {}
    for commit in (args.base, args.new):
        src, described = pyserving_source(commit, args.scratch)
        sources[commit] = Path(src)
        print(f"{commit}: {described}")
    results: dict[tuple[str, str, str], list[float]] = {}
    cpu: dict[tuple[str, str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for commit, src in sources.items():
            for batch in ("no", "yes"):
                extra = ("--enable_batching=true", f"--batching_parameters_file={batching}") if batch == "yes" else ()
                proc, rest, grpc_port = start(model, None, None, args.scratch / f"ab-{commit}.log", src=src,
                                              extra=extra)
                try:
                    for protocol, run, url, payload in (
                        ("REST", wrk, f"http://127.0.0.1:{rest}/v1/models/small:predict", body),
                        ("gRPC", h2load, f"http://127.0.0.1:{grpc_port}/tensorflow.serving.PredictionService/Predict",
                         frame),
                    ):
                        run(url, payload, "", args.concurrency, args.warmup)
                        cpu0 = cpu_s(proc.pid)
                        qps, _, _, errors = run(url, payload, "", args.concurrency, args.duration)
                        cpu_us = (cpu_s(proc.pid) - cpu0) / (qps * args.duration) * 1e6
                        if errors:
                            print(f"  ! {errors} errors")
                        results.setdefault((commit, protocol, batch), []).append(qps)
                        cpu.setdefault((commit, protocol, batch), []).append(cpu_us)
                        print(f"  round {round_ + 1} {commit:>10s} {protocol} batching {batch}: {qps:8.1f} req/s, "
                              f"server CPU {cpu_us:6.0f} us/request", flush=True)
                finally:
                    stop(proc)
    print(f"\nmedian QPS over {args.rounds} interleaved rounds (c={args.concurrency}, {args.duration:g} s points)")
    print("and the server's CPU time per request (steadier than QPS when the machine is shared)")
    print(f"{'proto':5s} {'batch':5s} {'QPS ' + args.base:>14s} {'QPS ' + args.new:>14s}  new/base  "
          f"{'CPU us ' + args.base:>16s} {'CPU us ' + args.new:>16s}  new/base")
    for protocol in ("REST", "gRPC"):
        for batch in ("no", "yes"):
            key_a, key_b = (args.base, protocol, batch), (args.new, protocol, batch)
            qa, qb = statistics.median(results[key_a]), statistics.median(results[key_b])
            ca, cb = statistics.median(cpu[key_a]), statistics.median(cpu[key_b])
            print(f"{protocol:5s} {batch:5s} {qa:14.1f} {qb:14.1f}  {qb / qa:8.3f}  {ca:16.0f} {cb:16.0f}  "
                  f"{cb / ca:8.3f}")
    if args.plot:
        cells = [(pr, b) for pr in ("REST", "gRPC") for b in ("no", "yes")]
        bar_plot(args.plot, [f"{pr}\nbatch {b}" for pr, b in cells],
                 {commit: [statistics.median(results[(commit, pr, b)]) for pr, b in cells]
                  for commit in (args.base, args.new)},
                 "requests/s (median)", f"small model, c={args.concurrency}, {args.rounds} interleaved rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
