#!/usr/bin/env bash
# Regenerates pyserving/codecs/{tfserving,oip}/protos/*_pb2.py(i) from the .proto files
# next to them. Uses the repo's venv when there is one, since the generated code
# must load with the protobuf runtime pyserving runs on.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# -I . makes the import paths (and so the descriptor file names) repo-relative:
# pyserving/codecs/tfserving/protos/x.proto, which cannot collide with TensorFlow's.
"$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
  pyserving/codecs/tfserving/protos/*.proto pyserving/codecs/oip/protos/*.proto \
  pyserving/codecs/tfserving/view/*.proto
