"""The "python" platform: a user's class in model.py, written into tmp_path, served by a real server over TF
Serving's REST and gRPC, only when the server allows python models."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import run_server
from pyserving.config.flags import parse_flags, server_options
from pyserving.errors import Code, ServingError, StartupError
from pyserving.options import BatchingOptions, LifecycleOptions, ModelConfig, RuntimeOptions, ServerOptions
from pyserving.runtimes.python import PythonRuntime
from runtime_clients import (grpc_metadata, grpc_predict, rest_metadata, rest_predict, settled, version_status,
                             wait_for)

TOKENIZER = '''
import json, os
import numpy as np

CALLS = []  # module state: each version must have its own


class Model:
    signatures = {
        "serving_default": {
            "inputs": {"text": {"dtype": "DT_STRING", "shape": [-1]}},
            "outputs": {"ids": {"dtype": "int64", "shape": [-1, 3]}, "label": {"dtype": "string", "shape": [-1]}},
        },
        "scale": {
            "method": "scale", "method_name": "tensorflow/serving/regress",
            "inputs": {"x": {"dtype": "float32", "shape": [-1, 1]}},
            "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 1]}},
        },
    }

    def load(self, path):
        with open(os.path.join(path, "vocab.json")) as f:
            self.vocab = json.load(f)

    def predict(self, inputs):
        CALLS.append(1)
        words = [t.decode().split() for t in inputs["text"]]
        ids = np.array([[self.vocab.get(w, 0) for w in (ws + ["", "", ""])[:3]] for ws in words], np.int64)
        return {"ids": ids, "label": np.array(["long" if len(ws) > 2 else "short" for ws in words])}

    def scale(self, inputs):
        if np.any(inputs["x"] < 0):
            raise ValueError("negative x")
        return {"y": inputs["x"] * self.vocab["__scale__"]}
'''


def write_python_model(version_dir: Path, source: str = TOKENIZER, scale: float = 2.0) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "vocab.json").write_text(f'{{"hello": 1, "world": 2, "again": 3, "__scale__": {scale}}}')
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    return settled(version_dir)


def python_options(base: Path, *, allow: bool = True, **kw: object) -> ServerOptions:
    batching = kw.pop("batching", None)
    model = ModelConfig(name="m", base_path=str(base), platform="python", batching=batching)  # type: ignore[arg-type]
    return ServerOptions(models=(model,), runtime=RuntimeOptions(allow_python_models=allow), **kw)  # type: ignore[arg-type]


def test_served_over_rest_and_grpc(tmp_path: Path) -> None:
    write_python_model(tmp_path / "m" / "1")
    with run_server(python_options(tmp_path / "m")) as server:
        response = rest_predict(server, "m", {"instances": ["hello world", "world hello again x"]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [{"ids": [1, 2, 0], "label": "short"},
                                                   {"ids": [2, 1, 3], "label": "long"}]}
        out = grpc_predict(server, "m", {"text": np.array([b"again"], object)})
        assert out["ids"].tolist() == [[3, 0, 0]] and out["label"].tolist() == [b"short"]
        scaled = grpc_predict(server, "m", {"x": np.array([[1.5]], np.float32)}, signature="scale")
        assert scaled["y"].dtype == np.float32 and scaled["y"].tolist() == [[3.0]]

        refused = rest_predict(server, "m", {"signature_name": "scale", "instances": [[-1.0]]})
        assert refused.status_code == 400 and "negative x" in refused.json()["error"]

        metadata = grpc_metadata(server, "m")
        assert metadata["serving_default"]["outputs"]["ids"] == {
            "dtype": "DT_INT64", "name": "ids", "tensorShape": {"dim": [{"size": "-1"}, {"size": "3"}]}}
        assert metadata["scale"]["methodName"] == "tensorflow/serving/regress"
        assert rest_metadata(server, "m")["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"


def test_without_the_flag_the_load_fails_naming_it(tmp_path: Path) -> None:
    write_python_model(tmp_path / "m" / "1", source="raise SystemExit('this code must not run')\n")
    options = python_options(tmp_path / "m", allow=False, lifecycle=LifecycleOptions(max_num_load_retries=0))
    with pytest.raises(StartupError, match="--allow_python_models=true"):
        with run_server(options):
            pass
    for argv, allowed in ((["--allow_python_models=true"], True), ([], False)):
        values, _ = parse_flags([*argv, f"--model_base_path={tmp_path}"])
        assert server_options(values).runtime.allow_python_models is allowed


@pytest.mark.parametrize(("source", "words"), [
    ("class A:\n    def predict(self, inputs): return {}\n", "must have `signatures`"),
    ("x = 1\n", "must define a class Model"),
    ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
    ("class Model:\n    signatures = {'serving_default': {'inputs': {}, 'outputs': {}, 'method': 'go'}}\n"
     "    def predict(self, inputs): return {}\n", "method 'go'"),
])
def test_broken_model_code_is_a_clear_load_error(tmp_path: Path, source: str, words: str) -> None:
    write_python_model(tmp_path / "1", source=source)
    with pytest.raises(ServingError) as broken:
        PythonRuntime().load(str(tmp_path / "1"), RuntimeOptions(allow_python_models=True))
    assert broken.value.code == Code.INVALID_ARGUMENT
    assert "Cannot load python model" in broken.value.message and words in broken.value.message
    assert not [m for m in sys.modules if m.startswith("pyserving_python_model_")
                and getattr(sys.modules[m], "__file__", "").startswith(str(tmp_path))]


def test_versions_import_as_separate_modules(tmp_path: Path) -> None:
    runtime, options = PythonRuntime(), RuntimeOptions(allow_python_models=True)
    one = runtime.load(str(write_python_model(tmp_path / "1")), options)
    two = runtime.load(str(write_python_model(tmp_path / "2", scale=3.0)), options)
    try:
        one.run("serving_default", {"text": np.array([b"hello"], object)}, ["ids"])
        calls = [sys.modules[m].CALLS for m in sys.modules if m.startswith("pyserving_python_model_")
                 and sys.modules[m].__file__.startswith(str(tmp_path))]
        assert sorted(map(len, calls)) == [0, 1]
        assert two.run("scale", {"x": np.ones((1, 1), np.float32)}, ["y"])["y"].tolist() == [[3.0]]
    finally:
        one.unload()
        two.unload()
    assert not [m for m in sys.modules if m.startswith("pyserving_python_model_")
                and getattr(sys.modules[m], "__file__", "").startswith(str(tmp_path))]


def test_batching_serves_each_caller_its_own_rows(tmp_path: Path) -> None:
    write_python_model(tmp_path / "m" / "1")
    batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=2)
    with run_server(python_options(tmp_path / "m", batching=batching)) as server:
        def call(i: int) -> list[list[float]]:
            response = rest_predict(server, "m", {"signature_name": "scale", "inputs": {"x": [[float(i)]]}})
            assert response.status_code == 200, response.text
            return response.json()["outputs"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(call, range(24))) == [[[2.0 * i]] for i in range(24)]


def test_a_new_version_replaces_the_old(tmp_path: Path) -> None:
    base = tmp_path / "m"
    write_python_model(base / "1", scale=2.0)
    with run_server(python_options(base, lifecycle=LifecycleOptions(file_system_poll_wait_seconds=0.1))) as server:
        body = {"signature_name": "scale", "inputs": {"x": [[1.0]]}}
        assert rest_predict(server, "m", body).json() == {"outputs": [[2.0]]}
        os.rename(write_python_model(tmp_path / "staging", scale=5.0), base / "2")
        wait_for(lambda: version_status(server, "m").get(1, ("",))[0] == "END")
        assert rest_predict(server, "m", body).json() == {"outputs": [[5.0]]}
