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
sys.path.insert(0, str(ROOT))


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


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


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


def measure(target: Any, payload: Any, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """One warm-up point (unmeasured), then the measured one; server CPU is pid's whole process tree's."""
    from pyserving.tools.loadgen import LoadGenerator, LoadSpec

    with LoadGenerator(target, payload, client="native", threads=args.client_threads, server_pid=pid) as gen:
        gen.run(LoadSpec(concurrency=args.concurrency, duration=2.0))
        own0 = process_cpu_s(pid)
        point = gen.run(LoadSpec(concurrency=args.concurrency, duration=args.duration))
        own = process_cpu_s(pid) - own0
    row = {"qps": round(point.qps), "errors": point.errors, "p50_ms": round(point.p50, 2),
           "p99_ms": round(point.p99, 2), "generator": point.generator}
    if point.requests:
        row["server_us_per_request"] = round(point.server_cpu_s / point.requests * 1e6, 1)
        row["server_cores"] = round(point.server_cpu_s / point.wall_s, 2)
        row["client_cores"] = round(point.client_cpu_s / point.wall_s, 2)
        # the top process alone: the model process when there are front ends (its one event loop is shared)
        row["top_process_cores"] = round(own / point.wall_s, 2)
    return row


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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
    from pyserving.tools.loadgen import Payload, Target, build_payload

    rows: list[dict[str, Any]] = []
    payloads: dict[str, Any] = {}
    for n in [int(p) for p in args.procs.split(",")]:
        grpc_port, rest_port = free_port(), free_port()
        server = start(
            [sys.executable, "-m", "pyserving", "serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             "--host=127.0.0.1", "--model_name=m", f"--model_base_path={work / 'm'}", "--model_platform=onnx",
             "--enable_batching=true", f"--batching_parameters_file={batching}", f"--frontend_processes={n}",
             "--verbosity=WARNING"], args.out / f"server_{n}.log", env)
        row: dict[str, Any] = {"server": f"pyserving --frontend_processes={n}", "frontend_processes": n}
        try:
            wait_ready(f"http://127.0.0.1:{rest_port}/v1/models/m", server)
            time.sleep(1.0 if n == 0 else 2.0)  # every front end up
            row["front_end_rss_mib"] = sorted(round(rss_mib(p)) for p in children(server.pid))
            row["model_process_rss_mib"] = round(rss_mib(server.pid))
            for proto, address in (("grpc", f"127.0.0.1:{grpc_port}"), ("rest", f"http://127.0.0.1:{rest_port}")):
                target = Target(proto, address, "m")
                payloads.setdefault(proto, build_payload(target))
                row[proto] = measure(target, payloads[proto], server.pid, args)
        except Exception as exc:  # one bad point must not lose the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop(server)
        rows.append(row)
        print(json.dumps(row), flush=True)

    # The one-process ceilings (bench/peers): a bare grpc.aio servicer answering a fixed PredictResponse, and a
    # bare uvicorn + starlette app computing the model in numpy; same payloads, same load.
    rng = np.random.default_rng(0)
    weights = work / "weights.npz"
    np.savez(weights, w1=rng.standard_normal((16, 32)).astype(np.float32), b1=np.zeros(32, np.float32),
             w2=rng.standard_normal((32, 4)).astype(np.float32), b2=np.zeros(4, np.float32))
    rows_json = json.dumps({"instances": rng.standard_normal((1, 16)).round(4).tolist()}).encode()
    for name, proto in (("bare grpc.aio servicer", "grpc"), ("bare starlette app", "rest")):
        port = free_port()
        script = "grpc_servicer.py" if proto == "grpc" else "starlette_app.py"
        cmd = [sys.executable, str(ROOT / "bench" / "peers" / script)] + ([] if proto == "grpc" else [str(weights)])
        peer = start(cmd + [str(port)], args.out / f"{script}.log", env)
        row = {"server": name}
        try:
            time.sleep(3)
            if proto == "grpc":
                target, payload = Target("grpc", f"127.0.0.1:{port}", "small"), payloads.get("grpc")
            else:
                target = Target("rest", f"http://127.0.0.1:{port}", "small")
                payload = Payload(rows_json, b"", 1, "one row, TF Serving's row format")
            if payload is not None:
                row[proto] = measure(target, payload, peer.pid, args)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop(peer)
        rows.append(row)
        print(json.dumps(row), flush=True)

    (args.out / "scaling.json").write_text(json.dumps(rows, indent=1, default=str))
    ceiling = {proto: next((r[proto]["qps"] for r in rows if r["server"].startswith("bare") and proto in r), 0)
               for proto in ("grpc", "rest")}
    lines = ["| server | gRPC req/s | x bare grpc.aio | µs server CPU/req | REST req/s | x bare starlette | "
             "µs server CPU/req | errors | model process cores gRPC/REST | front-end RSS MiB | model process RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["server"]]
        for proto in ("grpc", "rest"):
            m = r.get(proto, {})
            cells += [str(m.get("qps", "-")),
                      f"{m['qps'] / ceiling[proto]:.2f}" if m.get("qps") and ceiling[proto] else "-",
                      str(m.get("server_us_per_request", "-"))]
        cells += [f"{r.get('grpc', {}).get('errors', '-')}/{r.get('rest', {}).get('errors', '-')}",
                  f"{r.get('grpc', {}).get('top_process_cores', '-')}/{r.get('rest', {}).get('top_process_cores', '-')}",
                  ",".join(map(str, r.get("front_end_rss_mib", []))) or "-", str(r.get("model_process_rss_mib", "-"))]
        lines.append("| " + " | ".join(cells) + " |" + (f" {r['error']}" if "error" in r else ""))
    table = "\n".join(lines)
    (args.out / "scaling.md").write_text(table + "\n")
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for proto in ("grpc", "rest"):
            pts = [(r["frontend_processes"], r[proto]["qps"]) for r in rows
                   if "frontend_processes" in r and r.get(proto, {}).get("qps")]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"pyserving {proto}")
            if ceiling[proto]:
                ax.axhline(ceiling[proto], linestyle="--", alpha=0.5,
                           label=f"bare {'grpc.aio' if proto == 'grpc' else 'starlette'}, 1 process")
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
