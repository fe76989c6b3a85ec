"""Closed-loop gRPC load for TF Serving's PredictionService: N requests always in flight, per-request latencies.

    python bench/grpc_load.py --target 127.0.0.1:8500 --model-name small --input-key x --shape 16 \
        --concurrency 32 --duration 10 [--warmup 2] [--procs 2]

Each request is one example, built once with `tf.make_tensor_proto` (so the tensor travels as `tensor_content`, as
TF Serving's own clients send it) and sent through the generated `PredictionServiceStub` on a `grpc.aio` channel.
The in-flight requests are split over `--procs` worker processes (one channel each) so that the client's own Python
does not cap the rate; on a small box, fewer client processes leave more CPU to the server.

Only requests that complete inside the measured window (after `--warmup`) count; QPS is those completions divided
by the window, and the percentiles are over their latencies.

Workers stay up between runs (they import TensorFlow once): bench/batching.py drives them with `GrpcLoad`, one JSON
command per line on their stdin, one JSON result per line on their stdout. This module imports neither grpc nor
TensorFlow until a worker starts, so the driver stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

WORKER_FLAG = "--worker"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; nan when empty."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class GrpcLoad:
    """Parent-side handle on `procs` worker processes; `run()` splits the concurrency over them and merges results."""

    def __init__(self, procs: int = 2, python: str = sys.executable, env: dict[str, str] | None = None,
                 on_spawn: Any = None) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for _ in range(procs):
            p = subprocess.Popen(
                [python, os.path.abspath(__file__), WORKER_FLAG], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env, start_new_session=True,
            )
            if on_spawn is not None:
                on_spawn(p)
            self.procs.append(p)
        for p in self.procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            if line.strip() != "ready":
                raise RuntimeError(f"gRPC load worker {p.pid} did not start (said {line!r})")

    def run(self, target: str, model_name: str, input_key: str, shape: list[int], concurrency: int,
            duration: float, warmup: float, procs: int | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
        use = self.procs[: max(1, min(procs or len(self.procs), concurrency))]
        shares = [concurrency // len(use) + (1 if i < concurrency % len(use) else 0) for i in range(len(use))]
        cmd = {"target": target, "model_name": model_name, "input_key": input_key, "shape": shape,
               "duration": duration, "warmup": warmup, "timeout_s": timeout_s}
        for p, share in zip(use, shares):
            p.stdin.write(json.dumps({**cmd, "concurrency": share}) + "\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        parts = []
        for p in use:
            line = p.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"gRPC load worker {p.pid} exited")
            parts.append(json.loads(line))
        return merge(parts, duration)

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def merge(parts: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    lat_ms = sorted(v / 1000 for part in parts for v in part["lat_us"])
    errors: dict[str, int] = {}
    for part in parts:
        for k, v in part["errors"].items():
            errors[k] = errors.get(k, 0) + v
    first_error = next((part["first_error"] for part in parts if part["first_error"]), "")
    return {
        "requests": len(lat_ms), "qps": len(lat_ms) / duration,
        "p50": percentile(lat_ms, 50), "p90": percentile(lat_ms, 90), "p99": percentile(lat_ms, 99),
        "errors": sum(errors.values()), "error_kinds": errors, "first_error": first_error,
    }


# ---------------------------------------------------------------------------------------------------------- worker


def _worker() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import asyncio

    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    requests: dict[tuple[str, str, tuple[int, ...]], Any] = {}

    def request_for(model_name: str, input_key: str, shape: tuple[int, ...]) -> Any:
        key = (model_name, input_key, shape)
        if key not in requests:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = model_name
            req.model_spec.signature_name = "serving_default"
            x = np.random.default_rng(2).random((1, *shape), dtype=np.float32)
            req.inputs[input_key].CopyFrom(tf.make_tensor_proto(x))
            requests[key] = req
        return requests[key]

    async def run(cmd: dict[str, Any]) -> dict[str, Any]:
        req = request_for(cmd["model_name"], cmd["input_key"], tuple(cmd["shape"]))
        limit = 64 * 1024 * 1024
        lat_us: list[int] = []
        errors: dict[str, int] = {}
        first_error = ""
        async with grpc.aio.insecure_channel(cmd["target"], options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
        ]) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            now = time.perf_counter()
            start = now + cmd["warmup"]
            end = start + cmd["duration"]

            async def one() -> None:
                nonlocal first_error
                while True:
                    t0 = time.perf_counter()
                    if t0 >= end:
                        return
                    try:
                        await stub.Predict(req, timeout=cmd["timeout_s"])
                    except grpc.aio.AioRpcError as exc:
                        t1 = time.perf_counter()
                        if start <= t1 <= end:
                            name = exc.code().name
                            errors[name] = errors.get(name, 0) + 1
                            first_error = first_error or f"{name}: {exc.details()}"
                        await asyncio.sleep(0.01)  # a refusing server must not turn this into a busy loop
                        continue
                    t1 = time.perf_counter()
                    if start <= t1 <= end:
                        lat_us.append(int((t1 - t0) * 1e6))

            await asyncio.gather(*(one() for _ in range(cmd["concurrency"])))
        return {"lat_us": lat_us, "errors": errors, "first_error": first_error}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            try:
                result = await run(json.loads(line))
            except Exception as exc:  # report, keep serving commands
                result = {"lat_us": [], "errors": {type(exc).__name__: 1}, "first_error": repr(exc)}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == [WORKER_FLAG]:
        return _worker()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:8500")
    p.add_argument("--model-name", default="small")
    p.add_argument("--input-key", default="x")
    p.add_argument("--shape", default="16", help="one example's shape, comma-separated (e.g. 224,224,3)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--procs", type=int, default=2)
    args = p.parse_args(args_list)
    load = GrpcLoad(min(args.procs, args.concurrency))
    try:
        r = load.run(args.target, args.model_name, args.input_key, [int(s) for s in args.shape.split(",")],
                     args.concurrency, args.duration, args.warmup)
    finally:
        load.close()
    print(f"{r['qps']:.1f} req/s  p50 {r['p50']:.2f} ms  p90 {r['p90']:.2f} ms  p99 {r['p99']:.2f} ms  "
          f"({r['requests']} requests, {r['errors']} errors{'; ' + r['first_error'] if r['first_error'] else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
