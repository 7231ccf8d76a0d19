#!/usr/bin/env bash
# emodb4 SER accuracy at the paper's widths on 2 GPUs: the follow-up of the CPU table in the
# closing note of issue #8 (bench/ser_accuracy.py). Real Whisper-base layers, real Resemblyzer means.
#   bash bench/gpu_ser_accuracy.sh OUT_DIR          (CROPS, BATCH, LR override the schedule)
# Two batch sizes side by side (is batch 1024 as accurate as 256 at the same crops? #19 target 4):
#   BATCH=256 LR=0 CONFIGS=small:0 W=/tmp/emo_b256 bash bench/gpu_ser_accuracy.sh OUT/b256 &
#   BATCH=1024 LR=0 CONFIGS=small:1 W=/tmp/emo_b1024 bash bench/gpu_ser_accuracy.sh OUT/b1024; wait
# (LR=0: the product's sqrt rule, 5e-4 at both once capped.)
# The GPU host has no espeak-ng, no Resemblyzer or CTranslate2 Whisper packages, no network and a
# 64 MiB carry limit: `python -m bench.prepare_gpu_carry --out .carry` prepares, on a CPU machine,
# .carry/emo_flac (emodb4 as FLAC), .carry/emo_work (phones + speaker stages extracted there) and
# .carry/whisper-base-hf (the packaged encoder as an fp16 transformers folder; per-frame cosine to
# the CT2 original 1.0000 on every layer). Carry .carry and the missing wheels (.whl_gpu).
set -u
# the project on the import path where setup.sh has not installed it (e.g. a bare GPU host)
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-/tmp/gpu-ser-accuracy}
CROPS=${CROPS:-160000}; BATCH=${BATCH:-256}; LR=${LR:-5e-4}
CONFIGS=${CONFIGS:-"small:0 large:1 spec:1"}  # config:GPU
W=${W:-/tmp/emo_work}
mkdir -p "$OUT"; rm -rf "$W"; cp -r .carry/emo_work "$W"
export PYTHONUNBUFFERED=1
run() { python3 bench/ser_accuracy.py --data .carry/emo_flac --workdir "$W" --device cuda \
  --encoder "$PWD/.carry/whisper-base-hf" --widths paper --crops "$CROPS" --batch-size "$BATCH" \
  --lr "$LR" --evals 4 --probe-epochs 60 --threads 4 "$@"; }
s=$(date +%s)
run --extract speech,mel --configs "" > "$OUT/extract.log" 2>&1; echo "extract: exit $? $(( $(date +%s) - s )) s"
for cg in $CONFIGS; do  # one process per config, on the GPU named after the colon
  c=${cg%%:*}; CUDA_VISIBLE_DEVICES=${cg##*:} run --extract "" --configs "$c" --out "$OUT/$c.json" > "$OUT/$c.log" 2>&1 &
done
wait; echo "train + probes: $(( $(date +%s) - s )) s"
for cg in $CONFIGS; do c=${cg%%:*}; cp "$W/runs/ser/$c/metrics.json" "$OUT/metrics_$c.json"; done
python3 cli.py probe speaker --config small --device cuda -w "$W" 2>&1 | grep -v "it/s" | tail -4
for cg in $CONFIGS; do f=${cg%%:*}; grep -v "it/s" "$OUT/$f.log" | tail -9; done
