"""`pyserving` command line: `pyserving serve [TF Serving flags]`, `pyserving auth new-key ...`, and the operator
tools (`doctor`, `show`, `status`, `predict`, ...): one module each, imported only when its command runs.

Parses into ServerOptions and calls the server; nothing runs at import time and TensorFlow is imported only
when a server actually starts.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from pyserving import __version__


# command -> (module under pyserving.cli with main(argv) -> int, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("doctor", "check a set-up before serving it (takes serve's flags; see `doctor --help`)"),
    "auth": ("auth", "credentials for --auth_config_file (`auth new-key --name N --scope M:predict`)"),
    "show": ("show", "a model's signatures, as `saved_model_cli show` prints them (`show --dir D --all`)"),
    "status": ("status", "models, versions, states, labels and traffic splits of a running server"),
    "predict": ("predict", "send one request from a JSON, .npy or image file and print the outputs"),
    "bench": ("bench", "load a TF Serving-compatible server: QPS, latency, errors, CPU (`bench --help`)"),
    "batching": ("batching", "`batching tune`: find batching parameters for a running pyserving"),
}


def _version_text() -> str:
    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = "not installed"
    return f"TensorFlow ModelServer: pyserving-{__version__}\nTensorFlow Library: {tf_version}"


def serve_main(argv: Sequence[str]) -> int:
    """`pyserving serve`: TF Serving's flags, TF Serving's behaviour."""
    from pyserving.config.flags import FlagError, parse_flags, server_options, usage
    from pyserving.observability.logs import LEVELS

    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
        print(usage())
        return 0
    try:
        values, warnings = parse_flags(argv)
        if values.get("version"):
            print(_version_text())
            return 0
        options = server_options(values, warnings)
        verbosity = values.get("verbosity", "INFO")
        if verbosity.upper() not in LEVELS:
            raise FlagError(f"--verbosity={verbosity}: use DEBUG, INFO, WARNING or ERROR")
    except FlagError as exc:
        print(f"pyserving serve: error: {exc}", file=sys.stderr)
        return 2
    from pyserving.cli.serve import run

    return run(options, warnings, verbosity=verbosity, log_dir=values.get("log_dir", ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        return serve_main(args[1:])
    if args and args[0] in COMMANDS:
        module = importlib.import_module(f"pyserving.cli.{COMMANDS[args[0]][0]}")
        try:
            return int(module.main(args[1:]))
        except BrokenPipeError:  # `pyserving doctor | head`: the reader left, which is no error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would raise
            return 0
    parser = argparse.ArgumentParser(
        prog="pyserving",
        description="A model server that speaks TensorFlow Serving's REST and gRPC APIs.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="serve models (takes tensorflow_model_server's flags; see `serve --help`)",
                   add_help=False)
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    ns = parser.parse_args(args)
    if ns.version:
        print(_version_text())
        return 0
    parser.print_help()
    return 0 if not args else 2


def tensorflow_model_server_main() -> int:
    """`tensorflow_model_server`: the same as `pyserving serve`, so scripts and Dockerfiles written for TF Serving
    run unchanged."""
    return serve_main(sys.argv[1:])
