#!/usr/bin/env python3
"""The article's CI test step (`python test_inference.py`): check a running server answers the image classifier
correctly over REST and gRPC. Exits 0 when every check passes, 1 when one fails, 2 on bad arguments.

    python examples/image_classifier/test_inference.py                        # localhost:8501 (REST), :8500 (gRPC)
    python examples/image_classifier/test_inference.py --host pyserving --wait 120
    SERVING_HOST=10.0.0.5 REST_PORT=8501 GRPC_PORT=8500 python examples/image_classifier/test_inference.py

Works against pyserving or TensorFlow Serving serving the model of ``train_and_export.py`` (or any model whose
serving_default signature takes one float image batch and returns class probabilities). Checks, in order:

1. the model has an AVAILABLE version (``GET /v1/models/NAME``; ``--wait`` polls until it does);
2. its metadata has the signature: one float input of shape (-1, H, W, C), one float output of shape (-1, classes);
3. REST predict of a batch of generated images: one row of ``classes`` probabilities per image, each in [0, 1],
   each row summing to 1;
4. gRPC Predict of the same images: the same checks, and the same numbers as REST.

The images are generated (seeded): the example's "dataset" is random data too (train_and_export.py), and a test
that needs no data files runs anywhere the server does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import requests

SIGNATURE = "serving_default"
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


class Rest:
    def __init__(self, base_url: str, model: str, host_header: str, timeout: float) -> None:
        self.url = base_url.rstrip("/") + f"/v1/models/{model}"
        self.headers = {"Host": host_header} if host_header else {}
        self.timeout = timeout

    def get(self, suffix: str = "") -> requests.Response:
        return requests.get(self.url + suffix, headers=self.headers, timeout=self.timeout)

    def predict(self, images: np.ndarray) -> np.ndarray:
        body = json.dumps({"signature_name": SIGNATURE, "instances": images.tolist()})
        headers = {**self.headers, "Content-Type": "application/json"}
        r = requests.post(self.url + ":predict", data=body, headers=headers, timeout=self.timeout)
        check(r.status_code == 200, f"REST predict answered HTTP {r.status_code}: {r.text[:300]}")
        predictions = r.json().get("predictions")
        check(isinstance(predictions, list), f"REST predict answer has no predictions list: {r.text[:300]}")
        if predictions and isinstance(predictions[0], dict):  # several outputs: {name: value} rows
            predictions = [next(iter(row.values())) for row in predictions]
        return np.asarray(predictions, dtype=np.float64)


def wait_available(rest: Rest, wait_s: float) -> int:
    """The AVAILABLE version's number, polling up to `wait_s` for one."""
    deadline = time.monotonic() + wait_s
    while True:
        why = ""
        try:
            r = rest.get()
            if r.status_code == 200:
                states = r.json().get("model_version_status", [])
                available = [int(s["version"]) for s in states if s.get("state") == "AVAILABLE"]
                if available:
                    return max(available)
                why = f"no AVAILABLE version: {states}"
            else:
                why = f"HTTP {r.status_code}: {r.text[:300]}"
        except requests.RequestException as exc:
            why = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise CheckFailed(f"model status {rest.url}: {why}")
        time.sleep(1.0)


def signature_shapes(rest: Rest) -> tuple[str, tuple[int, ...], str, int]:
    """(input name, input shape without the batch dimension, output name, number of classes)."""
    r = rest.get("/metadata")
    check(r.status_code == 200, f"metadata answered HTTP {r.status_code}: {r.text[:300]}")
    signatures = r.json()["metadata"]["signature_def"]["signature_def"]
    check(SIGNATURE in signatures, f"no {SIGNATURE!r} signature; the model has {sorted(signatures)}")
    sig = signatures[SIGNATURE]
    check(len(sig["inputs"]) == 1 and len(sig["outputs"]) == 1,
          f"expected one input and one output, got inputs {sorted(sig['inputs'])}, outputs {sorted(sig['outputs'])}")
    (in_name, inp), = sig["inputs"].items()
    (out_name, out), = sig["outputs"].items()
    check(inp["dtype"] == "DT_FLOAT" and out["dtype"] == "DT_FLOAT",
          f"expected float input and output, got {inp['dtype']} -> {out['dtype']}")
    in_dims = [int(d["size"]) for d in inp["tensor_shape"]["dim"]]
    out_dims = [int(d["size"]) for d in out["tensor_shape"]["dim"]]
    check(len(in_dims) == 4 and in_dims[0] == -1 and all(d > 0 for d in in_dims[1:]),
          f"input {in_name} should be an image batch (-1, H, W, C), is {in_dims}")
    check(len(out_dims) == 2 and out_dims[0] == -1 and out_dims[1] > 1,
          f"output {out_name} should be class probabilities (-1, classes), is {out_dims}")
    return in_name, tuple(in_dims[1:]), out_name, out_dims[1]


