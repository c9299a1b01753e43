#!/usr/bin/env bash
# Sets up tensorframe in a virtual environment: the core, the backbone plugins in plugins/,
# the test tools, and the compiled triplet kernels. Re-running it is cheap and safe.
#
#   TENSORFRAME_VENV  where the environment lives (default: .venv in this folder)
#   PYTHON            the interpreter that creates it (default: python3, >= 3.10)
#
# torch: if the interpreter already imports torch (for example your own CUDA build), the
# environment sees it (--system-site-packages) and keeps it; otherwise the CPU wheel of
# torch 2.13.0 is installed, never the multi-GB CUDA default.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${TENSORFRAME_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q torch==2.13.0+cpu \
    || "$VPY" -m pip install -q torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu
fi
plugins=()
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] && plugins+=(-e "$p")
done
"$VPY" -m pip install -q -e ".[dev,native]" "${plugins[@]}"
# The compiled triplet kernels (C++/OpenMP, about 20 s). If the build fails, tensorframe runs
# the pure-PyTorch kernels instead (same results, slower) and this says why.
"$VENV/bin/tensorframe" native build || echo "setup: continuing without the compiled kernels" >&2
echo "tensorframe is installed in $VENV ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))"
