#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine (Prometheus's promtool for the
# alert rules, nginx for deploy/nginx, wrk/h2load for pyserving bench's C generators), makes the venv, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || missing+=(nginx)
# wrk and h2load are the C load generators `pyserving bench` prefers; its tests of them skip without them
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PY=python3.11
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -m venv .venv
.venv/bin/pip install -q -e '.[tensorflow,test]'  # TensorFlow is an extra; the suite serves SavedModels
# Triton's own client, to prove Open Inference Protocol clients work unchanged. It pins protobuf<7 although it runs
# on 7 (its tests pass); our generated protos need >=7.35.1, so it is installed apart and protobuf put back.
.venv/bin/pip install -q "tritonclient[http,grpc]>=2.40"
.venv/bin/pip install -q "protobuf>=7.35.1"
# PyTorch for tests/runtimes, the CPU build by its local version: a plain "torch" resolved to a CUDA build
# (7.9 GB of venv, and torch.export crashed in it next to TensorFlow).
.venv/bin/pip install -q "torch==2.13.0+cpu"
exec .venv/bin/python -m pytest -q "$@"
