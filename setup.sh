#!/usr/bin/env bash
# Create a virtual environment (if missing) and install fewclip with its test tools; a complete one is left as it is.
#   bash setup.sh              .venv: the CPU build of torch, no OpenCLIP (fast; everything but model.library: open_clip)
#   bash setup.sh --open-clip  .venv-open-clip: torch + torchvision + open_clip_torch from the package index (~5 GB;
#                              the index's torchvision wheels are CUDA builds and need its matching torch build, which
#                              also runs on CPU), for model.library: open_clip and the OpenCLIP tests
# torch is pinned and installed first, so no other package pulls a different build.
# What is installed is skipped: torch when the pinned version imports, the rest when <venv>/.fewclip-installed
# holds the hash of pyproject.toml (and the pins) it was installed from. FEWCLIP_REINSTALL=1 forces both.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${FEWCLIP_TORCH_VERSION:-2.13.0}
VENV=.venv
EXTRAS=test
TORCH_SPEC="torch==$TORCH_VERSION"
OPEN_CLIP_PINS=()
PIP_FLAGS=(-q)
case "${1:-}" in
  "") ;;
  --open-clip)
    VENV=.venv-open-clip
    EXTRAS=test,open_clip
    TORCH_SPEC="torch===$TORCH_VERSION"  # exactly the index's build: never a local +cpu wheel (no torchvision for it)
    OPEN_CLIP_PINS=("torchvision==0.28.0" "open_clip_torch==3.3.0")
    PIP_FLAGS=(-q --no-cache-dir)  # ~3 GB of CUDA wheels: not kept a second time in pip's cache
    ;;
  *) echo "usage: bash setup.sh [--open-clip]" >&2; exit 2 ;;
esac
STAMP=$VENV/.fewclip-installed
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC ${OPEN_CLIP_PINS[*]:-}"
if [ "${FEWCLIP_REINSTALL:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$VENV/bin/python" -c "import fewclip" 2>/dev/null; then
  echo "fewclip already installed in $(pwd)/$VENV (FEWCLIP_REINSTALL=1 to reinstall)"
  exit 0
fi
HAVE_TORCH=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "${FEWCLIP_REINSTALL:-0}" = 1 ] || [ "$HAVE_TORCH" != "$TORCH_VERSION" ] || [ ${#OPEN_CLIP_PINS[@]} -gt 0 ]; then
  "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" --upgrade pip
  "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "$TORCH_SPEC" "${OPEN_CLIP_PINS[@]}"
fi
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
echo "fewclip installed in $(pwd)/$VENV"
