#!/usr/bin/env bash
# The code-health gates that pyproject.toml declares and CI enforces (scripts/test.sh runs this
# before the tests): ruff check, ruff format --check, mypy (files and options from pyproject).
# Fix with: .venv/bin/ruff check --fix src tests scripts benchmarks; .venv/bin/ruff format src tests scripts benchmarks
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BITFLOW_VENV:-.venv}
PATHS=(src tests scripts benchmarks)
"$VENV/bin/ruff" check "${PATHS[@]}"
"$VENV/bin/ruff" format --check "${PATHS[@]}"
"$VENV/bin/mypy"
