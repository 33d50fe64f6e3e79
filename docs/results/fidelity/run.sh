#!/usr/bin/env bash
# The CPU fidelity measurements of docs/results/fidelity/README.md, as run (2-core machine,
# no GPU, other jobs' niced work alongside). Engines run one set at a time across jobs
# (`flock /tmp/vllm.lock`). Needs `streamserve models prepare smollm2`. What was run, under
# `setsid` with AUTOGROUP_NICE=-19 (commands.txt has every command):
#
#   docs/results/fidelity/run.sh profile          # pd: own engines, k cycled; calibrate -> smollm2-profile.json
#   docs/results/fidelity/run.sh pd "capacity:5:100 poisson:0.85x:200 gamma:0.85x:200 poisson:0.3x:200 gamma:0.3x:200"
#   PROFILE_FIRST=1 GRID=small docs/results/fidelity/run.sh coloc "capacity:5:100 poisson:0.85x:200 gamma:0.85x:200"
#   docs/results/fidelity/run.sh replay           # every run's simulated side again (no engines)
#
# Cells are ARRIVAL:RATE:REQUESTS; capacity:RATE:N measures the live capacity (Poisson far
# above it) and a RATE like "0.3x" is that fraction of it. `coloc-profile` profiles the
# colocated engine on its own engines. The cells of one config share one engine start-up
# (`python -m streamserve.calibration.live`, stopped at the end) and attach to it.
set -euo pipefail
# Linux groups processes by session (sched_autogroup): `nice` then orders processes only
# within one session, and every other session's jobs, niced or not, get an equal share of the
# cores. AUTOGROUP_NICE=-19 gives this script's session (start it with `setsid`) the weight
# other jobs' `nice -n 19` meant to give it (what the measurements of README.md used).
# vLLM's engines start in sessions of their own: boost() gives them the same weight.
if [ -n "${AUTOGROUP_NICE:-}" ]; then echo "$AUTOGROUP_NICE" > /proc/self/autogroup; fi
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
boost() {  # $1: a pid; while it runs, its descendants' sessions get AUTOGROUP_NICE
  [ -n "${AUTOGROUP_NICE:-}" ] || return 0
  ( while kill -0 "$1" 2>/dev/null; do
      for c in $(descendants "$1"); do echo "$AUTOGROUP_NICE" > "/proc/$c/autogroup" 2>/dev/null || true; done
      sleep 5
    done ) &
}
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python}
D=docs/results/fidelity
export VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1
log() { echo "+ streamserve $*" >> "$D/commands.txt"; }
WL=(--workload mix --max-prompt-tokens 128 --max-output-tokens 32)

