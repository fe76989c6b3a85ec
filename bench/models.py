"""The two benchmark models and their in-process limit, each step in its own process (bench/batching.py runs them).

    python bench/models.py export-small DIR     # DIR/1: 16 -> 32 -> 4 dense model, input x [None,16], output y
    python bench/models.py export-cnn DIR       # DIR/1: the article's CNN via examples/image_classifier
    python bench/models.py limit --model small --path DIR/1 --batches 1,8,32,64 --threads 1,2 --seconds 1.5

`limit` loads the version the way pyserving does (TensorFlowRuntime().load(path, RuntimeOptions())) and calls
`.run("serving_default", ...)` in a closed loop from 1..N Python threads at each batch size, then prints one JSON
object with rows/s per (batch, threads) and the best of them: the most any server could get out of this model on
this machine, with nothing but the model running.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]

# (input key, output key, one example's shape) of each model's serving_default signature.
MODELS = {
    "small": ("x", "y", (16,)),
    "cnn": ("images", "predictions", (224, 224, 3)),
}


def export_small(base: Path, version: int = 1) -> Path:
    """16 -> 32 (relu) -> 4 dense model as a tf.Module; also saves its weights as weights.npz next to the versions."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((16, 32), dtype=np.float32) * 0.25,
        "b1": rng.standard_normal(32, dtype=np.float32) * 0.1,
        "w2": rng.standard_normal((32, 4), dtype=np.float32) * 0.25,
        "b2": rng.standard_normal(4, dtype=np.float32) * 0.1,
    }

    class Small(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="small")
            self.w1 = tf.Variable(weights["w1"], name="w1")
            self.b1 = tf.Variable(weights["b1"], name="b1")
            self.w2 = tf.Variable(weights["w2"], name="w2")
            self.b2 = tf.Variable(weights["b2"], name="b2")

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
        def serve(self, x):
            h = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
            return {"y": tf.matmul(h, self.w2) + self.b2}

    module = Small()
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(version)
    staged = base / f".tmp-{version}"  # not all digits: servers polling base never see it half-written
    shutil.rmtree(staged, ignore_errors=True)
    tf.saved_model.save(module, str(staged), signatures={"serving_default": module.serve})
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staged, target)
    np.savez(base / "weights.npz", **weights)
    return target


def export_cnn(base: Path, version: int = 1) -> Path:
    spec = importlib.util.spec_from_file_location(
        "train_and_export", REPO / "examples" / "image_classifier" / "train_and_export.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.export_model(str(base), version, samples=8, epochs=1, verbose=0)


def limit(model: str, path: str, batches: list[int], threads: list[int], seconds: float) -> dict:
    import numpy as np

    sys.path.insert(0, os.environ.get("BENCH_PYSERVING_SRC") or str(REPO))  # bench/batching.py --commit
    from pyserving.options import RuntimeOptions
    from pyserving.runtimes.tensorflow import TensorFlowRuntime

    in_key, out_key, shape = MODELS[model]
    servable = TensorFlowRuntime().load(path, RuntimeOptions())
    rng = np.random.default_rng(1)
    results = []
    for batch in batches:
        x = rng.random((batch, *shape), dtype=np.float32)
        for _ in range(3):  # first calls trace / allocate
            servable.run("serving_default", {in_key: x}, [out_key])
        for n in threads:
            stop = time.perf_counter() + seconds
            counts = [0] * n

            def loop(i: int) -> None:
                c = 0
                while time.perf_counter() < stop:
                    servable.run("serving_default", {in_key: x}, [out_key])
                    c += 1
                counts[i] = c

            t0 = time.perf_counter()
            workers = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - t0
            calls = sum(counts)
            results.append({
                "batch": batch, "threads": n, "calls_per_s": calls / elapsed, "rows_per_s": calls * batch / elapsed,
                "ms_per_call": 1000 * elapsed * n / max(calls, 1),
            })
    servable.unload()
    best = max(results, key=lambda r: r["rows_per_s"])
    return {"model": model, "results": results, "best": best}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("export-small", "export-cnn"):
        s = sub.add_parser(name)
        s.add_argument("dir", type=Path)
    s = sub.add_parser("limit")
    s.add_argument("--model", choices=sorted(MODELS), required=True)
    s.add_argument("--path", required=True)
    s.add_argument("--batches", default="1,8,32,64")
    s.add_argument("--threads", default="1,2")
    s.add_argument("--seconds", type=float, default=1.5)
    args = p.parse_args()
    if args.cmd == "export-small":
        print(export_small(args.dir))
    elif args.cmd == "export-cnn":
        print(export_cnn(args.dir))
    else:
        out = limit(args.model, args.path, [int(b) for b in args.batches.split(",")],
                    [int(t) for t in args.threads.split(",")], args.seconds)
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
