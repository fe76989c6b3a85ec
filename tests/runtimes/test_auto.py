"""model_platform "auto": each version directory served by the runtime its files call for."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_server
from pyserving.errors import Code, ServingError
from pyserving.options import ModelConfig, RuntimeOptions, ServerOptions, VersionPolicy
from pyserving.runtimes.auto import AutoRuntime, detect_platform
from pyserving.runtimes.memory import write_model
from runtime_clients import rest_predict, version_status


@pytest.mark.parametrize(("files", "platform"), [
    (["saved_model.pb", "model.tflite"], "tensorflow"),  # --prefer_tflite_model is the tensorflow runtime's call
    (["model.onnx", "model.json"], "onnx"),
    (["model.pt", "signature.json"], "pytorch"),
    (["model.pt2", "model.pt"], "pytorch"),
    (["model.tflite"], "tflite"),
    (["model.py", "vocab.json"], "python"),
    (["model.json"], "memory"),
    (["README.md"], None),
    ([], None),
])
def test_detection_by_file_name(tmp_path: Path, files: list[str], platform: str | None) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert detect_platform(str(tmp_path)) == platform


def test_a_directory_without_a_model_waits_then_says_what_it_looked_for(tmp_path: Path) -> None:
    runtime = AutoRuntime()
    assert not runtime.is_complete(str(tmp_path))
    assert runtime.is_complete(str(tmp_path), now=1e12)
    with pytest.raises(ServingError) as empty:
        runtime.load(str(tmp_path), RuntimeOptions())
    assert empty.value.code == Code.NOT_FOUND and "model.onnx" in empty.value.message


def test_versions_of_one_model_may_use_different_runtimes(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from test_onnx import write_affine

    base = tmp_path / "m"
    write_affine(base / "1", scale=1.0, offset=100.0)
    write_model(str(base / "2"), {"signatures": {"serving_default": {
        "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 1]}}, "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 1]}}}},
        "scale": 1.0, "offset": 200.0})
    model = ModelConfig(name="m", base_path=str(base), platform="auto", version_policy=VersionPolicy(kind="all"))
    with run_server(ServerOptions(models=(model,))) as server:
        assert {v: s for v, (s, _) in version_status(server, "m").items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
        body = {"inputs": {"x": [[1.0]]}}
        assert rest_predict(server, "m", body, version=1).json()["outputs"]["y"] == [[101.0]]
        assert rest_predict(server, "m", body, version=2).json() == {"outputs": [[201.0]]}
