#!/usr/bin/env bash
# Speed benches on a GPU machine (how bench/RESULTS.md's speed rows were measured).
#   bash bench/gpu_benches.sh OUT_DIR
# Expects the repo's Python packages importable (on the lent GPU machines: wheels carried in
# .whl/ and installed to /tmp/site first). Each bench is bounded by `timeout`.
set -u
# the project on the import path where setup.sh has not installed it (e.g. a bare GPU host)
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-/tmp/gpu-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T))"; \
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "it/s\]" | tail -40; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run store_io 150 python3 bench/store_io.py --gb 8 --dir /tmp/storebench --json "$OUT/store_io.json"
run extract_speech 240 python3 bench/extract_speech.py --device cuda --gpus "${GPUS:-2}" \
  --minutes 30 --whisper-minutes 0 --official-minutes 3 --json "$OUT/extract_speech.json"
run ser_speed 150 python3 bench/ser_speed.py --device cuda --out "$OUT/ser_speed.json"
run ter_speed 120 python3 bench/ter_speed.py --device cuda --amp --out "$OUT/ter_speed.json"