def check_probabilities(what: str, probs: np.ndarray, batch: int, classes: int) -> None:
    check(probs.shape == (batch, classes), f"{what}: output shape {probs.shape}, expected {(batch, classes)}")
    check(bool(np.all(np.isfinite(probs))), f"{what}: non-finite probabilities")
    check(bool(np.all((probs >= -1e-6) & (probs <= 1 + 1e-6))), f"{what}: probabilities outside [0, 1]: {probs}")
    sums = probs.sum(axis=1)
    check(bool(np.allclose(sums, 1.0, atol=1e-3)), f"{what}: rows sum to {sums}, not 1")


def predict_grpc(target: str, model: str, in_name: str, out_name: str, images: np.ndarray,
                 timeout: float) -> tuple[np.ndarray, int]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = SIGNATURE
        request.inputs[in_name].CopyFrom(tf.make_tensor_proto(images))
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CheckFailed(f"gRPC Predict at {target}: {exc.code().name}: {exc.details()}") from None
    check(out_name in response.outputs, f"gRPC answer has outputs {sorted(response.outputs)}, not {out_name}")
    return tf.make_ndarray(response.outputs[out_name]).astype(np.float64), response.model_spec.version.value


def run(args: argparse.Namespace) -> None:
    rest_url = args.rest_url or f"http://{args.host}:{args.rest_port}"
    grpc_target = args.grpc_target or f"{args.host}:{args.grpc_port}"
    rest = Rest(rest_url, args.model_name, args.host_header, args.timeout)

    version = wait_available(rest, args.wait)
    print(f"PASS model {args.model_name} version {version} is AVAILABLE at {rest_url}")
    in_name, image_shape, out_name, classes = signature_shapes(rest)
    print(f"PASS signature {SIGNATURE}: {in_name} float (-1, {', '.join(map(str, image_shape))}) -> "
          f"{out_name} float (-1, {classes})")

    images = np.random.default_rng(args.seed).random((args.batch, *image_shape), dtype=np.float32)
    rest_probs = None
    if not args.skip_rest:
        start = time.perf_counter()
        rest_probs = rest.predict(images)
        check_probabilities("REST predict", rest_probs, args.batch, classes)
        print(f"PASS REST predict: {args.batch} images -> ({args.batch}, {classes}) probabilities summing to 1 "
              f"({(time.perf_counter() - start) * 1e3:.0f} ms; argmax {rest_probs.argmax(axis=1).tolist()})")
    if not args.skip_grpc:
        import tensorflow  # noqa: F401  (seconds to import: not part of the request's time)

        start = time.perf_counter()
        grpc_probs, grpc_version = predict_grpc(grpc_target, args.model_name, in_name, out_name, images, args.timeout)
        check_probabilities("gRPC Predict", grpc_probs, args.batch, classes)
        check(grpc_version == version, f"gRPC answered from version {grpc_version}, REST status said {version}")
        if rest_probs is not None:
            check(bool(np.allclose(grpc_probs, rest_probs, rtol=1e-4, atol=1e-5)),
                  f"gRPC and REST disagree on the same images: max difference "
                  f"{float(np.abs(grpc_probs - rest_probs).max())}")
        print(f"PASS gRPC Predict at {grpc_target}: the same shapes" + (" and numbers as REST" if rest_probs is not None
                                                                         else "") +
              f" ({(time.perf_counter() - start) * 1e3:.0f} ms)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=env("SERVING_HOST", "localhost"), help="server host (env SERVING_HOST; "
                   "default: %(default)s)")
    p.add_argument("--rest_port", type=int, default=int(env("REST_PORT", "8501")),
                   help="REST port (env REST_PORT; default: %(default)s)")
    p.add_argument("--grpc_port", type=int, default=int(env("GRPC_PORT", "8500")),
                   help="gRPC port (env GRPC_PORT; default: %(default)s)")
    p.add_argument("--rest_url", default=env("REST_URL", ""), help="REST base URL, instead of --host/--rest_port "
                   "(env REST_URL), e.g. an ingress: http://INGRESS")
    p.add_argument("--grpc_target", default=env("GRPC_TARGET", ""), help="gRPC HOST:PORT, instead of "
                   "--host/--grpc_port (env GRPC_TARGET)")
    p.add_argument("--host_header", default="", help="Host header for REST calls (an ingress routing by host, "
                   "e.g. KServe's)")
    p.add_argument("--model_name", default=env("MODEL_NAME", "my_model"), help="(env MODEL_NAME; default: "
                   "%(default)s)")
    p.add_argument("--batch", type=int, default=2, help="images per request (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images (default: %(default)s)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the model to become AVAILABLE "
                   "(default: %(default)s: it must be already)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--skip_rest", action="store_true", help="check gRPC only")
    p.add_argument("--skip_grpc", action="store_true", help="check REST only")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be at least 1")
    if args.skip_rest and args.skip_grpc:
        p.error("--skip_rest and --skip_grpc leave nothing to check")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except CheckFailed as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    except (requests.RequestException, KeyError, ValueError) as exc:
        print(f"FAIL {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("OK: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
