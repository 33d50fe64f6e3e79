#!/usr/bin/env bash
# profile -> calibrate -> fidelity on a GPU box, in under 10 minutes, with the same
# commands as on a laptop. Results go to docs/results/fidelity-gpu/<config name>/.
#
#   scripts/gpu-fidelity.sh                       # streamserve/configs/live-gpu.yaml
#   CONFIG=my-live.yaml GPU=H100 scripts/gpu-fidelity.sh
#   DRY_RUN=1 scripts/gpu-fidelity.sh             # print the commands, check the config, run nothing
#
# CONFIG: a live config with device: cuda (its model folder must exist). GPU: the GPU
# spec name the fitted profile is filed under (streamserve/specs.py; default: the
# config's perf.gpu). N, RATE, WORKLOAD: the fidelity workload. GRID: profile grid size.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CONFIG=${CONFIG:-streamserve/configs/live-gpu.yaml}
GRID=${GRID:-small}
WORKLOAD=${WORKLOAD:-mix}
N=${N:-200}
RATE=${RATE:-8}
NAME=$("$PY" -c "import sys; from streamserve.gpu.config import load_live; print(load_live(sys.argv[1]).name)" "$CONFIG")
OUT=${OUT:-docs/results/fidelity-gpu/$NAME}
mkdir -p "$OUT"
RUN_CONFIG="$OUT/live.yaml"
# The config as run: perf names the profile fitted here, so the live policies predict
# with the same step model as the simulator.
"$PY" - "$CONFIG" "$RUN_CONFIG" "$OUT/profile.json" "${GPU:-}" <<'PY'
import sys, yaml
from streamserve.gpu.config import load_live
src, dst, profile, gpu = sys.argv[1:5]
cfg = load_live(src)
if cfg.device != "cuda":
    sys.exit(f"Error: {src}: device is {cfg.device!r}; this script is for GPU configs (docs/results/fidelity/run.sh runs the CPU ones)")
data = cfg.model_dump(mode="json", exclude_none=True)
data["perf"]["profile"] = profile
if gpu:
    data["perf"]["gpu"] = gpu
data["profile_steps"] = True
with open(dst, "w") as f:
    yaml.safe_dump(data, f, sort_keys=False)
load_live(dst)
PY
run() {
  echo "+ $*" | tee -a "$OUT/commands.txt"
  if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}
: > "$OUT/commands.txt"
run "$PY" -m streamserve.cli profile --config "$RUN_CONFIG" --out "$OUT/profile-steps" --grid "$GRID"
run "$PY" -m streamserve.cli calibrate "$OUT/profile-steps" --out "$OUT/profile.json"
status=0
run "$PY" -m streamserve.cli fidelity --config "$RUN_CONFIG" --profile "$OUT/profile.json" \
  --workload "$WORKLOAD" -n "$N" --rate "$RATE" --seed 0 --out "$OUT/fidelity" \
  --max-error mean=5 --max-error p90=10 || status=$?
[ -n "${DRY_RUN:-}" ] || echo "results in $OUT (fidelity exit status $status: 1 means a 5%/10% goal was missed)"
