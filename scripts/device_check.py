"""Checks that need a GPU machine (run there by hand: CI has no GPU): pyserving serving torch models on the GPU
under TF Serving's GPU flags, over TF Serving's REST and gRPC APIs, with NVML metrics.

    python scripts/device_check.py OUT_DIR

Writes OUT_DIR/gpu_check.json and the server's log; prints one line per check and exits 1 if one failed. On a
machine without CUDA it still serves the models (on the CPU) and marks the GPU checks "skipped", so the script
itself can be tried anywhere. Needs torch, requests and pyserving's own dependencies; not TensorFlow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from pyserving.codecs.tfserving.protos import predict_pb2  # noqa: E402
from pyserving.codecs.tfserving.tensor import to_ndarray, to_proto  # noqa: E402

MEMORY_FRACTION = 0.02
ROWS = 2048  # the dense model's batch; y = relu(x W1) W2, 256 -> 1024 -> 10


class Dense(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Greedy(torch.nn.Module):
    """Allocates n x 2^20 floats on its device: n = 4096 is 16 GiB, past any small memory fraction."""

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        block = torch.ones((int(n[0].item()), 1 << 20), device=n.device)
        return block.sum(dim=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_models(base: Path) -> Dense:
    torch.manual_seed(0)
    dense = Dense().eval()
    for name, module, signature in (
        ("dense", dense, {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 256]}],
                          "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 10]}]}),
        ("greedy", Greedy(), {"inputs": [{"name": "n", "dtype": "int64", "shape": [1]}],
                              "outputs": [{"name": "s", "dtype": "float32", "shape": [-1]}]}),
    ):
        version = base / name / "1"
        version.mkdir(parents=True)
        torch.jit.save(torch.jit.script(module), str(version / "model.pt"))
        (version / "signature.json").write_text(json.dumps(signature))
        past = time.time() - 60  # written a while ago: loadable at the first poll
        for path in (version, *version.iterdir()):
            os.utime(path, (past, past))
    return dense


def gpu_apps() -> dict[int, int]:
    """pid -> MiB from nvidia-smi ({} without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    apps = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit():
            apps[int(pid)] = int(mib.strip() or 0)
    return apps


def main(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    results: dict[str, Any] = {"cuda": cuda, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name(0) if cuda else None, "checks": {}}
    checks: dict[str, str] = results["checks"]

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks[name] = ("ok" if ok else "FAILED") + (f": {detail}" if detail else "")
        print(f"{name}: {checks[name]}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="pyserving-gpu-"))
    dense = write_models(work)
    config = work / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{m}" base_path: "{work / m}" model_platform: "pytorch" }}\n'
        for m in ("dense", "greedy")) + "}\n")
    grpc_port, rest_port, metrics_port = free_port(), free_port(), free_port()
    log_file = out_dir / "gpu_server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "pyserving", "serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             "--host=127.0.0.1", f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
             f"--per_process_gpu_memory_fraction={MEMORY_FRACTION}", "--enable_metrics=true",
             f"--metrics_port={metrics_port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    rest = f"http://127.0.0.1:{rest_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{rest}/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                check("server starts", False, log_file.read_text()[-2000:])
                return finish(results, out_dir)
            time.sleep(0.2)
        check("server starts", True)

        x = np.random.default_rng(0).standard_normal((ROWS, 256)).astype(np.float32)
        with torch.inference_mode():
            expected = dense(torch.from_numpy(x)).numpy()
        started = time.perf_counter()
        answer = requests.post(f"{rest}/v1/models/dense:predict", json={"inputs": {"x": x.tolist()}}, timeout=60)
        rest_ms = (time.perf_counter() - started) * 1e3
        got = np.asarray(answer.json().get("outputs", []), np.float32) if answer.ok else None
        check("REST predict matches torch on the CPU", got is not None and got.shape == expected.shape
              and bool(np.allclose(got, expected, atol=1e-3)), f"HTTP {answer.status_code}, {rest_ms:.1f} ms")

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                          request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                          response_deserializer=predict_pb2.PredictResponse.FromString)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "dense"
            request.inputs["x"].CopyFrom(to_proto(x, tensor_content=True))
            predict(request, timeout=60)  # first call on the device: kernels picked, memory pooled
            started = time.perf_counter()
            for _ in range(20):
                response = predict(request, timeout=60)
            grpc_ms = (time.perf_counter() - started) * 1e3 / 20
            got = to_ndarray("y", response.outputs["y"])
            check("gRPC predict matches torch on the CPU", bool(np.allclose(got, expected, atol=1e-3)),
                  f"{grpc_ms:.2f} ms a {ROWS}-row call")
            results["grpc_ms_per_call"] = round(grpc_ms, 3)

            if cuda:  # (on a CPU it would take 16 GiB of the machine's memory)
                greedy = predict_pb2.PredictRequest()
                greedy.model_spec.name = "greedy"
                greedy.inputs["n"].CopyFrom(to_proto(np.array([4096], np.int64)))
                try:
                    predict(greedy, timeout=60)
                    code, detail = grpc.StatusCode.OK, ""
                except grpc.RpcError as exc:
                    code, detail = exc.code(), exc.details()
                check("a request past --per_process_gpu_memory_fraction fails alone with RESOURCE_EXHAUSTED",
                      code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code.name}: {detail[:400]}")
            else:
                checks["memory fraction"] = "skipped (no CUDA)"
            again = predict(request, timeout=60)
            check("the server serves on after it", bool(np.allclose(to_ndarray("y", again.outputs["y"]), expected,
                                                                   atol=1e-3)))

        apps = gpu_apps()
        results["gpu_apps_mib"] = apps
        if cuda:
            total_mib = torch.cuda.get_device_properties(0).total_memory / 2**20
            used = apps.get(server.pid)
            check("the models run on the GPU (nvidia-smi lists the server)", used is not None, f"{used} MiB")
            # the CUDA context itself (~500 MiB) is outside torch's allocator and so outside the fraction
            check("GPU memory stays near the fraction", used is not None
                  and used < MEMORY_FRACTION * total_mib + 1024,
                  f"{used} MiB used, fraction {MEMORY_FRACTION} of {total_mib:.0f} MiB")
        else:
            checks["GPU placement"] = "skipped (no CUDA)"
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        has_gpu_metric = "tensorflow_serving_gpu_utilization" in metrics
        if cuda:
            check("NVML utilisation exported", has_gpu_metric,
                  next((line for line in metrics.splitlines() if line.startswith("tensorflow_serving_gpu")), ""))
        results["metrics_gpu_lines"] = [line for line in metrics.splitlines()
                                        if line.startswith("tensorflow_serving_gpu")]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            results["exit_code"] = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            results["exit_code"] = "killed"
    check("clean exit on SIGTERM", results["exit_code"] == 0, str(results["exit_code"]))
    return finish(results, out_dir)


def finish(results: dict[str, Any], out_dir: Path) -> int:
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    return 1 if any(v.startswith("FAILED") for v in results["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "device_out")))
