#!/usr/bin/env bash
# Set up (scripts/setup.sh), check the code-health gates (scripts/lint.sh: ruff check, ruff
# format --check, mypy) and run the default test suite (slow tests excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q "$@"
