"""`pyserving show` against saved_model_cli itself, on TF Serving's test models, and on other platforms' models."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyserving.runtimes.memory import write_model

SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
MODELS = ["saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu"]
OPS_PREFIX = "The MetaGraph with tag set "


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=ENV)


def pyserving_show(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "pyserving", "show", *args)


def comparable(text: str) -> list[str]:
    """The lines up to saved_model_cli's "Concrete Functions" section, with the ops line's set (printed by
    saved_model_cli in Python's hash order) made a sorted list."""
    lines = text.split("\nConcrete Functions:")[0].rstrip("\n").split("\n")
    out = []
    for line in lines:
        if line.startswith(OPS_PREFIX):
            head, _, ops = line.partition(": ")
            out.append(f"{head}: {sorted(ast.literal_eval(ops))}")
        else:
            out.append(line)
    return out


CASES = [(model, flags) for model in MODELS
         for flags in ([], ["--tag_set", "serve"], ["--tag_set", "serve", "--signature_def", "serving_default"],
                       ["--all"])]
CASES += [(MODELS[0], ["--tag_set", "serve", "--signature_def", "classify_x_to_y"]),
          (MODELS[0], ["--tag_set", "serve", "--list_ops"])]


@pytest.mark.parametrize("model, flags", CASES,
                         ids=[f"{'tf2' if 'tf2' in m else 'tf1'}:{' '.join(f) or 'tag-sets'}" for m, f in CASES])
def test_show_matches_saved_model_cli_line_for_line(testdata: Path, model: str, flags: list[str]) -> None:
    version_dir = testdata / model / "00000123"
    theirs = run(SAVED_MODEL_CLI, "show", "--dir", version_dir, *flags)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    ours = pyserving_show("--dir", version_dir, *flags)
    assert ours.returncode == 0, ours.stderr
    assert comparable(ours.stdout) == comparable(theirs.stdout)
    if "--all" in flags or "--list_ops" in flags:
        assert any(line.startswith(OPS_PREFIX) for line in ours.stdout.splitlines())  # the ops were compared too


def test_show_reads_a_saved_model_without_tensorflow(testdata: Path) -> None:
    code = ("import sys\nfrom pyserving.cli.main import main\n"
            f"rc = main(['show', '--dir', {str(testdata / MODELS[0] / '00000123')!r}, '--all'])\n"
            "assert rc == 0, rc\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')], 'TF imported'\n")
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signature_def['serving_default']:" in result.stdout


def test_the_view_protos_field_numbers_and_types_are_tensorflows() -> None:
    from tensorflow.core.framework import attr_value_pb2, function_pb2, graph_pb2, node_def_pb2, op_def_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    from pyserving.codecs.tfserving.view import saved_model_view_pb2 as view

    pairs = [(view.SavedModel, saved_model_pb2.SavedModel), (view.MetaGraphDef, meta_graph_pb2.MetaGraphDef),
             (view.MetaGraphDef.MetaInfoDef, meta_graph_pb2.MetaGraphDef.MetaInfoDef),
             (view.GraphDef, graph_pb2.GraphDef), (view.NodeDef, node_def_pb2.NodeDef),
             (view.AttrValue, attr_value_pb2.AttrValue), (view.NameAttrList, attr_value_pb2.NameAttrList),
             (view.FunctionDefLibrary, function_pb2.FunctionDefLibrary),
             (view.FunctionDef, function_pb2.FunctionDef), (view.OpDef, op_def_pb2.OpDef)]
    for ours, theirs in pairs:
        for field in ours.DESCRIPTOR.fields:
            twin = theirs.DESCRIPTOR.fields_by_name[field.name]
            assert (field.number, field.type, field.is_repeated) == (twin.number, twin.type, twin.is_repeated), \
                field.full_name
            if field.message_type is not None:
                assert field.message_type.name == twin.message_type.name, field.full_name


def test_json_format(testdata: Path) -> None:
    result = pyserving_show("--dir", testdata / MODELS[1] / "00000123", "--tag_set", "serve", "--signature_def",
                            "serving_default", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["platform"] == "tensorflow"
    assert doc["meta_graphs"] == [{"tags": ["serve"], "signature_def": {"serving_default": {
        "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [1], "name": "serving_default_x:0"}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [1], "name": "StatefulPartitionedCall_5:0"}},
        "method_name": "tensorflow/serving/predict"}}}]
    everything = json.loads(pyserving_show("--dir", testdata / MODELS[0] / "00000123", "--all", "--format",
                                           "json").stdout)
    graph = everything["meta_graphs"][0]
    assert graph["signature_def"]["classify_x_to_y"]["inputs"]["inputs"]["shape"] is None  # unknown rank
    assert {"Add", "Mul", "ParseExample"} <= set(graph["ops"])


def test_a_base_path_shows_its_newest_version(testdata: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    shutil.copytree(testdata / MODELS[0] / "00000123", base / "3")
    shutil.copytree(testdata / MODELS[1] / "00000123", base / "7")
    result = pyserving_show("--dir", base, "--tag_set", "serve", "--signature_def", "serving_default")
    assert result.returncode == 0, result.stderr
    assert "name: serving_default_x:0" in result.stdout  # version 7, the TF2 export
    assert f"showing its newest version, {base / '7'}" in result.stderr


def test_other_platforms_in_the_same_layout(tmp_path: Path) -> None:
    write_model(str(tmp_path / "1"), {"signatures": {"serving_default": {
        "inputs": {"image": {"dtype": "DT_UINT8", "shape": [-1, 28, 28, 1]}},
        "outputs": {"probs": {"dtype": "DT_FLOAT", "shape": [-1, 10]}},
        "method_name": "tensorflow/serving/predict"}}, "function": "identity"})
    result = pyserving_show("--dir", tmp_path / "1", "--tag_set", "serve", "--signature_def", "serving_default")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "The given memory model SignatureDef contains the following input(s):",
        "  inputs['image'] tensor_info:",
        "      dtype: DT_UINT8",
        "      shape: (-1, 28, 28, 1)",
        "      name: image:0",
        "The given memory model SignatureDef contains the following output(s):",
        "  outputs['probs'] tensor_info:",
        "      dtype: DT_FLOAT",
        "      shape: (-1, 10)",
        "      name: probs:0",
        "Method name is: tensorflow/serving/predict",
    ]


def test_onnx_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"]), helper.make_node("Cast", ["y"], ["k"], to=TensorProto.INT64)],
        "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "1").mkdir()
    onnx.save(model, str(tmp_path / "1" / "model.onnx"))
    result = pyserving_show("--dir", tmp_path / "1", "--all")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:" in text
    assert "signature_def['serving_default']:" in text
    assert "    inputs['x'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 1)\n        name: x" in text
    assert "    outputs['k'] tensor_info:\n        dtype: DT_INT64" in text


@pytest.mark.parametrize("flags, message", [
    (["--dir", "/nonexistent/model"], "--dir /nonexistent/model: no such directory"),
    (["--dir", "{empty}"], "no model found"),
    (["--dir", "{half}", "--tag_set", "gpu"], "no MetaGraph with tag-set 'gpu'; its tag-sets: 'serve'"),
    (["--dir", "{half}", "--tag_set", "serve", "--signature_def", "nope"],
     "no signature 'nope' in tag-set 'serve'; choose from: classify_x_to_y, "),
    (["--dir", "{garbage}"], "cannot parse"),
])
def test_errors_are_one_line_without_a_traceback(testdata: Path, tmp_path: Path, flags: list[str],
                                                 message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "saved_model.pb").write_bytes(b"\xff\xff\xff not a proto")
    paths = {"empty": tmp_path / "empty", "garbage": tmp_path / "garbage", "half": testdata / MODELS[0] / "00000123"}
    result = pyserving_show(*[f.format(**paths) for f in flags])
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_python_model(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text(
        "class Model:\n"
        "    signatures = {'serving_default': {\n"
        "        'inputs': {'text': {'dtype': 'string', 'shape': [-1]}},\n"
        "        'outputs': {'tokens': {'dtype': 'DT_INT64', 'shape': [-1, None]}}}}\n"
        "    def predict(self, inputs):\n"
        "        raise NotImplementedError\n")
    refused = pyserving_show("--dir", tmp_path, "--format", "json")
    assert refused.returncode == 1 and "--allow_python_models" in refused.stderr, refused.stderr
    # a base path: its newest (only) version
    result = pyserving_show("--dir", tmp_path, "--format", "json", "--allow_python_models")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["platform"] == "python"
    sig = doc["meta_graphs"][0]["signature_def"]["serving_default"]
    assert sig["inputs"]["text"]["dtype"] == "DT_STRING" and sig["inputs"]["text"]["shape"] == [-1]
    assert sig["outputs"]["tokens"] == {"dtype": "DT_INT64", "shape": [-1, -1], "name": "tokens"}
