"""The Open Inference Protocol (KServe V2) on the REST and gRPC ports, checked with Triton's own clients,
unchanged, against a TensorFlow model and a framework-free "memory" model."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import tritonclient.grpc as grpcclient  # (scripts/test.sh installs Triton's client)
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import RunningServer, run_server
from pyserving.codecs.oip.tensor import DTYPES, InputTensor, decode_inputs, output_tensor, to_raw
from pyserving.core.ids import ServableRequest
from pyserving.errors import Code, ServingError
from pyserving.frontends.rest.oip_v2 import _loads as v2_loads, parse_infer
from pyserving.options import BatchingOptions, ModelConfig, ServerOptions
from pyserving.runtimes.base import Signature, TensorSpec
from pyserving.dtypes import DType
from pyserving.runtimes.memory import write_model

TIMEOUT = 30
MEMORY_SIGNATURES = {
    "serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 2]}},
                        "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 2]},
                                    "n": {"dtype": "DT_INT64", "shape": [-1, 2]}}},
    "echo": {"inputs": {"s": {"dtype": "DT_STRING", "shape": [-1]}},
             "outputs": {"t": {"dtype": "DT_STRING", "shape": [-1]}}},
    "wide": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 40000]}},
             "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 40000]}}},
}


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("oip")
    write_model(str(root / "mem" / "1"), {"signatures": MEMORY_SIGNATURES, "scale": 2.0, "offset": 1.0})
    batching = BatchingOptions(max_batch_size=64, batch_timeout_micros=100_000, num_batch_threads=1,
                               max_enqueued_batches=100)
    options = ServerOptions(models=(
        ModelConfig("half", str(testdata / "saved_model_half_plus_two_cpu")),
        ModelConfig("mem", str(root / "mem"), platform="memory"),
    ), batching=batching)
    with run_server(options) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.rest_url.removeprefix("http://"), network_timeout=TIMEOUT)
    yield client
    client.close()


def _batch_sizes(server: RunningServer, model: str) -> dict[int, int]:
    with server.server.manager.lease(ServableRequest(model)) as lease:
        assert lease.batcher is not None
        return dict(lease.batcher.batch_sizes)


# --- REST with tritonclient.http ------------------------------------------------------------------------------


def test_rest_health_and_server_metadata(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "pyserving" and "binary_tensor_data" in meta["extensions"]
    assert http.is_model_ready("half") and http.is_model_ready("mem", "1")
    assert not http.is_model_ready("nope") and not http.is_model_ready("mem", "7")


def test_rest_model_metadata(http: httpclient.InferenceServerClient) -> None:
    meta = http.get_model_metadata("mem")
    assert meta["name"] == "mem" and meta["versions"] == ["1"] and meta["platform"] == "memory"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"y": "FP32", "n": "INT64"}
    half = http.get_model_metadata("half", "123")
    assert half["platform"] == "tensorflow" and half["inputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize("binary", [False, True])
def test_rest_infer_tf_model(http: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.array([1.0, 2.0, 5.0], np.float32)
    inp = httpclient.InferInput("x", [3], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = http.infer("half", [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
                        request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("y").reshape(-1), x * 0.5 + 2)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == "half" and response["model_version"] == "123"


@pytest.mark.parametrize("binary", [False, True])
def test_rest_infer_memory_model(http: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    inp = httpclient.InferInput("x", [3, 2], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = http.infer("mem", [inp], model_version="1", outputs=[
        httpclient.InferRequestedOutput("n", binary_data=binary), httpclient.InferRequestedOutput("y")])
    np.testing.assert_array_equal(result.as_numpy("n"), (x * 2 + 1).astype(np.int64))
    np.testing.assert_allclose(result.as_numpy("y"), x * 2 + 1)
    assert result.as_numpy("n").dtype == np.int64


@pytest.mark.parametrize("binary", [False, True])
def test_rest_bytes_through_a_named_signature(http: httpclient.InferenceServerClient, binary: bool) -> None:
    s = np.array([b"hello", b"", "wörld".encode()], dtype=object)
    inp = httpclient.InferInput("s", [3], "BYTES")
    inp.set_data_from_numpy(s, binary_data=binary)
    result = http.infer("mem", [inp], parameters={"signature_name": "echo"},
                        outputs=[httpclient.InferRequestedOutput("t", binary_data=binary)])
    # tritonclient hands JSON strings back as str, binary elements as bytes
    assert [t if isinstance(t, bytes) else t.encode() for t in result.as_numpy("t")] == list(s)


def test_rest_plain_json_and_errors(server: RunningServer) -> None:
    url = f"{server.rest_url}/v2/models"
    body = {"id": "a", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}],
            "outputs": [{"name": "y"}]}
    answer = requests.post(f"{url}/mem/infer", json=body, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_name": "mem", "model_version": "1", "id": "a", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [3.0, 5.0, 7.0, 9.0]}]}
    answer = requests.post(f"{url}/nope/infer", json=body, timeout=TIMEOUT)
    assert answer.status_code == 404 and "nope" in answer.json()["error"]
    for datatype in ("FLOAT", "FP64"):
        bad = {"inputs": [{**body["inputs"][0], "datatype": datatype}]}
        answer = requests.post(f"{url}/mem/infer", json=bad, timeout=TIMEOUT)
        assert answer.status_code == 400 and datatype in answer.json()["error"], answer.text
    bad = {"inputs": [{**body["inputs"][0], "shape": [3, 2]}]}
    answer = requests.post(f"{url}/mem/infer", json=bad, timeout=TIMEOUT)
    assert answer.status_code == 400 and "needs 6" in answer.json()["error"]
    answer = requests.post(f"{url}/mem/infer", data=b"{", timeout=TIMEOUT)
    assert answer.status_code == 400 and "error" in answer.json()
    assert requests.get(f"{url}/nope", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{server.rest_url}/v2/nothing", timeout=TIMEOUT).status_code == 404


def test_rest_errors_through_tritonclient(http: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, np.float32))
    with pytest.raises(InferenceServerException, match="nope"):
        http.infer("nope", [inp])
    with pytest.raises(InferenceServerException):
        http.get_model_metadata("nope")


def test_v1_and_v2_requests_share_the_batcher(server: RunningServer) -> None:
    before = _batch_sizes(server, "half")

    def v1(i: int) -> list[float]:
        answer = requests.post(f"{server.rest_url}/v1/models/half:predict", json={"instances": [float(i)]},
                               timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    def v2(i: int) -> list[float]:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [float(i)]}]}
        answer = requests.post(f"{server.rest_url}/v2/models/half/infer", json=body, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        return answer.json()["outputs"][0]["data"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(v1 if i % 2 else v2, i) for i in range(8)]
        got = [f.result() for f in futures]
    assert [g[0] for g in got] == [0.5 * i + 2 for i in range(8)]
    after = _batch_sizes(server, "half")
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in new.items()) == 8
    assert max(size for size, count in new.items() if count) > 1, f"no batch held two requests: {new}"


def test_v2_requests_are_counted_as_predict(server: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    assert requests.post(f"{server.rest_url}/v2/models/mem/infer", json=body, timeout=TIMEOUT).status_code == 200
    samples = [s for metric in server.server.metrics.registry.collect() for s in metric.samples
               if s.labels.get("model") == "mem" and s.labels.get("api") == "predict"
               and s.labels.get("protocol") == "rest"]
    assert samples, "no predict request of model mem was counted for protocol rest"


# --- the codec ------------------------------------------------------------------------------------------------


def test_bytes_raw_round_trip_and_malformed_lengths() -> None:
    sig = Signature("s", "", {"s": TensorSpec(DType.DT_STRING, (None,))}, {})
    raw = to_raw(output_tensor("s", np.array([b"ab", b"", b"\xff"], dtype=object)))
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x01\x00\x00\x00\xff"
    arrays = decode_inputs([InputTensor("s", "BYTES", [3], raw=raw)], sig, "m")
    assert list(arrays["s"]) == [b"ab", b"", b"\xff"]
    for cut in (raw[:-1], raw[:5], raw + b"\x01"):
        with pytest.raises(ServingError) as err:
            decode_inputs([InputTensor("s", "BYTES", [3], raw=cut)], sig, "m")
        assert err.value.code == Code.INVALID_ARGUMENT


def _big(values: list, datatype: str, shape: list[int] | None = None, name: str = "x") -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape or [len(values)], "datatype": datatype,
                                   "data": values}]}).encode()  # (json: orjson cannot write ints past int64)


_RNG = np.random.default_rng(7)
_FLOATS = (_RNG.standard_normal(40_000) * 10.0 ** _RNG.integers(-30, 30, 40_000)).tolist()
_INTS = _RNG.integers(-1000, 1000, 40_000).tolist()
BIG_V2_BODIES = {
    # (datatype of the input and of the signature, body): each body's `data` is well over fast_json's threshold
    "fp32-floats": ("FP32", _big(_FLOATS, "FP32")),
    "fp32-ints": ("FP32", _big(_INTS, "FP32")),
    "fp32-ints-past-2**53": ("FP32", _big([2**60 + 1, *_INTS], "FP32", [40_001])),
    "fp16": ("FP16", _big(_FLOATS, "FP16")),
    "fp64-nested": ("FP64", _big(np.reshape(_FLOATS, (200, 200)).tolist(), "FP64", [200, 200])),
    "int32": ("INT32", _big(_INTS, "INT32")),
    "int32-given-floats": ("INT32", _big([float(v) + 0.5 for v in _INTS], "INT32")),
    "uint8-out-of-range": ("UINT8", _big(_INTS, "UINT8")),
    "int8-past-int64": ("INT8", _big([2**70, *_INTS], "INT8", [40_001])),
    "bool": ("BOOL", _big([v % 2 for v in _INTS] * 2, "BOOL")),
    "bytes-given-numbers": ("BYTES", _big(_INTS, "BYTES")),
    "count-off": ("FP32", _big(_FLOATS, "FP32", [39_999])),
    "nan": ("FP32", _big(_FLOATS, "FP32").replace(b",", b",NaN,", 1)),
    "infinity-in-a-string": ("FP32", _big(_FLOATS, "FP32").replace(b"{", b'{"id": "-Infinity", ', 1)),
    "many-capitals": ("FP32", _big(_FLOATS, "FP32").replace(b"{", b'{"id": "' + b"N" * 100 + b'", ', 1)),
    "malformed": ("FP32", _big(_FLOATS, "FP32")[:-3]),
}
READ_BY_ORJSON = ("nan", "infinity-in-a-string", "many-capitals", "malformed")
"""fast_json would accept NaN and Infinity, which orjson refuses; a document that may hold them (or is malformed:
the error's words) is orjson's to read."""


@pytest.mark.parametrize("case", list(BIG_V2_BODIES))
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # fp16: both ways
def test_big_json_data_decodes_as_orjson_reads_it(case: str) -> None:
    """V2 JSON bodies whose `data` fast_json turns into a numpy array give the tensors, or the refusals (same
    words), that orjson's lists give."""
    datatype, body = BIG_V2_BODIES[case]
    sig = Signature("serving_default", "", {"x": TensorSpec(DTYPES[datatype], (None,))}, {})

    def decode(loads: Callable[[bytes], Any]) -> np.ndarray | str:
        try:
            inputs, _, _ = parse_infer(loads(body), memoryview(b""))
            return decode_inputs(inputs, sig, "m")["x"]
        except ServingError as exc:
            return f"{exc.code.name}: {exc.message}"
        except orjson.JSONDecodeError as exc:
            return f"JSONDecodeError: {exc}"

    expected, got = decode(orjson.loads), decode(v2_loads)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()
    if case in ("nan", "malformed"):  # refused, in orjson's words (above)
        return
    data = v2_loads(body)["inputs"][0]["data"]
    # orjson's lists where it read the document; fast_json leaves integers past int64 as a list too
    as_list = case in READ_BY_ORJSON or case == "int8-past-int64"
    assert isinstance(data, list if as_list else np.ndarray), type(data)


def test_big_json_tensor_through_tritonclient(http: httpclient.InferenceServerClient) -> None:
    # ~1.6 MB of JSON numbers: decoded in the front end's decoding thread, as a numpy array
    x = np.random.default_rng(3).standard_normal((2, 40_000)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    result = http.infer("mem", [inp], parameters={"signature_name": "wide"},
                        outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("y"), x * np.float32(2) + np.float32(1))


# --- gRPC with tritonclient.grpc ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def test_grpc_health_and_metadata(grpc_client: grpcclient.InferenceServerClient) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.get_server_metadata(as_json=True)["name"] == "pyserving"
    assert grpc_client.is_model_ready("half") and grpc_client.is_model_ready("mem", "1")
    assert not grpc_client.is_model_ready("nope")
    meta = grpc_client.get_model_metadata("mem", as_json=True)
    assert meta["platform"] == "memory" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "2"]}]  # int64 in proto JSON
    assert grpc_client.get_model_metadata("half").inputs[0].datatype == "FP32"


