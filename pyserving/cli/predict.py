"""`pyserving predict --model M --input FILE [--signature S] [--grpc HOST:PORT]`: one Predict request from a file,
against pyserving or TF Serving (both speak these APIs), with the outputs printed readably.

The model's metadata comes first (GET /v1/models/M/metadata or gRPC GetModelMetadata): it names the signature's
inputs, their dtypes and shapes, which turn a file into the request:
  * .json: a TF Serving request body ({"instances": ...} or {"inputs": ...}) sent as it is, or a bare list: the
    value of the signature's one input (batch dimension included);
  * .npy: the value of the input; an array one dimension short of the signature gets a batch dimension of 1;
  * .png / .jpg / .jpeg: decoded with Pillow, converted to the input's channels (1: grayscale, 3: RGB, 4: RGBA),
    resized to its H x W (NHWC; an unknown H or W keeps the image's), batch of 1; a float input gets the pixels
    scaled to 0..1, an integer input gets 0..255; a DT_STRING input gets the file's bytes as they are.
A classifier-like output (rows of at least two float scores: probabilities or logits) also prints its top-k.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyserving.cli.client import ClientError, grpc_call, rest
from pyserving.dtypes import DType

PROG = "pyserving predict"
DEFAULT_SIGNATURE = "serving_default"
MAX_INPUT_BYTES = 256 << 20
"""pyserving's default --max_request_bytes: a bigger file would only make a request the server refuses."""
MAX_TOP_K_ROWS = 10
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FLOAT_TYPES = {DType.DT_FLOAT, DType.DT_DOUBLE, DType.DT_HALF, DType.DT_BFLOAT16}


class InputError(Exception):
    """The input file (or the options) cannot make a request for this signature; one line for the operator."""


@dataclass(frozen=True)
class Spec:
    dtype: DType
    shape: tuple[int, ...] | None
    """None for unknown rank; -1 for an unknown dim."""

    def text(self) -> str:
        shape = "unknown rank" if self.shape is None else "[" + ", ".join(map(str, self.shape)) + "]"
        return f"{self.dtype.name} {shape}"


@dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: Mapping[str, Spec]
    outputs: Mapping[str, Spec]


@dataclass
class Target:
    model: str
    version: int | None
    label: str | None
    signature: str

    def rest_path(self) -> str:
        path = f"/v1/models/{urllib.parse.quote(self.model, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{urllib.parse.quote(self.label, safe='')}"
        return path

    def fill_spec(self, spec: Any, *, signature: bool = True) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature:
            spec.signature_name = self.signature


# --- metadata ------------------------------------------------------------------------------------------------

def _spec_from_json(raw: Mapping[str, Any]) -> Spec:
    shape_raw = raw.get("tensor_shape", {})
    shape = None if shape_raw.get("unknown_rank") else tuple(int(d.get("size", -1)) for d in shape_raw.get("dim", []))
    # A type pyserving has no name for (a reference type, say) cannot be built from a file: DT_INVALID says so later.
    return Spec(DType.__members__.get(raw.get("dtype", ""), DType.DT_INVALID), shape)


def _pick(signatures: Mapping[str, Any], target: Target) -> Any:
    if target.signature not in signatures:
        names = ", ".join(sorted(k for k in signatures if not k.startswith("__"))) or "none"
        raise ClientError(f"model {target.model} has no signature {target.signature!r}; its signatures: {names}")
    return signatures[target.signature]


