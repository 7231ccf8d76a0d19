#!/usr/bin/env bash
# IEMOCAP-scale dress rehearsal: an IEMOCAP-shaped corpus (bench/make_iemocap_like.py) from raw
# files to report through the product's own commands, wav2vec2-large and BERT-large
# architectures (random weights), SER 5 folds × the paper's 2 M crops, TER with the paper's
# samples, fuse, report, on one or two GPUs. (2026-11-30's run, bench/RESULTS.md, predates
# pipeline/lanes.py: it ran the CPU stages as a second command beside the GPU ones.)
#   SCALE=1.0 GPUS=0,1 bash bench/gpu_rehearsal.sh OUT_DIR
# One GPU (GPUS=0): TER runs beside SER on that GPU, and the speech stage is not timed twice.
# GPUS= (empty) runs everything on the CPU: a dry run of the script at a tiny SCALE.
# On a one-GPU host whose disk cannot hold the layers (64 GB), put STATE in /dev/shm; to outlast
# a 10-minute device call start it under setsid and wait with bench/device_wait.sh.
# Resumable, so it fits calls of 10 minutes: run the same command again and it goes on where
# the last call stopped (finished steps are skipped, extraction keeps completed shards, training
# resumes from its last checkpoint). DEADLINE (epoch seconds) ends a call cleanly before the
# device's limit. Step times accumulate in $STATE/times.tsv (one row per step and call).
set -u
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # bytecode: run `python3 -m compileall` over site-packages and the repo first (a prefix cache never fills where PYTHONDONTWRITEBYTECODE is set)
OUT=${1:-/tmp/gpu-rehearsal}
SCALE=${SCALE:-1.0}          # fraction of IEMOCAP's 5,531 utterances
CROPS=${CROPS:-2000000}      # SER crops per fold (paper: 2 M)
BATCH=${BATCH:-512}
GPUS=${GPUS-0,1}
G=${GPUS:+--gpus $GPUS}
TER_DEVICE=${TER_DEVICE:-$([ -n "$GPUS" ] && echo "cuda:${GPUS##*,}" || echo cpu)}
TOK=${TOK:-.carry/tok}       # BERT uncased tokenizer files (MiniLM's)
STATE=${STATE:-/tmp/rehearsal}
W=$STATE/work
DEADLINE=${DEADLINE:-$(( $(date +%s) + 3600 ))}
mkdir -p "$OUT" "$STATE"; rm -f "$STATE/finished"
left() { echo $(( DEADLINE - $(date +%s) )); }
# t NAME CMD…: run unless $STATE/NAME.done exists; bounded by the deadline; time appended
t() { local name=$1; shift; [ -e "$STATE/$name.done" ] && return 0
  local budget; budget=$(left); if [ "$budget" -lt 15 ]; then echo "=== $name: no time left"; return 1; fi
  echo "=== $name ($(date +%T), ${budget} s left)"; local s; s=$(date +%s%N)
  timeout -k 5 "$budget" "$@" > "$STATE/$name.log" 2>&1; local rc=$?
  grep -v "it/s\]\|s/it\]\|Loading weights" "$STATE/$name.log" | tail -"${TAIL:-12}"
  printf '%s\t%d ms\texit %s\n' "$name" $(( ($(date +%s%N) - s) / 1000000 )) "$rc" >> "$STATE/times.tsv"
  [ "$rc" = 0 ] && touch "$STATE/$name.done"; return "$rc"; }
stop_workers() { pkill -f multiprocessing 2>/dev/null; sleep 2; }  # leftover Dask workers of a killed step
P="-p speech.model=$STATE/models/wav2vec2-large-random -p text.model=$STATE/models/bert-large-random"
run_all() {
  t models python3 bench/make_random_models.py --out "$STATE/models" --tokenizer "$TOK" &
  t corpus python3 bench/make_iemocap_like.py "$STATE/iemocap-like" --scale "$SCALE" || return
  wait; [ -e "$STATE/models.done" ] || return 1
  t prepare python3 cli.py prepare iemocap "$STATE/iemocap-like/IEMOCAP_full_release" -w "$W" || return
  # every stage in one command: extract runs the CPU stages beside the GPU stages (pipeline/lanes.py)
  t extract_all python3 cli.py extract $P $G -w "$W" || { stop_workers; return 1; }
  # the speech stage again on one GPU, for the scaling ratio (same corpus, same call)
  [ -n "${SKIP_1GPU:-}" ] || [[ "$GPUS" != *,* ]] || t speech_1gpu python3 cli.py extract -s speech --force --gpus "${GPUS%%,*}" -w "$W"
  [ -e "$STATE/cache_bytes.txt" ] || du -sb "$W"/cache/* > "$STATE/cache_bytes.txt"
  # TER on the last GPU while SER's folds run: SER's 5 folds take 3 rounds on 2 GPUs, and the
  # GPU that finishes its first fold first takes two more; TER fits beside the other's.
  t train_ter python3 cli.py train ter --folds all --steps "${TER_STEPS:-6450}" --batch-size 256 \
    --lr 1e-3 --amp bf16 --device "$TER_DEVICE" -w "$W" &  # 6450 × 256 = the paper's 1.65 M samples per fold
  t train_ser python3 cli.py train ser --config small --folds all --crops "$CROPS" --batch-size "$BATCH" \
    $G --checkpoint-minutes "${CKPT_MINUTES:-2}" -w "$W"
  wait; stop_workers
  [ -e "$STATE/train_ser.done" ] && [ -e "$STATE/train_ter.done" ] || return 1
  t fuse python3 cli.py fuse -w "$W" || return
  t report python3 cli.py report -w "$W" --html-audio none
}
run_all; rc=$?
stop_workers
cp "$STATE"/times.tsv "$STATE"/cache_bytes.txt "$W"/report/report.md "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$STATE" $(cd "$STATE" && ls *.log) 2>/dev/null  # $OUT returns 8 files at most
echo "=== times"; cat "$STATE/times.tsv"
echo "$rc" > "$STATE/finished"  # bench/device_wait.sh returns on it