def test_grpc_infer_tf_and_memory_models(grpc_client: grpcclient.InferenceServerClient) -> None:
    x = np.array([1.0, 2.0, 5.0], np.float32)
    inp = grpcclient.InferInput("x", [3], "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer("half", [inp], request_id="g-1")
    np.testing.assert_allclose(result.as_numpy("y").reshape(-1), x * 0.5 + 2)
    assert result.get_response().id == "g-1" and result.get_response().model_version == "123"

    m = np.arange(4, dtype=np.float32).reshape(2, 2)
    inp = grpcclient.InferInput("x", [2, 2], "FP32")
    inp.set_data_from_numpy(m)
    result = grpc_client.infer("mem", [inp], outputs=[grpcclient.InferRequestedOutput("n")])
    np.testing.assert_array_equal(result.as_numpy("n"), (m * 2 + 1).astype(np.int64))
    assert result.as_numpy("y") is None

    s = np.array([b"a", b"\xff\x00"], dtype=object)
    inp = grpcclient.InferInput("s", [2], "BYTES")
    inp.set_data_from_numpy(s)
    result = grpc_client.infer("mem", [inp], parameters={"signature_name": "echo"})
    assert list(result.as_numpy("t")) == list(s)


def test_grpc_errors(grpc_client: grpcclient.InferenceServerClient) -> None:
    inp = grpcclient.InferInput("x", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, np.float32))
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("nope", [inp])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("x", [1], "FP64")
    bad.set_data_from_numpy(np.ones(1, np.float64))
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("half", [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "FP64" in err.value.message()


def test_grpc_v2_and_v1_requests_share_the_batcher(server: RunningServer) -> None:
    from pyserving.codecs.tfserving.protos import predict_pb2
    from pyserving.codecs.tfserving.protos.services import PREDICTION_SERVICE

    before = _batch_sizes(server, "half")
    channel = server.channel()
    v1_predict = channel.unary_unary(f"/{PREDICTION_SERVICE}/Predict",
                                     request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                     response_deserializer=predict_pb2.PredictResponse.FromString)
    client = grpcclient.InferenceServerClient(server.grpc_target)

    def v1(i: int) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half"
        request.inputs["x"].dtype = 1
        request.inputs["x"].tensor_shape.dim.add(size=1)
        request.inputs["x"].float_val.append(float(i))
        return v1_predict(request, timeout=TIMEOUT).outputs["y"].float_val[0]

    def v2(i: int) -> float:
        inp = grpcclient.InferInput("x", [1], "FP32")
        inp.set_data_from_numpy(np.array([i], np.float32))
        return float(client.infer("half", [inp]).as_numpy("y")[0])

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: (v1 if i % 2 else v2)(i), range(8)))
    finally:
        client.close()
        channel.close()
    assert got == [0.5 * i + 2 for i in range(8)]
    after = _batch_sizes(server, "half")
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in new.items()) == 8