def metadata_rest(url: str, target: Target, token: str | None, timeout_s: float) -> SignatureInfo:
    doc = rest(url, target.rest_path() + "/metadata", token=token, timeout_s=timeout_s)
    try:
        signatures = doc["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError):
        raise ClientError(f"{url}: the metadata of {target.model} has no signature_def") from None
    sig = _pick(signatures, target)
    return SignatureInfo(target.signature, {k: _spec_from_json(v) for k, v in sig.get("inputs", {}).items()},
                         {k: _spec_from_json(v) for k, v in sig.get("outputs", {}).items()})


def metadata_grpc(address: str, target: Target, token: str | None, timeout_s: float) -> SignatureInfo:
    from pyserving.codecs.tfserving.protos.get_model_metadata_pb2 import (
        GetModelMetadataRequest,
        GetModelMetadataResponse,
        SignatureDefMap,
    )
    from pyserving.codecs.tfserving.protos.services import PREDICTION_SERVICE

    request = GetModelMetadataRequest(metadata_field=["signature_def"])
    target.fill_spec(request.model_spec, signature=False)
    response = grpc_call(address, PREDICTION_SERVICE, "GetModelMetadata", request, GetModelMetadataResponse,
                         token=token, timeout_s=timeout_s)
    defs = SignatureDefMap.FromString(response.metadata["signature_def"].value).signature_def
    sig = _pick(defs, target)

    def spec(info: Any) -> Spec:
        shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        dtype = DType(info.dtype) if info.dtype in DType._value2member_map_ else DType.DT_INVALID
        return Spec(dtype, shape)

    return SignatureInfo(target.signature, {k: spec(v) for k, v in sig.inputs.items()},
                         {k: spec(v) for k, v in sig.outputs.items()})


# --- the input file ------------------------------------------------------------------------------------------

def _only_input(sig: SignatureInfo, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in sig.inputs:
            raise InputError(f"--input_name {wanted}: signature {sig.name} has inputs {', '.join(sorted(sig.inputs))}")
        return wanted
    if len(sig.inputs) != 1:
        raise InputError(f"signature {sig.name} has {len(sig.inputs)} inputs ({', '.join(sorted(sig.inputs))}): "
                         "give a JSON request body naming each, or pick one with --input_name")
    return next(iter(sig.inputs))


def _as_dtype(alias: str, value: Any, spec: Spec) -> np.ndarray:
    try:
        if spec.dtype == DType.DT_STRING:
            array = np.asarray(value, dtype=object)
            return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array) \
                if array.size else array
        return np.asarray(value, dtype=spec.dtype.numpy)
    except (TypeError, ValueError) as exc:
        raise InputError(f"input {alias}: cannot make a {spec.dtype.name} tensor of it: {exc}") from None


def _add_batch(array: np.ndarray, spec: Spec) -> np.ndarray:
    if spec.shape is not None and array.ndim == len(spec.shape) - 1:
        return array[np.newaxis]
    return array


def read_image(path: str, alias: str, spec: Spec) -> np.ndarray:
    if spec.dtype == DType.DT_STRING:  # the model decodes the image itself (an image_bytes input)
        with open(path, "rb") as f:
            return np.array([f.read()], dtype=object)
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading images needs Pillow: pip install 'pyserving[tools]' (or pillow)") from None
    if spec.shape is None or len(spec.shape) != 4:
        shape = "unknown rank" if spec.shape is None else f"rank {len(spec.shape)}"
        raise InputError(f"input {alias} has {shape}; an image needs an NHWC input ([batch, height, width, channels])")
    _, height, width, channels = spec.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, "RGB" if channels == -1 else "")
    if not mode:
        raise InputError(f"input {alias} has {channels} channels; an image converts to 1, 3 or 4")
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            size = (width if width > 0 else image.width, height if height > 0 else image.height)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not an image Pillow can read: {exc}") from None
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    if spec.dtype in _FLOAT_TYPES:
        return (pixels.astype(np.float32) / 255.0).astype(spec.dtype.numpy)[np.newaxis]
    return _as_dtype(alias, pixels, spec)[np.newaxis]


