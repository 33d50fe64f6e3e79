#!/usr/bin/env bash
# The GPU path's first run in one command (under 10 minutes on a box with a GPU): one
# prefill and one decode engine joined by NIXL, plus a colocated reference engine, with a
# PASS/FAIL line per check and the evidence under docs/results/gpu/<date>-<gpu>/.
#
# Usage: scripts/gpu-smoke.sh [--dry-run] [--model smollm2|tiny|PATH] [--eager] [--port N] [--out DIR]
#   --dry-run   CPU (CI): check the script's own logic, the generated commands, the hook check
#
# On a box where vLLM is missing (e.g. PyTorch but no network to install it), it says so in
# one line and runs scripts/gpu-step-times.py, which measures what PyTorch alone can
# (GPU_STEP_TIMES_ARGS passes it options, e.g. "--model tiny --quick").
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi

dry=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry=1; done

if [[ $dry == 0 ]] && ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    if "$PY" -c "import torch" >/dev/null 2>&1; then
        echo "gpu-smoke: SKIP vLLM is not importable by $PY (install it with scripts/install-vllm-gpu.sh where there is network); measuring PyTorch step times instead: scripts/gpu-step-times.py"
        # shellcheck disable=SC2086  # the options are meant to split
        exec "$PY" scripts/gpu-step-times.py ${GPU_STEP_TIMES_ARGS:-}
    fi
    echo "gpu-smoke: SKIP neither vLLM nor PyTorch is importable by $PY; nothing to run (scripts/install-vllm-gpu.sh installs both)"
    exit 2
fi
exec "$PY" scripts/gpu_smoke.py "$@"
