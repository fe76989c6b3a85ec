"""Decode TF Serving row-format ("instances") payloads: orjson + np.asarray vs pyserving's fast_json.

    python bench/json_decode.py [--repeat N] [--plot out.png]

Each payload is decoded N times per variant (median reported), first with gc in its normal state, then after
gc.freeze() (what a server does after start-up, so its long-lived objects stop being re-scanned).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyserving.frontends.rest import fast_json  # noqa: E402


def payloads() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    image = rng.random((224, 224, 3), dtype=np.float32)
    pixels = rng.integers(0, 256, (224, 224, 3))
    batch = rng.random((8, 224, 224, 3), dtype=np.float32)
    return [
        ("float image 224x224x3", orjson.dumps({"instances": [image.tolist()]})),
        ("  same, json.dumps spacing", json.dumps({"instances": [image.tolist()]}).encode()),
        ("int image 224x224x3", orjson.dumps({"instances": [pixels.tolist()]})),
        ("8 float images", orjson.dumps({"instances": batch.tolist()})),
        ("16 floats", orjson.dumps({"instances": [rng.random(16, dtype=np.float32).tolist()]})),
    ]


def baseline(body: bytes) -> np.ndarray:
    return np.asarray(orjson.loads(body)["instances"], dtype=np.float32)


def ours(body: bytes) -> np.ndarray:
    return np.asarray(fast_json.loads(body)["instances"], dtype=np.float32)


def median_ms(fn: Callable[[bytes], Any], body: bytes, repeat: int) -> float:
    fn(body)  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(body)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11, help="timed runs per measurement (median is reported)")
    parser.add_argument("--plot", type=Path, help="write a bar chart PNG here (needs matplotlib)")
    args = parser.parse_args()

    rows: list[tuple[str, str, int, float, float]] = []
    cases = payloads()
    for name, body in cases:
        expect, got = baseline(body), ours(body)
        if expect.shape != got.shape or not np.array_equal(expect, got):
            sys.exit(f"{name}: fast_json disagrees with orjson + np.asarray")
    print(f"{'payload':28} {'size':>9} {'gc':>7} {'baseline ms':>12} {'ours ms':>9} {'ratio':>6}")
    for mode in ("normal", "frozen"):
        if mode == "frozen":
            gc.collect()
            gc.freeze()
        for name, body in cases:
            repeat = max(3, args.repeat // 3) if len(body) > 10_000_000 else args.repeat
            base, fast = median_ms(baseline, body, repeat), median_ms(ours, body, repeat)
            rows.append((name, mode, len(body), base, fast))
            size = f"{len(body) / 1e6:.2f} MB" if len(body) >= 100_000 else f"{len(body) / 1e3:.1f} kB"
            print(f"{name:28} {size:>9} {mode:>7} {base:12.4f} {fast:9.4f} {base / fast:5.2f}x")
    gc.unfreeze()

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written")
            return
        fig, ax = plt.subplots(figsize=(10, 4.5))
        labels = [f"{name.strip()}\n(gc {mode})" for name, mode, *_ in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[3] for r in rows], 0.4, label="orjson + np.asarray")
        ax.bar(x + 0.2, [r[4] for r in rows], 0.4, label="fast_json.loads + np.asarray")
        ax.set_yscale("log")
        ax.set_ylabel("ms per decode (median, log scale)")
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
