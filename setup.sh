#!/usr/bin/env bash
# Create .venv (if missing) and install fewclip with its test tools.
# torch is pinned and installed first, so no other package pulls a CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${FEWCLIP_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
echo "fewclip installed in $(pwd)/.venv"
