"""One row per runtime: the same small dense model (16 -> 32 relu -> 4, the same weights) served by pyserving as a
TF SavedModel, ONNX, TorchScript, TFLite and a Python class, over REST and gRPC with batching on; then the V2 REST
protocol's JSON against its binary extension for the CNN's 224x224x3 input. Load by `pyserving bench`'s engine.

    python bench/runtimes.py [--duration S] [--concurrency N] [--plot out.png] [--scratch DIR] [--skip-v2]

Each format is built here from one set of weights (SCRATCH/runtimes/<runtime>/1, reused): Keras 3 exported with
keras.export.ExportArchive (tf.saved_model.save of a Keras 3 model cannot be read by a graph-mode loader), ONNX
written with onnx.helper, TorchScript traced from torch.nn, TFLite converted from the SavedModel, and a numpy
`model.py`. Every server answers one fixed input first and must match numpy's answer (1e-4), so the rows compare
the same function. One server runs at a time, alone, on 127.0.0.1; every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
from pyserving.cli.bench import _fmt, table  # noqa: E402
from pyserving.tools.loadgen import (  # noqa: E402
    LoadGenerator, LoadSpec, Payload, Point, Target, build_payload,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RUNTIMES = ("tensorflow", "onnx", "pytorch", "tflite", "python")
# The small model's batching in bench/batching.py: a call costs about the same for 1 row or 64.
BATCHING = "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1000 }\nmax_enqueued_batches { value: 1000 }\n" \
           "num_batch_threads { value: 1 }\n"


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)  # bench/models.py's small model
    return {"w1": rng.standard_normal((16, 32), dtype=np.float32) * 0.25,
            "b1": rng.standard_normal(32, dtype=np.float32) * 0.1,
            "w2": rng.standard_normal((32, 4), dtype=np.float32) * 0.25,
            "b2": rng.standard_normal(4, dtype=np.float32) * 0.1}


def reference(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]


# -------------------------------------------------------------------------------------------------- building


def build_tensorflow(d: Path, w: dict[str, np.ndarray]) -> None:
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    model.set_weights([w["w1"], w["b1"], w["w2"], w["b2"]])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=lambda x: {"y": model(x, training=False)},
                         input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
    archive.write_out(str(d), verbose=False)


def build_onnx(d: Path, w: dict[str, np.ndarray]) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Add", ["h3", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by older ONNX Runtimes too
    onnx.checker.check_model(model)
    d.mkdir(parents=True)
    onnx.save(model, str(d / "model.onnx"))


def build_pytorch(d: Path, w: dict[str, np.ndarray]) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w["w1"].T.copy()))
        model[0].bias.copy_(torch.from_numpy(w["b1"]))
        model[2].weight.copy_(torch.from_numpy(w["w2"].T.copy()))
        model[2].bias.copy_(torch.from_numpy(w["b2"]))
    d.mkdir(parents=True)
    torch.jit.trace(model, torch.zeros(2, 16)).save(str(d / "model.pt"))
    (d / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "DT_FLOAT", "shape": [-1, 16]}],
        "outputs": [{"name": "y", "dtype": "DT_FLOAT", "shape": [-1, 4]}]}))


def build_tflite(d: Path, w: dict[str, np.ndarray], saved_model: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(converter.convert())


PYTHON_MODEL = '''"""The benchmark's small dense model in numpy (bench/runtimes.py)."""
import os

import numpy as np


class Model:
    signatures = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 16]}},
                                      "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 4]}}}}
    thread_safe = True

    def load(self, path):
        w = np.load(os.path.join(path, "weights.npz"))
        self.w1, self.b1, self.w2, self.b2 = w["w1"], w["b1"], w["w2"], w["b2"]

    def predict(self, inputs):
        h = np.maximum(inputs["x"] @ self.w1 + self.b1, 0)
        return {"y": (h @ self.w2 + self.b2).astype(np.float32)}
