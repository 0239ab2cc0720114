#!/usr/bin/env bash
# Create .venv (if missing) and install fewclip with its test tools; a complete .venv is left as it is.
# torch is pinned and installed first, so no other package pulls a CUDA build on a CPU machine.
# What is installed is skipped: torch when the pinned version imports, the rest when .venv/.fewclip-installed
# holds the hash of pyproject.toml (and the torch pin) it was installed from. FEWCLIP_REINSTALL=1 forces both.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${FEWCLIP_TORCH_VERSION:-2.13.0}
STAMP=.venv/.fewclip-installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) torch==$TORCH_VERSION"
if [ "${FEWCLIP_REINSTALL:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && .venv/bin/python -c "import fewclip" 2>/dev/null; then
  echo "fewclip already installed in $(pwd)/.venv (FEWCLIP_REINSTALL=1 to reinstall)"
  exit 0
fi
HAVE_TORCH=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "${FEWCLIP_REINSTALL:-0}" = 1 ] || [ "$HAVE_TORCH" != "$TORCH_VERSION" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
fi
.venv/bin/python -m pip install -q -e ".[test]"
echo "$WANT" > "$STAMP"
echo "fewclip installed in $(pwd)/.venv"
