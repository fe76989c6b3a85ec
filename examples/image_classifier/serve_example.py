#!/usr/bin/env python3
"""The main job: export the article's CNN if it is not there yet, then serve it on 8500 (gRPC) / 8501 (REST).

    python examples/image_classifier/serve_example.py [extra pyserving serve flags]

Prints the curl commands that query the server, then replaces itself with `pyserving serve`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
BASE_PATH = pathlib.Path.cwd() / "models" / "my_model"


def main() -> int:
    if not (BASE_PATH / "1" / "saved_model.pb").exists():
        print(f"Exporting the example CNN to {BASE_PATH}/1 (random weights, a few seconds) ...", flush=True)
        spec = importlib.util.spec_from_file_location("train_and_export", HERE / "train_and_export.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.export_model(str(BASE_PATH), 1, verbose=2)
    print(
        "\nServing my_model on gRPC :8500 and REST :8501. Query it with:\n"
        "  curl http://localhost:8501/v1/models/my_model\n"
        "  curl http://localhost:8501/v1/models/my_model/metadata\n"
        "  python3 -c 'import json,random; print(json.dumps({\"instances\": [[[[random.random()]*3]*224]*224]}))' \\\n"
        "    | curl -s -X POST --data-binary @- http://localhost:8501/v1/models/my_model:predict\n"
        f"  {sys.executable} {HERE / 'query.py'} --grpc localhost:8500\n"
        "Stop with Ctrl-C.\n",
        flush=True,
    )
    argv = [sys.executable, "-m", "pyserving", "serve", "--port=8500", "--rest_api_port=8501",
            "--model_name=my_model", f"--model_base_path={BASE_PATH}", *sys.argv[1:]]
    os.execv(sys.executable, argv)
    return 1


if __name__ == "__main__":
    sys.exit(main())
