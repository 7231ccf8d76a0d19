#!/usr/bin/env bash
# Issue #19 on one GPU: extraction and SER training through the product's own commands against
# their benches, and the SER step rate at larger batches (how bench/RESULTS.md's 2026-11-30 rows
# were measured).   bash bench/gpu_product_speed.sh OUT_DIR
# On 2 GPUs (not yet run): GPUS=2 TRAIN_LIMIT=480 EXTRACT_LIMIT=420 — extraction on 1 and 2 GPUs through
# the product, and all 5 folds through `train ser --gpus 0,1` against one GPU. SCRATCH=/dev/shm/es
# puts the bench's audio and work dir in RAM (target 5: what RAM staging gives where one local
# disk bounds 2 GPUs; 2 h of audio = 18.5 GB there; SKIP_TRAIN=1 MINUTES=120 for that run alone).
# BUDGET=6000: only cold CLI extractions of 2 h of audio, 3 each, alternating the automatic frame
# budget with BUDGET frames per forward (fewer page-locked blocks; round six's open lead). Compile
# the bytecode first on the lent image (python -m compileall -q <site-packages>). CONTENTION=1: only
# bench/batch_prep_probe.py (a pass's input batch, 0.8.6 against 0.8.5, beside a busy thread, on
# the host's cores) and bench/encoder_contention.py (the extractor's passes alone and beside the
# writer / decoder threads).
OUT=${1:-/tmp/gpu-speed}
TAIL=${TAIL:-14}
source "$(dirname "$0")/gpu_common.sh"
if [ -n "${CONTENTION:-}" ]; then  # CONTENTION=1: which thread of `extract` slows the encoder's passes
  run batch_prep 60 python3 -m bench.batch_prep_probe --busy 4 --json "$OUT/batch_prep_probe.json"
  run encoder_contention "${EXTRACT_LIMIT:-300}" python3 -m bench.encoder_contention --device cuda \
    --minutes "${MINUTES:-15}" --json "$OUT/encoder_contention.json"
  exit
fi
if [ -n "${BUDGET:-}" ]; then
  run extract_budget "${EXTRACT_LIMIT:-560}" python3 -m bench.extract_speech --device cuda --minutes 120 \
    --whisper-minutes 0 --official-minutes 0 --cli-runs 3 --base-param "frame_budget=$BUDGET" \
    --json "$OUT/extract_budget.json"
  exit
fi
run extract_speech "${EXTRACT_LIMIT:-330}" python3 bench/extract_speech.py --device cuda --gpus "${GPUS:-1}" \
  --minutes "${MINUTES:-30}" --whisper-minutes 0 --official-minutes 2 ${SCRATCH:+--dir "$SCRATCH"} \
  --json "$OUT/extract_speech.json"
if [ -z "${SKIP_TRAIN:-}" ]; then
run train_speed "${TRAIN_LIMIT:-240}" python3 -m bench.train_speed --device cuda --hours "${HOURS:-2}" \
  --crops 400000 --batch-size 512 --gpus "${GPUS:-1}" --json "$OUT/train_speed.json"
run ser_speed 150 python3 bench/ser_speed.py --device cuda --batches "${BATCHES:-256,512,1024,2048}" \
  --steps 40 --warmup 10 --out "$OUT/ser_speed.json"
fi
if [ -n "${PROFILE:-}" ]; then  # where the CLI's time goes (cProfile), and a SER step's kernels
  timeout 120 python3 -m cProfile -o "$OUT/cli_extract.prof" cli.py extract -s speech --force --gpus 0 \
    -w /tmp/extract_speech_bench/work > /dev/null 2>&1
  python3 -c "import pstats; pstats.Stats('$OUT/cli_extract.prof').sort_stats('cumulative').print_stats(45)" \
    | grep -E '^ +[0-9]' | awk '$4 > 0.4' | head -45
  TAIL=30 run ser_profile 150 python3 bench/ser_speed.py --device cuda --hours 2 --batches 512 --steps 5 \
    --warmup 2 --profile
fi
if [ -n "${CONCURRENT:-}" ]; then  # two folds on one GPU at once: two processes, each its own resident fold
  for i in 1 2; do
    timeout 200 python3 bench/ser_speed.py --device cuda --batches 512 --steps 300 --warmup 10 \
      --out "$OUT/ser_speed_pair$i.json" > "$OUT/ser_speed_pair$i.log" 2>&1 &
  done
  wait
  echo "=== two ser_speed processes at once on one GPU"; grep -h "batch   512" "$OUT"/ser_speed_pair*.log
fi
