#!/usr/bin/env bash
# Speed benches on a GPU machine (how bench/RESULTS.md's speed rows were measured).
#   bash bench/gpu_benches.sh OUT_DIR
# Expects the repo's Python packages importable (on the lent GPU machines: wheels carried in
# .whl/ and installed to /tmp/site first). Each bench is bounded by `timeout`.
OUT=${1:-/tmp/gpu-bench}
source "$(dirname "$0")/gpu_common.sh"
run store_io 150 python3 bench/store_io.py --gb 8 --dir /tmp/storebench --json "$OUT/store_io.json"
run extract_speech 240 python3 bench/extract_speech.py --device cuda --gpus "${GPUS:-2}" \
  --minutes 30 --whisper-minutes 0 --official-minutes 3 --json "$OUT/extract_speech.json"
run ser_speed 150 python3 bench/ser_speed.py --device cuda --out "$OUT/ser_speed.json"
run ter_speed 120 python3 bench/ter_speed.py --device cuda --amp --out "$OUT/ter_speed.json"
