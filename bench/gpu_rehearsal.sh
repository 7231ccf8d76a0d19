#!/usr/bin/env bash
# IEMOCAP-scale dress rehearsal: an IEMOCAP-shaped corpus (bench/make_iemocap_like.py) through
# every stage with wav2vec2-large and BERT-large architectures (random weights), 5-fold SER and
# TER, fusion and report, on 1 and 2 GPUs.
#   SCALE=0.3 CROPS=600000 bash bench/gpu_rehearsal.sh OUT_DIR
set -u
# the project on the import path where setup.sh has not installed it (e.g. a bare GPU host)
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-/tmp/gpu-rehearsal}
SCALE=${SCALE:-1.0}          # fraction of IEMOCAP's 5,531 utterances
CROPS=${CROPS:-2000000}      # SER crops per fold (paper: 2 M)
BATCH=${BATCH:-256}
TOK=${TOK:-.carry/tok}       # BERT uncased tokenizer files (MiniLM's)
W=${W:-/tmp/rehearsal-work}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t() { local name=$1; shift; local s=$(date +%s%N); echo "=== $name ($(date +%T))"; "$@" 2>&1 \
  | grep -v "it/s\]\|s/it\]" | tail -25; local rc=${PIPESTATUS[0]}; local e=$(date +%s%N); \
  printf '%s\t%d ms\texit %s\n' "$name" $(( (e - s) / 1000000 )) "$rc" >> "$OUT/times.tsv"; }
rm -f "$OUT/times.tsv"
t corpus python3 bench/make_iemocap_like.py /tmp/iemocap-like --scale "$SCALE"
t models python3 bench/make_random_models.py --out /tmp/random-models --tokenizer "$TOK"
t prepare python3 cli.py prepare iemocap /tmp/iemocap-like/IEMOCAP_full_release -w "$W"
P="-p speech.model=/tmp/random-models/wav2vec2-large-random -p text.model=/tmp/random-models/bert-large-random"
t extract_cpu_stages python3 cli.py extract -s mel -s phones -w "$W"
t extract_gpu_1gpu python3 cli.py extract -s speech -s speaker -s text $P --gpus 0 -w "$W"
du -sb "$W"/cache/* | tee "$OUT/cache_bytes.txt"
t extract_speech_2gpu python3 cli.py extract -s speech --force --gpus 0,1 -w "$W"
t status python3 cli.py status -w "$W"
t train_ser_2gpu python3 cli.py train ser --config small --folds all --crops "$CROPS" \
  --batch-size "$BATCH" --gpus 0,1 -w "$W"
t train_ter python3 cli.py train ter --folds all --steps "${TER_STEPS:-6450}" --batch-size 256 --lr 1e-3 --amp -w "$W"  # 6450 x 256 = the paper's 1.65 M samples per fold
t fuse python3 cli.py fuse -w "$W"
t report python3 cli.py report -w "$W"
cp "$W"/report/report.md "$OUT/" 2>/dev/null
cat "$OUT/times.tsv"
