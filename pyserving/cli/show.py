"""`pyserving show --dir D [--all | --tag_set T [--signature_def S] [--list_ops]] [--format json]`.

`saved_model_cli show`'s information in its layout, line for line (without its "Concrete Functions" section,
which needs TensorFlow to load the model's functions). A SavedModel is read with protobuf alone
(codecs/tfserving/view), so this works where TensorFlow is not installed. A version directory of another
platform (ONNX, PyTorch, TFLite, Python, memory) is described by loading it with its pyserving runtime and
printing the signatures that runtime serves, as the one MetaGraph "serve" that TF Serving's metadata would show.
A model base path (numbered version directories inside) shows its newest version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import message as pb_message
from google.protobuf import text_format

from pyserving.codecs.tfserving.protos.meta_graph_pb2 import SignatureDef, TensorInfo
from pyserving.codecs.tfserving.protos.types_pb2 import DataType

PROG = "pyserving show"
SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


class ShowError(Exception):
    """A problem with what the user asked for; printed as one line, no traceback."""


@dataclass
class MetaGraph:
    tags: list[str]
    signature_def: Mapping[str, SignatureDef]
    ops: set[str] | None
    """The ops the graph uses (saved_model_cli's ops_used_by_graph_def); None for a model that has no graph."""


@dataclass
class Model:
    path: str
    platform: str
    meta_graphs: list[MetaGraph]

    @property
    def kind(self) -> str:
        """What the headings call the model: "SavedModel", as saved_model_cli does, else the platform's model."""
        return "SavedModel" if self.platform == "tensorflow" else f"{self.platform} model"


def _ops_used(graph_def: Any) -> set[str]:
    """saved_model_cli's set: every op of the graph and of the library functions it reaches, minus the functions
    themselves (tensorflow/python/framework/meta_graph.py ops_used_by_graph_def)."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    used: set[str] = set()
    pending: list[Any] = []

    def mark(op: str) -> None:
        if op not in used and op in functions:
            pending.append(functions[op])
        used.add(op)

    def visit(node: Any) -> None:
        mark(node.op)
        if node.op in _CALL_OPS:
            mark(node.attr["f"].func.name)

    for node in graph_def.node:
        visit(node)
    while pending:
        for node in pending.pop().node_def:
            visit(node)
    return {op for op in used if op not in functions}


def read_saved_model(path: str) -> Model:
    from pyserving.codecs.tfserving.view.saved_model_view_pb2 import SavedModel

    saved_model = SavedModel()
    pb, pbtxt = os.path.join(path, SAVED_MODEL_PB), os.path.join(path, SAVED_MODEL_PBTXT)
    try:
        if os.path.exists(pb):
            with open(pb, "rb") as f:
                saved_model.ParseFromString(f.read())
        else:
            with open(pbtxt, encoding="utf-8") as f:
                text_format.Parse(f.read(), saved_model, allow_unknown_field=True)
    except (pb_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise ShowError(f"cannot parse {pb if os.path.exists(pb) else pbtxt}: {exc}") from None
    except OSError as exc:
        raise ShowError(f"cannot read the SavedModel in {path}: {exc.strerror or exc}") from None
    graphs = [MetaGraph(list(mg.meta_info_def.tags), mg.signature_def, _ops_used(mg.graph_def))
              for mg in saved_model.meta_graphs]
    return Model(path, "tensorflow", graphs)


def read_with_runtime(path: str, platform: str, *, allow_python_models: bool = False) -> Model:
    """Load the version with the runtime that would serve it and describe what it serves."""
    from pyserving.codecs.tfserving.signatures import signature_def_map
    from pyserving.errors import ServingError
    from pyserving.options import RuntimeOptions
    from pyserving.runtimes.registry import get_runtime

    if platform == "python" and not allow_python_models:
        # show is an inspection command, like saved_model_cli: running a downloaded model.py must be asked for
        raise ShowError(f"{path} is a python model: describing it runs its model.py with your rights. Add "
                        "--allow_python_models to do that.")
    options = RuntimeOptions(allow_python_models=True, enable_model_warmup=False)
    try:
        servable = get_runtime(platform).load(path, options)
    except ServingError as exc:
        raise ShowError(f"cannot load {path} as a {platform} model: {exc.message}") from None
    except ImportError as exc:
        raise ShowError(f"describing a {platform} model needs {exc.name or 'its framework'} installed: {exc}") from None
    except Exception as exc:  # a framework's own load error: its text is what the operator needs
        raise ShowError(f"cannot load {path} as a {platform} model: {exc}") from None
    try:
        defs = signature_def_map(servable.signatures).signature_def
    finally:
        servable.unload()
    return Model(path, platform, [MetaGraph(["serve"], defs, None)])


def _version_dirs(path: str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n)))
    except OSError:
        return []


def resolve(path: str) -> tuple[str, str]:
    """(version directory, platform) for `--dir`, which may be a version directory or a model base path."""
    from pyserving.runtimes.auto import DETECTION, detect_platform

    if not os.path.isdir(path):
        raise ShowError(f"--dir {path}: no such directory")
    platform = detect_platform(path)
    if platform is not None:
        return path, platform
    for version in reversed(_version_dirs(path)):
        version_dir = os.path.join(path, str(version))
        platform = detect_platform(version_dir)
        if platform is not None:
            print(f"{PROG}: {path} is a model base path; showing its newest version, {version_dir}", file=sys.stderr)
            return version_dir, platform
    files = ", ".join(dict.fromkeys(file for file, _ in DETECTION))
    raise ShowError(f"--dir {path}: no model found (looked for {files}, there and in numbered version directories)")


def read_model(path: str, *, allow_python_models: bool = False) -> Model:
    version_dir, platform = resolve(path)
    if platform == "tensorflow":
        return read_saved_model(version_dir)
    return read_with_runtime(version_dir, platform, allow_python_models=allow_python_models)


def find_meta_graph(model: Model, tag_set: str) -> MetaGraph:
    # saved_model_cli: "" items are dropped, so "serve," means {"serve"}; the order of tags does not matter.
    wanted = {t.strip() for t in tag_set.split(",") if t.strip()}
    for mg in model.meta_graphs:
        if set(mg.tags) == wanted:
            return mg
    choices = "; ".join(repr(",".join(sorted(mg.tags))) for mg in model.meta_graphs) or "none"
    raise ShowError(f"the {model.kind} has no MetaGraph with tag-set {tag_set!r}; its tag-sets: {choices}")


def find_signature(model: Model, mg: MetaGraph, key: str) -> SignatureDef:
    if key not in mg.signature_def:
        raise ShowError(f"the {model.kind} has no signature {key!r} in tag-set {','.join(mg.tags)!r}; "
                        f"choose from: {', '.join(sorted(mg.signature_def))}")
    return mg.signature_def[key]


# --- text, in saved_model_cli's layout -----------------------------------------------------------------------

def _shape_text(info: TensorInfo) -> str:
    if info.tensor_shape.unknown_rank:
        return "unknown_rank"
    return "(" + ", ".join(str(d.size) for d in info.tensor_shape.dim) + ")"


def _tensor_lines(info: TensorInfo, indent: int) -> list[str]:
    pad = "  " * indent
    return [f"{pad}    dtype: {DataType.Name(info.dtype)}", f"{pad}    shape: {_shape_text(info)}",
            f"{pad}    name: {info.name}"]


def signature_lines(model: Model, sig: SignatureDef, indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines = [f"{pad}The given {model.kind} SignatureDef contains the following input(s):"]
    for key, info in sorted(sig.inputs.items()):
        lines += [f"{pad}  inputs['{key}'] tensor_info:", *_tensor_lines(info, indent + 1)]
    lines.append(f"{pad}The given {model.kind} SignatureDef contains the following output(s):")
    for key, info in sorted(sig.outputs.items()):
        lines += [f"{pad}  outputs['{key}'] tensor_info:", *_tensor_lines(info, indent + 1)]
    lines.append(f"{pad}Method name is: {sig.method_name}")
    return lines


def ops_line(mg: MetaGraph) -> list[str]:
    if mg.ops is None:
        return []
    # saved_model_cli prints a Python set (in hash order); sorted here, so the line is stable.
    ops = "{" + ", ".join(repr(op) for op in sorted(mg.ops)) + "}" if mg.ops else "set()"
    return [f"The MetaGraph with tag set {mg.tags!r} contains the following ops: {ops}"]


def text_lines(model: Model, args: argparse.Namespace) -> list[str]:
    if args.all:
        lines: list[str] = []
        for mg in sorted(model.meta_graphs, key=lambda m: list(m.tags)):
            lines += ["", f"MetaGraphDef with tag-set: '{', '.join(mg.tags)}' contains the following SignatureDefs:"]
            for key in sorted(mg.signature_def):
                lines += ["", f"signature_def['{key}']:", *signature_lines(model, mg.signature_def[key], indent=1)]
            lines += ops_line(mg)
        return lines
    if args.tag_set is None:
        lines = [f"The given {model.kind} contains the following tag-sets:"]
        return lines + [repr(", ".join(sorted(tags))) for tags in sorted(mg.tags for mg in model.meta_graphs)]
    mg = find_meta_graph(model, args.tag_set)
    lines = ops_line(mg) if args.list_ops else []
    if args.signature_def is None:
        lines.append(f"The given {model.kind} MetaGraphDef contains SignatureDefs with the following keys:")
        return lines + [f'SignatureDef key: "{key}"' for key in sorted(mg.signature_def)]
    return lines + signature_lines(model, find_signature(model, mg, args.signature_def))


# --- JSON --------------------------------------------------------------------------------------------------

def _tensor_json(info: TensorInfo) -> dict[str, Any]:
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return {"dtype": DataType.Name(info.dtype), "shape": shape, "name": info.name}


def signature_json(sig: SignatureDef) -> dict[str, Any]:
    return {"inputs": {k: _tensor_json(v) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _tensor_json(v) for k, v in sorted(sig.outputs.items())},
            "method_name": sig.method_name}


def _meta_graph_json(mg: MetaGraph, keys: Sequence[str], with_ops: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"tags": list(mg.tags),
                           "signature_def": {k: signature_json(mg.signature_def[k]) for k in keys}}
    if with_ops and mg.ops is not None:
        out["ops"] = sorted(mg.ops)
    return out


def json_document(model: Model, args: argparse.Namespace) -> dict[str, Any]:
    """The same selection as the text, always with full signatures (a script wants them); ops with --all or
    --list_ops."""
    doc: dict[str, Any] = {"path": model.path, "platform": model.platform}
    if args.tag_set is None:
        graphs = sorted(model.meta_graphs, key=lambda m: list(m.tags))
        doc["meta_graphs"] = [_meta_graph_json(mg, sorted(mg.signature_def), args.all or args.list_ops)
                              for mg in graphs]
        return doc
    mg = find_meta_graph(model, args.tag_set)
    if args.signature_def is not None:
        find_signature(model, mg, args.signature_def)
        keys = [args.signature_def]
    else:
        keys = sorted(mg.signature_def)
    doc["meta_graphs"] = [_meta_graph_json(mg, keys, args.list_ops)]
    return doc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Show a model's tag-sets, signatures, inputs and outputs (dtype, shape, tensor name) and "
                    "method names, in saved_model_cli show's layout. --dir is a version directory (SavedModel, "
                    "model.onnx, model.pt2/.pt, model.tflite, model.py, model.json) or a model base path, whose "
                    "newest version is shown. SavedModels are read without TensorFlow; other platforms are "
                    "loaded with their runtime (a model.py only with --allow_python_models).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  pyserving show --dir /models/half_plus_two/1                 # tag-sets\n"
               "  pyserving show --dir /models/half_plus_two/1 --tag_set serve # signature keys\n"
               "  pyserving show --dir /models/half_plus_two/1 --tag_set serve --signature_def serving_default\n"
               "  pyserving show --dir /models/half_plus_two --all --format json",
    )
    p.add_argument("--dir", required=True, help="a model version directory, or a model base path")
    p.add_argument("--all", action="store_true", help="every tag-set, every signature, and the ops used")
    p.add_argument("--tag_set", help="the MetaGraph to show, its tags separated by commas (e.g. serve)")
    p.add_argument("--signature_def", help="the signature to show (needs --tag_set), e.g. serving_default")
    p.add_argument("--list_ops", action="store_true", help="also list the ops the MetaGraph uses (needs --tag_set)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")
    p.add_argument("--allow_python_models", action="store_true",
                   help="describe a python model: its model.py runs, with your rights")
    return p


def main(argv: Sequence[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.all and (args.tag_set is not None or args.signature_def is not None):
        p.error("--all shows everything: give it alone, or --tag_set [--signature_def] instead")
    if args.signature_def is not None and args.tag_set is None:
        p.error("--signature_def needs --tag_set (e.g. --tag_set serve)")
    if args.list_ops and args.tag_set is None and not args.all:
        p.error("--list_ops needs --tag_set or --all")
    try:
        model = read_model(args.dir, allow_python_models=args.allow_python_models)
        if args.format == "json":
            print(json.dumps(json_document(model, args), indent=2))
        else:
            print("\n".join(text_lines(model, args)))
    except ShowError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0