def _b64_decoded(value: Any) -> Any:
    """TF Serving's {"b64": ...} values as bytes, for the gRPC request (REST sends them as they are)."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(str(value["b64"]), validate=True)
            except ValueError as exc:
                raise InputError(f"a \"b64\" value is not base64: {exc}") from None
        return {k: _b64_decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_b64_decoded(v) for v in value]
    return value


def body_tensors(body: Mapping[str, Any], sig: SignatureInfo, input_name: str | None) -> dict[str, np.ndarray]:
    """A TF Serving REST body as the tensors gRPC sends (row format stacked per input)."""
    def spec(alias: str) -> Spec:
        if alias not in sig.inputs:
            raise InputError(f"signature {sig.name} has no input {alias!r}; "
                             f"its inputs: {', '.join(sorted(sig.inputs))}")
        return sig.inputs[alias]

    if "instances" in body:
        rows = _b64_decoded(body["instances"])
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            return {k: _as_dtype(k, [r.get(k) for r in rows], spec(k)) for k in rows[0]}
        alias = _only_input(sig, input_name)
        return {alias: _as_dtype(alias, rows, sig.inputs[alias])}
    if "inputs" in body:
        inputs = _b64_decoded(body["inputs"])
        if isinstance(inputs, dict):
            return {k: _as_dtype(k, v, spec(k)) for k, v in inputs.items()}
        alias = _only_input(sig, input_name)
        return {alias: _as_dtype(alias, inputs, sig.inputs[alias])}
    raise InputError('a JSON request body needs "instances" or "inputs" (TF Serving\'s REST format)')


def body_signature(path: str) -> str | None:
    """The signature_name of a JSON request body, which picks the signature whose metadata the file is read by."""
    if not path.lower().endswith(".json") or not os.path.isfile(path) or os.path.getsize(path) > MAX_INPUT_BYTES:
        return None  # read_input reports what is wrong with the file
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    name = doc.get("signature_name") if isinstance(doc, dict) else None
    return str(name) if name else None


def _signature(option: str | None, in_body: str | None) -> str:
    if option and in_body and option != in_body:
        raise InputError(f"--signature {option} but the request body names signature_name {in_body!r}: "
                         "drop one of them")
    return option or in_body or DEFAULT_SIGNATURE


@dataclass
class Request:
    body: dict[str, Any] | None
    """A TF Serving body from the file, sent over REST as it is."""
    tensors: dict[str, np.ndarray] | None


def read_input(path: str, sig: SignatureInfo, input_name: str | None) -> Request:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise InputError(f"--input {path}: {exc.strerror or exc}") from None
    if size > MAX_INPUT_BYTES:
        raise InputError(f"--input {path}: {size} bytes is more than a request may carry ({MAX_INPUT_BYTES} bytes)")
    lower = path.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        alias = _only_input(sig, input_name)
        return Request(None, {alias: read_image(path, alias, sig.inputs[alias])})
    if lower.endswith(".npy"):
        alias = _only_input(sig, input_name)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {path}: not a .npy array numpy can read without pickle: {exc}") from None
        spec = sig.inputs[alias]
        return Request(None, {alias: _add_batch(_as_dtype(alias, array, spec), spec)})
    if lower.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {path}: not JSON: {exc}") from None
        if isinstance(doc, dict):
            body_tensors(doc, sig, input_name)  # checks it before anything is sent
            return Request(doc, None)
        if isinstance(doc, list):
            alias = _only_input(sig, input_name)
            return Request(None, {alias: _as_dtype(alias, _b64_decoded(doc), sig.inputs[alias])})
        raise InputError(f"--input {path}: JSON must be a request body (an object) or a list of values")
    raise InputError(f"--input {path}: use a .json, .npy, .png, .jpg or .jpeg file")


# --- sending -------------------------------------------------------------------------------------------------

def _json_value(array: np.ndarray) -> Any:
    if array.dtype == object:
        return np.vectorize(lambda v: {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v,
                            otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def predict_rest(url: str, target: Target, request: Request, sig: SignatureInfo, token: str | None,
                 timeout_s: float) -> dict[str, np.ndarray]:
    if request.body is not None:
        body = {**request.body, "signature_name": target.signature}
    else:
        assert request.tensors is not None
        body = {"signature_name": target.signature,
                "inputs": {k: _json_value(v) for k, v in request.tensors.items()}}
    doc = rest(url, target.rest_path() + ":predict", body=json.dumps(body).encode(), token=token, timeout_s=timeout_s)
    if "outputs" in doc:
        outputs = doc["outputs"]
    elif "predictions" in doc:
        outputs = doc["predictions"]
        if isinstance(outputs, list) and outputs and all(isinstance(r, dict) for r in outputs):
            outputs = {k: [r[k] for r in outputs] for k in outputs[0]}
    else:
        raise ClientError(f"{url}: the answer has neither outputs nor predictions")
    if not isinstance(outputs, dict):
        outputs = {next(iter(sig.outputs)) if len(sig.outputs) == 1 else "output": outputs}
    return {k: _rest_array(v, sig.outputs.get(k)) for k, v in outputs.items()}


def _rest_array(value: Any, spec: Spec | None) -> np.ndarray:
    """A REST output as the tensor it was: JSON numbers in the signature's dtype, so REST and gRPC print alike."""
    if _has_objects(value):
        return np.asarray(value, dtype=object)
    try:
        return np.asarray(value, dtype=spec.dtype.numpy if spec is not None else None)
    except (TypeError, ValueError):
        return np.asarray(value)


def _has_objects(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_objects(v) for v in value)
    return isinstance(value, (dict, str))


def predict_grpc(address: str, target: Target, request: Request, sig: SignatureInfo, token: str | None,
                 timeout_s: float, input_name: str | None) -> dict[str, np.ndarray]:
    from pyserving.codecs.tfserving.protos.predict_pb2 import PredictRequest, PredictResponse
    from pyserving.codecs.tfserving.protos.services import PREDICTION_SERVICE
    from pyserving.codecs.tfserving.tensor import fill_proto, to_ndarray
    from pyserving.errors import ServingError

    tensors = request.tensors if request.tensors is not None else body_tensors(request.body or {}, sig, input_name)
    proto = PredictRequest()
    target.fill_spec(proto.model_spec)
    for alias, array in tensors.items():
        fill_proto(proto.inputs[alias], array, tensor_content=array.dtype != object)
    response = grpc_call(address, PREDICTION_SERVICE, "Predict", proto, PredictResponse, token=token,
                         timeout_s=timeout_s)
    try:
        return {k: to_ndarray(k, v) for k, v in response.outputs.items()}
    except ServingError as exc:
        raise ClientError(f"{address}: cannot decode the answer: {exc.message}") from None


