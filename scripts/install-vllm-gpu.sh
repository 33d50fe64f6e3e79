#!/usr/bin/env bash
# Install vLLM's CUDA build and NIXL (the KV-transfer library NixlConnector needs) into one
# virtual environment: the GPU counterpart of install-vllm-cpu.sh.
#
# Usage: scripts/install-vllm-gpu.sh VENV_DIR
#
# Both come from PyPI: `vllm` is the CUDA build (it brings the CUDA torch it was built
# against, so torch is not pinned separately, unlike on CPU), and `nixl` is NIXL's meta
# package, which installs the wheel for the machine's CUDA major version (nixl-cu12 or
# nixl-cu13). gguf and accelerate are for `streamserve models prepare smollm2`, the model
# scripts/gpu-smoke.sh serves. Idempotent: a venv that already has all of it is left alone.
# Then: scripts/gpu-smoke.sh checks the GPU path end to end.
set -euo pipefail

VENV="${1:?usage: install-vllm-gpu.sh VENV_DIR}"
PY_BIN="${PYTHON:-python3.11}"
VLLM_VERSION="0.32.0"   # the release streamserve/gpu/specsched.py's hook check is written against

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if "$PY" - <<PYEOF 2>/dev/null
import importlib.metadata as md, sys
ok = md.version("vllm") == "$VLLM_VERSION"
md.version("nixl"), md.version("gguf"), md.version("accelerate")
import vllm, nixl._api  # noqa: F401  (what vLLM's NixlConnector imports)
sys.exit(0 if ok else 1)
PYEOF
then
    echo "vllm $VLLM_VERSION and nixl already importable in $VENV"
    exit 0
fi

"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "vllm==$VLLM_VERSION"
"$PY" -m pip install --quiet nixl
"$PY" -m pip install --quiet gguf accelerate
"$PY" -c "import vllm, nixl._api, importlib.metadata as md; print('vllm', vllm.__version__, 'and nixl', md.version('nixl'), 'importable')"
