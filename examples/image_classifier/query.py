#!/usr/bin/env python3
"""Send a random 224x224x3 image to a running model server and print the result.

Works against ``pyserving`` or TensorFlow Serving serving the model exported by
``train_and_export.py``::

    python examples/image_classifier/query.py                          # REST, http://localhost:8501
    python examples/image_classifier/query.py --rest http://host:8501
    python examples/image_classifier/query.py --grpc localhost:8500    # gRPC PredictionService
    python examples/image_classifier/query.py --grpc localhost:8500 --batch 8

REST uses the row format ``{"instances": [image, ...]}`` against
``/v1/models/<model_name>:predict``; gRPC sends a ``PredictRequest`` whose
``images`` input is built with ``tf.make_tensor_proto``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

IMAGE_SHAPE = (224, 224, 3)
INPUT_KEY = "images"
OUTPUT_KEY = "predictions"
# One float32 image is ~600 KB as a tensor (and several MB as JSON); a batch
# quickly exceeds gRPC's default 4 MiB receive limit, so lift the limits.
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


def random_images(batch: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, *IMAGE_SHAPE), dtype=np.float32)


def predict_rest(base_url: str, model_name: str, images: np.ndarray,
                 signature_name: str, version: int | None, timeout: float) -> np.ndarray:
    import requests

    url = base_url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    url += f"/v1/models/{model_name}"
    if version is not None:
        url += f"/versions/{version}"
    url += ":predict"
    body = {"instances": images.tolist()}
    if signature_name != "serving_default":
        body["signature_name"] = signature_name
    try:
        resp = requests.post(url, json=body, timeout=timeout)
    except requests.RequestException as e:
        raise SystemExit(f"REST {url} -> {type(e).__name__}: {e}")
    if resp.status_code != 200:
        raise SystemExit(f"REST {url} -> HTTP {resp.status_code}: {resp.text[:500]}")
    payload = resp.json()
    preds = payload["predictions"]
    # A single-output signature returns a list of rows; a multi-output one a
    # list of {output_name: value} objects.
    if preds and isinstance(preds[0], dict):
        preds = [row[OUTPUT_KEY] for row in preds]
    return np.asarray(preds, dtype=np.float32)


def predict_grpc(target: str, model_name: str, images: np.ndarray,
                 signature_name: str, version: int | None, timeout: float) -> np.ndarray:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(images))
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            raise SystemExit(f"gRPC {target} -> {e.code().name}: {e.details()}")
    return tf.make_ndarray(response.outputs[OUTPUT_KEY])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rest", default=None, metavar="URL",
                      help="REST endpoint (default: http://localhost:8501 unless --grpc is given)")
    mode.add_argument("--grpc", default=None, metavar="HOST:PORT",
                      help="gRPC endpoint, e.g. localhost:8500")
    p.add_argument("--model_name", default="my_model", help="(default: %(default)s)")
    p.add_argument("--signature_name", default="serving_default", help="(default: %(default)s)")
    p.add_argument("--model_version", type=int, default=None,
                   help="request a specific version (default: the latest)")
    p.add_argument("--batch", type=int, default=1, help="number of random images (default: 1)")
    p.add_argument("--seed", type=int, default=None, help="seed for the random image(s)")
    p.add_argument("--timeout", type=float, default=60.0, help="request timeout in seconds")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")

    images = random_images(args.batch, args.seed)
    if args.grpc:
        endpoint, call = f"gRPC {args.grpc}", predict_grpc
        target = args.grpc
    else:
        target = args.rest or "http://localhost:8501"
        endpoint, call = f"REST {target}", predict_rest

    if call is predict_grpc:
        import tensorflow  # noqa: F401  (import outside the timed region)

    start = time.perf_counter()
    probs = call(target, args.model_name, images, args.signature_name,
                 args.model_version, args.timeout)
    latency_ms = (time.perf_counter() - start) * 1e3

    np.set_printoptions(precision=4, suppress=True)
    print(f"{endpoint}  model={args.model_name}  batch={args.batch}  "
          f"latency={latency_ms:.1f} ms")
    if probs.shape != (args.batch, 10):
        print(f"warning: unexpected output shape {probs.shape}", file=sys.stderr)
    for i, row in enumerate(probs):
        print(f"[{i}] probabilities={row}  argmax={int(np.argmax(row))}  "
              f"p={float(row[np.argmax(row)]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