# --- printing ------------------------------------------------------------------------------------------------

def top_k(array: np.ndarray, k: int) -> list[list[tuple[int, float]]] | None:
    """Per row, the k best (index, score) of a classifier-like output: a [batch, classes] float tensor with at
    least two classes (probabilities or logits), for a batch small enough to read."""
    if k <= 0 or array.dtype.kind != "f" or array.ndim != 2:
        return None
    if array.shape[1] < 2 or not 0 < array.shape[0] <= MAX_TOP_K_ROWS:
        return None
    return [[(int(i), float(row[i])) for i in np.argsort(-row, kind="stable")[:k]] for row in array]


def _labels(path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f]
    except OSError as exc:
        raise InputError(f"--labels {path}: {exc.strerror or exc}") from None


def output_lines(outputs: Mapping[str, np.ndarray], k: int, labels: Sequence[str]) -> list[str]:
    lines: list[str] = []
    for alias in sorted(outputs):
        array = outputs[alias]
        text = np.array2string(array, threshold=200, edgeitems=5, max_line_width=110, separator=", ")
        lines.append(f"outputs['{alias}']: {array.dtype if array.dtype != object else 'string'} "
                     f"shape {tuple(array.shape)}")
        lines += ["  " + line for line in text.splitlines()]
        best = top_k(array, k) or []
        for row_number, row in enumerate(best):
            heading = f"  top {len(row)}" + (f" of row {row_number}" if len(best) > 1 else "") + ":"
            lines.append(heading)
            for rank, (index, score) in enumerate(row, 1):
                name = f" {labels[index]}" if index < len(labels) else ""
                lines.append(f"    {rank}. index {index}{name}  score {score:.6g}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Send one Predict request built from a file to pyserving or TF Serving and print the outputs "
                    "(and the top-k of a classifier-like output). Input files: .json (a TF Serving request body, "
                    "or a bare list: the value of the signature's one input, batch included); .npy (the input's "
                    "value; one dimension short of the signature gets a batch of 1); .png/.jpg/.jpeg (Pillow: "
                    "converted to the input's 1/3/4 channels and resized to its H x W, batch of 1; pixels are "
                    "scaled to 0..1 floats when the input is a float type, kept 0..255 for an integer type, and "
                    "a DT_STRING input gets the file's bytes).",
    )
    p.add_argument("--model", required=True, help="the model name")
    p.add_argument("--input", required=True, metavar="FILE", help=".json, .npy, .png, .jpg or .jpeg")
    p.add_argument("--signature", help="signature name (default: a JSON body's signature_name, else "
                                       "serving_default)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a specific version (default: the one the server picks)")
    which.add_argument("--label", help="a version label, e.g. stable")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rest", metavar="URL", help="the server's REST address (default http://localhost:8501)")
    where.add_argument("--grpc", metavar="HOST:PORT", nargs="?", const="localhost:8500",
                       help="use gRPC (PredictionService/Predict) at HOST:PORT (default localhost:8500)")
    p.add_argument("--input_name", help="which input a .npy/image/list file is for, when the signature has several")
    p.add_argument("--top_k", type=int, default=5, help="top-k of a classifier-like output (default 5; 0: none)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, to print next to top-k indices")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")
    p.add_argument("--token", help="API key or JWT for a server with --auth_config_file (default: $PYSERVING_TOKEN)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    return p


def main(argv: Sequence[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    if args.top_k < 0:
        p.error("--top_k must be 0 or more")
    try:
        signature = _signature(args.signature, body_signature(args.input))
        target = Target(args.model, args.version, args.label, signature)
        labels = _labels(args.labels)
        if args.grpc:
            sig = metadata_grpc(args.grpc, target, args.token, args.timeout)
        else:
            url = args.rest or "http://localhost:8501"
            sig = metadata_rest(url, target, args.token, args.timeout)
        request = read_input(args.input, sig, args.input_name)
        if args.grpc:
            outputs = predict_grpc(args.grpc, target, request, sig, args.token, args.timeout, args.input_name)
        else:
            outputs = predict_rest(url, target, request, sig, args.token, args.timeout)
    except (ClientError, InputError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        doc = {"outputs": {k: _json_value(v) for k, v in sorted(outputs.items())}}
        best = {k: [[{"index": i, "score": s} for i, s in row] for row in rows]
                for k, v in sorted(outputs.items()) if (rows := top_k(v, args.top_k))}
        if best:
            doc["top_k"] = best
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(output_lines(outputs, args.top_k, labels)))
    return 0
