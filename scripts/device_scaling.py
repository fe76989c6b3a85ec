"""The multi-core scaling curve of --frontend_processes, for a machine with many cores (the GPU machine has 16;
CI's has 2, where the curve says nothing). Run there by hand:

    PATH=.devkit/bin:$PATH python scripts/device_scaling.py OUT_DIR [--procs 0,1,2,4,8,12] [--duration 6]

Serves a small dense ONNX model (16 -> 32 -> 4, built here with onnx.helper: the machine has no TensorFlow) with
batching on, for each front-end process count, and loads it with `pyserving bench` (h2load for gRPC, wrk for
REST; C clients, so the load costs the server little) at a fixed concurrency. Writes OUT_DIR/scaling.json,
scaling.md (the table) and scaling.png, and prints the table. Server CPU is the whole process tree's (model
process and front ends), read from /proc before and after each point.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_model(base: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 32)).astype(np.float32), np.zeros(32, np.float32)
    w2, b2 = rng.standard_normal((32, 4)).astype(np.float32), np.zeros(4, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["y0"]),
         helper.make_node("Add", ["y0", "b2"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    version = base / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / "model.onnx"))
    past = time.time() - 60  # settled: the first poll loads it
    for path in (version, version / "model.onnx"):
        os.utime(path, (past, past))


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready in time")


def bench(target: list[str], args: argparse.Namespace, out: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pyserving", "bench", *target, "--model", "m", "--client", "native",
           "--threads", str(args.client_threads), "--concurrency", str(args.concurrency),
           "--duration", str(args.duration), "--warmup", "2", "--no-progress", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.duration * 4 + 120)
    if done.returncode != 0 or not out.exists():
        return {"error": (done.stderr or done.stdout)[-600:]}
    return json.loads(out.read_text())[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--procs", default="0,1,2,4,8,12")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--client_threads", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pyserving-scaling-"))
    write_model(work / "m")
    batching = work / "batching.config"
    batching.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 500 }\n"
                        "num_batch_threads { value: 4 }\nmax_enqueued_batches { value: 100000 }\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    rows: list[dict[str, Any]] = []
    for n in [int(p) for p in args.procs.split(",")]:
        grpc_port, rest_port = free_port(), free_port()
        log = open(args.out / f"server_{n}.log", "wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "pyserving", "serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             "--host=127.0.0.1", "--model_name=m", f"--model_base_path={work / 'm'}", "--model_platform=onnx",
             "--enable_batching=true", f"--batching_parameters_file={batching}", f"--frontend_processes={n}",
             "--verbosity=WARNING"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        row: dict[str, Any] = {"frontend_processes": n}
        try:
            wait_ready(f"http://127.0.0.1:{rest_port}/v1/models/m", server)
            time.sleep(1.0 if n == 0 else 2.0)  # every front end up
            pids = tree(server.pid)
            row["front_end_rss_mib"] = sorted(round(rss_mib(p)) for p in pids if p != server.pid)
            row["model_process_rss_mib"] = round(rss_mib(server.pid))
            for proto, target in (("grpc", ["--grpc", f"127.0.0.1:{grpc_port}"]),
                                  ("rest", ["--rest", f"http://127.0.0.1:{rest_port}"])):
                pids = tree(server.pid)
                before = cpu_s(pids)
                point = bench(target, args, args.out / f"point_{proto}_{n}.json", env)
                used = cpu_s(tree(server.pid)) - before
                row[proto] = point
                if point.get("requests"):
                    row[f"{proto}_qps"] = round(point["qps"])
                    row[f"{proto}_server_us_per_request"] = round(used / point["requests"] * 1e6, 1)
                    row[f"{proto}_server_cores"] = round(used / max(point.get("wall_s") or args.duration, 1e-9), 2)
                    row[f"{proto}_errors"] = point.get("errors", 0)
                    row[f"{proto}_p99_ms"] = point.get("p99")
        except Exception as exc:  # one bad point must not lose the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("grpc", "rest")}), flush=True)
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=1, default=str))
    lines = ["| front-end processes | gRPC req/s | µs server CPU/req | REST req/s | µs server CPU/req | errors | "
             "front-end RSS MiB | model process RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['frontend_processes']} | {r.get('grpc_qps', '-')} | {r.get('grpc_server_us_per_request', '-')}"
                     f" | {r.get('rest_qps', '-')} | {r.get('rest_server_us_per_request', '-')} | "
                     f"{r.get('grpc_errors', '-')}/{r.get('rest_errors', '-')} | "
                     f"{','.join(map(str, r.get('front_end_rss_mib', []))) or '-'} | "
                     f"{r.get('model_process_rss_mib', '-')} |" + (f" {r['error']}" if "error" in r else ""))
    table = "\n".join(lines)
    (args.out / "scaling.md").write_text(table + "\n")
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for proto in ("grpc", "rest"):
            pts = [(r["frontend_processes"], r[f"{proto}_qps"]) for r in rows if f"{proto}_qps" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=proto)
        ax.set_xlabel("--frontend_processes (0: one process)")
        ax.set_ylabel("requests/s")
        ax.set_title(f"small ONNX model, batching on, c={args.concurrency}, {os.cpu_count()} cores")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "scaling.png", dpi=110)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
