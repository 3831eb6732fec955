#!/usr/bin/env bash
# Fresh machine -> working install in ./.venv (idempotent; safe to run again).
#   apt: dataset-fashion-mnist (the real Fashion-MNIST IDX files, no download at run time)
#   venv: torch==2.13.0 (the CPU build) first, so no range ever resolves to another build,
#         then the project with its native extension (scikit-build-core + CMake + nanobind).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BITFLOW_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
command -v cmake >/dev/null || { echo "setup: cmake is required (pip install cmake or apt-get install cmake)" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
# Build requirements live in the venv so the editable build can run without isolation.
"$VENV/bin/python" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0" cmake ninja
"$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[train,dev,bench,onnx]"
"$VENV/bin/python" -c "import bitflow, bitflow._native; print('bitflow', bitflow.__version__, 'installed in $VENV')"
