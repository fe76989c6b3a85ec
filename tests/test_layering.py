"""The import rules that keep each later capability in its own place (ARCHITECTURE.md):

* `pyserving.core` and `pyserving.frontends` import no TensorFlow module at all (a front-end process, an
  ONNX-only server must not pay ~2 s and ~0.5 GB for it);
* observability is a leaf: nothing from core;
* config imports neither runtimes nor observability;
* a server of a framework-free model serves REST and gRPC without TensorFlow ever being imported.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyserving

from conftest import REPO

PACKAGE_DIR = Path(pyserving.__file__).parent


def _modules(package: str) -> list[str]:
    path = PACKAGE_DIR / package.removeprefix("pyserving.").replace(".", "/")
    return [package] + [m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{package}.")]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_core_and_frontends_import_no_tensorflow() -> None:
    modules = _modules("pyserving.core") + _modules("pyserving.frontends") + _modules("pyserving.codecs")
    out = _run(
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras'))))\n"
    )
    assert len(modules) > 20
    assert json.loads(out) == []


def _imports(path: Path) -> set[str]:
    """Every module a file names in an import statement (lazy imports inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _package_imports(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE_DIR)): _imports(p) for p in (PACKAGE_DIR / package).rglob("*.py")}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("observability", ("pyserving.core", "pyserving.frontends", "pyserving.runtimes", "pyserving.server")),
    ("config", ("pyserving.runtimes", "pyserving.observability", "pyserving.core", "pyserving.frontends")),
    ("core", ("pyserving.frontends", "pyserving.observability", "pyserving.config", "pyserving.server",
              "pyserving.runtimes.tensorflow", "pyserving.runtimes.memory", "grpc", "starlette", "uvicorn")),
    ("runtimes", ("pyserving.core", "pyserving.frontends", "pyserving.server")),
    ("codecs", ("pyserving.core", "pyserving.frontends", "pyserving.server", "tensorflow", "tensorflow_serving")),
])
def test_layers_import_only_what_they_may(package: str, forbidden: tuple[str, ...]) -> None:
    offending = {
        file: sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        for file, names in _package_imports(package).items()
    }
    assert {f: n for f, n in offending.items() if n} == {}


SERVE_WITHOUT_TENSORFLOW = r"""
import asyncio, json, sys, threading, urllib.request
import grpc
from pyserving.options import ModelConfig, ServerOptions
from pyserving.runtimes.memory import write_model
from pyserving.server import Server
from pyserving.codecs.tfserving.protos import predict_pb2

base, platform = sys.argv[1], sys.argv[4]
if platform == "memory":  # other platforms' models were written by the test
    write_model(base + "/1", {"signatures": {"serving_default": {
        "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}}, "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}},
        "scale": 0.5, "offset": 2.0})
options = ServerOptions(models=(ModelConfig(name="m", base_path=base, platform=platform),), host="127.0.0.1",
                        grpc_port=int(sys.argv[2]), rest_api_port=int(sys.argv[3]), shutdown_grace_s=1.0)
loop = asyncio.new_event_loop()
server = Server(options)
loop.run_until_complete(server.start())
threading.Thread(target=loop.run_forever, daemon=True).start()
rest = urllib.request.urlopen(urllib.request.Request(
    f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict", data=b'{"instances": [1.0, 3.0]}',
    method="POST"), timeout=30).read()
request = predict_pb2.PredictRequest()
request.model_spec.name = "m"
request.inputs["x"].dtype = 1
request.inputs["x"].tensor_shape.dim.add(size=1)
request.inputs["x"].float_val.append(4.0)
with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                  request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                  response_deserializer=predict_pb2.PredictResponse.FromString)
    response = predict(request, timeout=30)
asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
print(json.dumps({"rest": json.loads(rest), "grpc": list(response.outputs["y"].float_val),
                  "tf": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving"))}))
"""


def _write_onnx_half_plus_two(version_dir: Path) -> None:
    """y = 0.5 * x + 2 on a 1-D float input, dated back so the server's first poll finds it settled."""
    import os
    import time

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "half"], ["scaled"]), helper.make_node("Add", ["scaled", "two"], ["y"])],
        "half_plus_two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    past = time.time() - 60
    for path in (version_dir, version_dir / "model.onnx"):
        os.utime(path, (past, past))


@pytest.mark.parametrize("platform", ["memory", "onnx"])
def test_a_framework_free_model_is_served_without_importing_tensorflow(tmp_path: Path, platform: str) -> None:
    from conftest import free_port

    if platform == "onnx":
        _write_onnx_half_plus_two(tmp_path / "m" / "1")
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TENSORFLOW, str(tmp_path / "m"), str(free_port()), str(free_port()),
         platform],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"rest": {"predictions": [2.5, 3.5]}, "grpc": [4.0], "tf": []}
