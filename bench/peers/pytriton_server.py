"""NVIDIA Triton (through PyTriton) serving the small SavedModel with Triton's dynamic batcher.

    python bench/peers/pytriton_server.py SAVED_MODEL_DIR HTTP_PORT GRPC_PORT METRICS_PORT \
        [--max-batch-size 64] [--delay-us 1000] [--instances 1] [--workspace DIR]

Runs inside the PyTriton venv, with LD_LIBRARY_PATH holding the lib directory of the Python that venv was built
from (bench/batching.py sets it). Every port binds 127.0.0.1. V2 inference protocol: POST /v2/models/small/infer.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("http_port", type=int)
    p.add_argument("grpc_port", type=int)
    p.add_argument("metrics_port", type=int)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--delay-us", type=int, default=1000)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--workspace", default=None, help="PyTriton's working folder (default: one under ~/.cache)")
    args = p.parse_args()

    fn = tf.saved_model.load(args.model).signatures["serving_default"]

    @batch
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": fn(x=tf.constant(x))["y"].numpy()}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_address="127.0.0.1", metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name="small",
            infer_func=[infer] * args.instances,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(16,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(4,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