cells() {  # $1: pd|coloc, $2: cells; runs while holding the engine lock
  local cfg="$D/smollm2-$1.yaml" port profile
  profile=$("$PY" -c "import sys; from streamserve.gpu.config import load_live; print(load_live(sys.argv[1]).perf.profile)" "$cfg")
  port=$("$PY" -c "import sys; from streamserve.gpu.config import load_live; print(load_live(sys.argv[1]).frontend.port)" "$cfg")
  log "(python -m streamserve.calibration.live --config $cfg &: engines and front end, every engine logging steps)"
  "$PY" -m streamserve.calibration.live --config "$cfg" > "/tmp/streamserve-i13-serve-$1.log" 2>&1 &
  local serve_pid=$!
  boost $serve_pid
  trap 'kill -TERM $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' RETURN
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
    kill -0 $serve_pid 2>/dev/null || { echo "serve failed: /tmp/streamserve-i13-serve-$1.log"; return 1; }
    sleep 2
  done
  if [ -n "${PROFILE_FIRST:-}" ]; then  # profile and calibrate on the same engines first
    log profile --config "$cfg" --out "$D/profile-$1" --grid "${GRID:-small}" --attach
    "$PY" -m streamserve.cli profile --config "$cfg" --out "$D/profile-$1" --grid "${GRID:-small}" --attach
    log calibrate "$D/profile-$1" --out "$profile"
    "$PY" -m streamserve.cli calibrate "$D/profile-$1" --out "$profile" | tee "$D/calibrate-$1.txt"
  fi
  local seed=1 capacity=""
  for cell in $2; do
    local arrival rate n extra=() out
    IFS=: read -r arrival rate n <<< "$cell"
    [ "$arrival" = gamma ] && extra=(--cv 3)
    out="$D/$1-$arrival-$rate"
    if [ "$arrival" = capacity ]; then  # capacity:RATE:N: Poisson far above what the engines sustain
      arrival=poisson; extra=(); out="$D/$1-capacity"
    elif [[ "$rate" == *x ]]; then  # a fraction of the capacity measured by the capacity cell
      [ -n "$capacity" ] || { echo "cell $cell: run a capacity:RATE:N cell first"; return 1; }
      out="$D/$1-$arrival-${rate%x}cap"
      rate=$("$PY" -c "import sys; print(round(float(sys.argv[1]) * float(sys.argv[2]), 2))" "${rate%x}" "$capacity")
    fi
    log fidelity --config "$cfg" --profile "$profile" "${WL[@]}" -n "$n" --rate "$rate" \
      --arrival "$arrival" "${extra[@]}" --seed $seed --attach --out "$out"
    "$PY" -m streamserve.cli fidelity --config "$cfg" --profile "$profile" "${WL[@]}" -n "$n" \
      --rate "$rate" --arrival "$arrival" "${extra[@]}" --seed $seed --attach --out "$out" | tee "$out.txt" || true
    if [ "$out" = "$D/$1-capacity" ]; then
      capacity=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['live']['request_throughput'])" "$out/fidelity.json")
      echo "capacity of $1: $capacity req/s (live, $out)" | tee -a "$D/commands.txt"
    fi
    seed=$((seed + 1))  # other prompts each cell: the engines are the same
  done
}

case "$1" in
profile)
  log profile --config "$D/smollm2-pd.yaml" --out "$D/profile-pd" --grid small
  flock /tmp/vllm.lock "$PY" -m streamserve.cli profile --config "$D/smollm2-pd.yaml" --out "$D/profile-pd" --grid small &
  p=$!; boost $p; wait $p
  log calibrate "$D/profile-pd" --out "$D/smollm2-profile.json"
  "$PY" -m streamserve.cli calibrate "$D/profile-pd" --out "$D/smollm2-profile.json" | tee "$D/calibrate-pd.txt"
  ;;
coloc-profile)
  log profile --config "$D/smollm2-coloc.yaml" --out "$D/profile-coloc" --grid small
  flock /tmp/vllm.lock "$PY" -m streamserve.cli profile --config "$D/smollm2-coloc.yaml" --out "$D/profile-coloc" --grid small &
  p=$!; boost $p; wait $p
  log calibrate "$D/profile-coloc" --out "$D/smollm2-coloc-profile.json"
  "$PY" -m streamserve.cli calibrate "$D/profile-coloc" --out "$D/smollm2-coloc-profile.json" | tee "$D/calibrate-coloc.txt"
  ;;
replay)  # simulate every recorded live run again (current simulator; the profile each run names; no engines)
  for f in "$D"/*/fidelity.json; do
    dir=$(dirname "$f"); name=$(basename "$dir"); cfg="$D/smollm2-${name%%-*}.yaml"
    profile=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['profile'])" "$f")
    seed=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['seed'])" "$f")
    log fidelity --config "$cfg" --profile "$profile" --replay-live "$dir" --seed "$seed" --out "$dir"
    "$PY" -m streamserve.cli fidelity --config "$cfg" --profile "$profile" --replay-live "$dir" --seed "$seed" \
      --out "$dir" | tee "$dir.txt"
  done
  ;;
pd|coloc)
  export -f cells log boost descendants; export PY D PROFILE_FIRST GRID AUTOGROUP_NICE
  flock /tmp/vllm.lock bash -c "WL=(${WL[*]}); cells $1 '$2'"
  ;;
esac
