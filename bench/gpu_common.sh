# Sourced by the bench/gpu_*.sh scripts: the project on the import path (a bare GPU host has not
# run setup.sh), $OUT (set by the caller) created, and run NAME LIMIT CMD…
# (bounded by timeout, logged to $OUT/NAME.log, progress bars filtered, the last $TAIL lines shown).
set -u
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
run() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T))"; \
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "it/s\]\|s/it\]\|Loading weights" \
  | tail -"${TAIL:-40}"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
