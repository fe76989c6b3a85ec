"""The "pytorch" platform: TorchScript and torch.export models built in the test, served by a real server over TF
Serving's REST and gRPC."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_server  # noqa: E402
from pyserving.errors import Code, ServingError  # noqa: E402
from pyserving.options import BatchingOptions, LifecycleOptions, ModelConfig, RuntimeOptions, ServerOptions  # noqa: E402
from pyserving.runtimes.pytorch import TorchRuntime  # noqa: E402
from runtime_clients import (grpc_metadata, grpc_predict, rest_metadata, rest_predict, settled,  # noqa: E402
                             version_status, wait_for)

# torch 2.13 deprecates TorchScript in favour of torch.export; TorchScript files are still what most users have.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

SIGNATURE = {
    "inputs": [{"name": "x", "dtype": "DT_FLOAT", "shape": [-1, 1]}, {"name": "k", "dtype": "int64", "shape": [-1]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}, {"name": "k2", "dtype": "DT_INT64",
                                                                      "shape": [-1]}],
}


class Affine(torch.nn.Module):
    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.scale + self.offset, k * 2


def write_script(version_dir: Path, scale: float = 0.5, offset: float = 2.0,
                 signature: dict[str, object] | None = None) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Affine(scale, offset)), str(version_dir / "model.pt"))
    (version_dir / "signature.json").write_text(json.dumps(signature or SIGNATURE))
    return settled(version_dir)


def torch_options(base: Path, **kw: object) -> ServerOptions:
    batching = kw.pop("batching", None)
    model = ModelConfig(name="m", base_path=str(base), platform="pytorch", batching=batching)  # type: ignore[arg-type]
    return ServerOptions(models=(model,), **kw)  # type: ignore[arg-type]


def test_torchscript_served_over_rest_and_grpc(tmp_path: Path) -> None:
    write_script(tmp_path / "m" / "1")
    with run_server(torch_options(tmp_path / "m")) as server:
        response = rest_predict(server, "m", {"instances": [{"x": [1.0], "k": 3}, {"x": [3.0], "k": 4}]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [{"y": [2.5], "k2": 6}, {"y": [3.5], "k2": 8}]}
        out = grpc_predict(server, "m", {"x": np.array([[4.0]], np.float32), "k": np.array([5], np.int64)})
        assert out["y"].dtype == np.float32 and out["y"].tolist() == [[4.0]] and out["k2"].tolist() == [10]

        metadata = grpc_metadata(server, "m")["serving_default"]
        assert metadata["methodName"] == "tensorflow/serving/predict"
        assert metadata["inputs"]["k"] == {"dtype": "DT_INT64", "name": "k", "tensorShape": {"dim": [{"size": "-1"}]}}
        assert metadata["outputs"]["y"]["tensorShape"] == {"dim": [{"size": "-1"}, {"size": "1"}]}
        assert set(rest_metadata(server, "m")["serving_default"]["outputs"]) == {"y", "k2"}

        wrong = rest_predict(server, "m", {"inputs": {"x": [[1.0]], "k": [1.5]}})
        assert wrong.status_code == 400, wrong.text


def test_torch_export_program_is_served(tmp_path: Path) -> None:
    class HalfPlusTwo(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": x * 0.5 + 2.0}

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    program = torch.export.export(HalfPlusTwo(), (torch.ones(2, 1),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(version / "model.pt2"))
    (version / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]}))
    settled(version)
    with run_server(torch_options(tmp_path / "m")) as server:
        assert rest_predict(server, "m", {"instances": [[1.0], [2.0], [3.0]]}).json() == \
            {"predictions": [[2.5], [3.0], [3.5]]}


def test_load_errors_say_what_is_missing_or_wrong(tmp_path: Path) -> None:
    runtime, version = TorchRuntime(), tmp_path / "1"
    write_script(version)
    os.remove(version / "signature.json")
    assert not runtime.is_complete(str(version))  # the model file alone is not a complete version
    with pytest.raises(ServingError) as unnamed:
        runtime.load(str(version), RuntimeOptions())
    assert unnamed.value.code == Code.NOT_FOUND and "signature.json" in unnamed.value.message

    (version / "signature.json").write_text(json.dumps({"inputs": [{"name": "s", "dtype": "DT_STRING"}],
                                                         "outputs": []}))
    with pytest.raises(ServingError, match="torch has no string tensors"):
        runtime.load(str(version), RuntimeOptions())

    (version / "signature.json").write_text(json.dumps(SIGNATURE))
    (version / "model.pt").write_bytes(b"not a zip archive")
    with pytest.raises(ServingError) as broken:
        runtime.load(str(version), RuntimeOptions())
    assert broken.value.code == Code.INVALID_ARGUMENT and "Cannot load torch model" in broken.value.message


def test_an_output_of_another_dtype_than_declared_is_the_models_fault(tmp_path: Path) -> None:
    declared_double = {**SIGNATURE, "outputs": [{"name": "y", "dtype": "float64"}, {"name": "k2", "dtype": "int64"}]}
    servable = TorchRuntime().load(str(write_script(tmp_path / "1", signature=declared_double)), RuntimeOptions())
    with pytest.raises(ServingError) as mismatch:
        servable.run("serving_default", {"x": np.ones((1, 1), np.float32), "k": np.ones(1, np.int64)}, ["y"])
    assert mismatch.value.code == Code.INTERNAL and "declares DT_DOUBLE" in mismatch.value.message


def test_batching_serves_each_caller_its_own_rows(tmp_path: Path) -> None:
    write_script(tmp_path / "m" / "1", scale=1.0, offset=0.0)
    batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=2)
    with run_server(torch_options(tmp_path / "m", batching=batching)) as server:
        def call(i: int) -> dict[str, object]:
            response = rest_predict(server, "m", {"inputs": {"x": [[float(i)]], "k": [i]}})
            assert response.status_code == 200, response.text
            return response.json()["outputs"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(call, range(24))) == [{"y": [[float(i)]], "k2": [2 * i]} for i in range(24)]


def test_a_new_version_replaces_the_old(tmp_path: Path) -> None:
    base = tmp_path / "m"
    write_script(base / "1", scale=1.0, offset=1.0)
    with run_server(torch_options(base, lifecycle=LifecycleOptions(file_system_poll_wait_seconds=0.1))) as server:
        body = {"inputs": {"x": [[1.0]], "k": [0]}}
        assert rest_predict(server, "m", body).json()["outputs"]["y"] == [[2.0]]
        os.rename(write_script(tmp_path / "staging", scale=1.0, offset=10.0), base / "2")
        wait_for(lambda: version_status(server, "m").get(1, ("",))[0] == "END")
        assert rest_predict(server, "m", body).json()["outputs"]["y"] == [[11.0]]