'''


def build_python(d: Path, w: dict[str, np.ndarray]) -> None:
    d.mkdir(parents=True)
    (d / "model.py").write_text(PYTHON_MODEL)
    np.savez(d / "weights.npz", **w)


def build_all(root: Path) -> dict[str, Path]:
    """runtime -> base path (with version 1), each built once in its own process step (TensorFlow, torch)."""
    w = weights()
    out = {}
    for runtime in RUNTIMES:
        base = root / runtime
        version = base / "1"
        if not version.exists():
            staged = base / ".staging"
            shutil.rmtree(staged, ignore_errors=True)
            print(f"building the {runtime} model in {version}", flush=True)
            if runtime == "tensorflow":
                build_tensorflow(staged, w)
            elif runtime == "onnx":
                build_onnx(staged, w)
            elif runtime == "pytorch":
                build_pytorch(staged, w)
            elif runtime == "tflite":
                build_tflite(staged, w, root / "tensorflow" / "1")
            else:
                build_python(staged, w)
            os.rename(staged, version)
        out[runtime] = base
    return out


def build_cnn(root: Path) -> Path:
    base = root / "cnn"
    if not (base / "1" / "saved_model.pb").exists():
        print(f"exporting the CNN to {base} (examples/image_classifier, a short training run)", flush=True)
        out = subprocess.run([sys.executable, str(BENCH / "models.py"), "export-cnn", str(base)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"CNN export failed:\n{out.stderr[-3000:]}")
    return base


# -------------------------------------------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`pyserving serve` for one model, in its own process group, until stop()."""

    def __init__(self, name: str, base: Path, platform: str, scratch: Path, batching: bool = True) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        config = scratch / f"{name}.config"
        config.write_text(f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" '
                          f'model_platform: "{platform}" }} }}\n')
        cmd = [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", f"--port={self.grpc_port}",
               f"--rest_api_port={self.rest_port}", f"--model_config_file={config}", "--allow_python_models=true",
               "--file_system_poll_wait_seconds=0"]
        if batching:
            params = scratch / "batching.txt"
            params.write_text(BATCHING)
            cmd += ["--enable_batching=true", f"--batching_parameters_file={params}"]
        self.log = scratch / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        self.name = name
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name}'s server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.rest_url}/v1/models/{name}", timeout=2) as r:
                    if b"AVAILABLE" in r.read():
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name}'s server was not ready in 300 s: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_answer(server: Server, w: dict[str, np.ndarray]) -> float:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    status, body = post(f"{server.rest_url}/v1/models/{server.name}:predict",
                        json.dumps({"instances": x.tolist()}).encode())
    if status != 200:
        raise RuntimeError(f"{server.name}: predict answered {status}: {body[:300]!r}")
    got = np.asarray(json.loads(body)["predictions"], dtype=np.float32)
    diff = float(np.max(np.abs(got - reference(w, x))))
    if diff > 1e-4:
        raise RuntimeError(f"{server.name}: answers differ from numpy's by {diff:g}: not the same model")
    return diff


def measure(target: Target, payload: Payload, pid: int, c: int, duration: float, warmup: float) -> Point:
    with LoadGenerator(target, payload, server_pid=pid) as gen:
        if warmup > 0:
            gen.run(LoadSpec(concurrency=c, duration=warmup))
        return gen.run(LoadSpec(concurrency=c, duration=duration))


def v2_payloads(model: str, rng: np.random.Generator) -> dict[str, tuple[bytes, tuple[str, str] | None]]:
    x = rng.random((1, 224, 224, 3), dtype=np.float32)
    tensor = {"name": "images", "shape": list(x.shape), "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}).encode()
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "predictions", "parameters": {"binary_data": False}}]}).encode()
    return {"V2 JSON": (as_json, None),
            "V2 binary": (head + x.astype("<f4").tobytes(), ("Inference-Header-Content-Length", str(len(head))))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per point (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=32, help="small model (default: %(default)s)")
    p.add_argument("--cnn-concurrency", type=int, default=8, help="V2 rows (default: %(default)s)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="subset of " + ",".join(RUNTIMES))
    p.add_argument("--skip-v2", action="store_true", help="no V2 JSON-vs-binary rows (they need the CNN export)")
    p.add_argument("--plot", type=Path, help="write latency against throughput as a PNG")
    p.add_argument("--json", type=Path, help="write every point as JSON")
    p.add_argument("--scratch", type=Path, default=Path(os.environ.get("PYSERVING_BENCH_SCRATCH",
                                                                        "/tmp/pyserving-bench")) / "runtimes")
    args = p.parse_args(argv)
    chosen = [r for r in args.runtimes.split(",") if r]
    if set(chosen) - set(RUNTIMES):
        p.error(f"--runtimes: choose from {','.join(RUNTIMES)}")
    args.scratch.mkdir(parents=True, exist_ok=True)
    logs = args.scratch / "logs"
    logs.mkdir(exist_ok=True)
    if "tflite" in chosen and "tensorflow" not in chosen:
        chosen = ["tensorflow", *chosen]  # TFLite is converted from the SavedModel (built, not measured)
        measured = [r for r in chosen if r != "tensorflow"]
    else:
        measured = chosen
    bases = build_all(args.scratch / "models")
    w = weights()
    rows: list[tuple[str, Point]] = []
    t0 = time.monotonic()
    for runtime in measured:
        server = Server(runtime, bases[runtime], runtime, logs)
        try:
            diff = check_answer(server, w)
            print(f"{runtime}: serving (answers within {diff:.1e} of numpy's), pid {server.proc.pid}", flush=True)
            for target in (Target("rest", server.rest_url, runtime), Target("grpc", f"127.0.0.1:{server.grpc_port}",
                                                                              runtime)):
                pt = measure(target, build_payload(target), server.proc.pid, args.concurrency, args.duration,
                             args.warmup)
                print(f"  {pt.protocol:4} {pt.generator:7} {pt.qps:9.1f} req/s  p50 {_fmt(pt.p50)}  p99 {_fmt(pt.p99)} "
                      f"ms  errors {pt.errors}", flush=True)
                rows.append((runtime, pt))
        finally:
            server.stop()
    if not args.skip_v2:
        base = build_cnn(args.scratch / "models")
        server = Server("cnn", base, "tensorflow", logs)
        try:
            for name, (body, header) in v2_payloads("cnn", np.random.default_rng(3)).items():
                target = Target("rest", server.rest_url, "cnn", rest_path="/v2/models/cnn/infer", header=header)
                status, answer = post(target.predict_url, body, dict([header]) if header else None)
                if status != 200:
                    raise RuntimeError(f"{name}: the CNN answered {status}: {answer[:300]!r}")
                payload = Payload(body, b"", 1, f"{name}, {len(body) / 1e6:.2f} MB")
                pt = measure(target, payload, server.proc.pid, args.cnn_concurrency, args.duration, args.warmup)
                pt.protocol = name
                print(f"  cnn {name:9} ({len(body) / 1e6:.2f} MB) {pt.qps:7.1f} req/s  p50 {_fmt(pt.p50)}  "
                      f"p99 {_fmt(pt.p99)} ms  errors {pt.errors}", flush=True)
                rows.append(("cnn (224x224x3)", pt))
        finally:
            server.stop()
    print()
    print(f"=== runtimes: {os.cpu_count()} cores, {time.monotonic() - t0:.0f} s, batching on (max_batch_size 64, "
          f"1 ms timeout, 1 thread); small model at c={args.concurrency}, CNN at c={args.cnn_concurrency}; "
          f"{args.duration:g} s points ===")
    print(table([pt for _, pt in rows], extra=[("model", [name for name, _ in rows])]))
    busy = [pt for _, pt in rows if pt.cores(pt.other_cpu_s) > 0.3]
    if busy:
        print(f"note: other processes kept over 0.3 cores busy during {len(busy)} of {len(rows)} points (other "
              "cores): those figures are noisy")
    if args.json:
        args.json.write_text(json.dumps([{"model": n, **pt.as_dict()} for n, pt in rows], indent=1))
    if args.plot:
        print(plot_rows(rows, args.plot, f"pyserving runtimes, {os.cpu_count()} cores, "
                                         f"{time.strftime('%Y-%m-%d %H:%M')}; small model c={args.concurrency}, "
                                         f"CNN c={args.cnn_concurrency}"))
    return 0


def plot_rows(rows: list[tuple[str, Point]], path: Path, title: str) -> str:
    """Bars: QPS per runtime and protocol (p50/p99 written on each), and the CNN's V2 JSON vs binary."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot: matplotlib is not installed; {path} not written"
    small = [(n, pt) for n, pt in rows if pt.protocol in ("REST", "gRPC")]
    v2 = [(n, pt) for n, pt in rows if pt.protocol.startswith("V2")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]}, squeeze=False)
    ax = axes[0][0]
    runtimes = list(dict.fromkeys(n for n, _ in small))
    for i, protocol in enumerate(("REST", "gRPC")):
        pts = {n: pt for n, pt in small if pt.protocol == protocol}
        xs = [j + (i - 0.5) * 0.38 for j, n in enumerate(runtimes) if n in pts]
        bars = ax.bar(xs, [pts[n].qps for n in runtimes if n in pts], width=0.38, label=protocol)
        for bar, n in zip(bars, [n for n in runtimes if n in pts]):
            ax.annotate(f"p50 {_fmt(pts[n].p50, 1)}\np99 {_fmt(pts[n].p99, 1)}", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(runtimes)), runtimes)
    ax.set_ylabel("successful requests/s")
    ax.set_title("16 -> 32 -> 4 dense model, batching on (latencies in ms)", fontsize=9)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    ax = axes[0][1]
    if v2:
        bars = ax.bar([pt.protocol for _, pt in v2], [pt.qps for _, pt in v2], color=["tab:red", "tab:green"])
        for bar, (_, pt) in zip(bars, v2):
            ax.annotate(f"p50 {_fmt(pt.p50, 0)}\np99 {_fmt(pt.p99, 0)}", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.15)
    ax.set_title("CNN, one 224x224x3 image, V2 REST", fontsize=9)
    ax.set_ylabel("successful requests/s")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


if __name__ == "__main__":
    sys.exit(main())
