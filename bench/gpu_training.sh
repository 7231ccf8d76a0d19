#!/usr/bin/env bash
# Issue #19 targets 3 and 4 on one GPU (how bench/RESULTS.md's "training through the command,
# round two" rows were measured):   bash bench/gpu_training.sh OUT_DIR [steps|command|both|parallel|paper|ter]
#   steps    the SER step eager against compiled conv stacks (ser_speed, a full-size fold)
#   command  all 5 folds in one `train ser` command against the steps-only rate (train_speed)
#   paper    target 3 at the paper's fold length: 2 folds x 2 M crops in one command (~8 min on an
#            H200; --compile auto compiles there) against the steps-only rate
#   ter      target 3 for TER: 5 folds of the paper's samples through `train ter` against the same
#            folds in-process (ter_command_speed, IEMOCAP size, bf16)
#   graph    the compiled SER step at batch 1024 against the same step replayed from a CUDA graph
#            (ser_speed --compile default,default+graph: the trainer's own step, same run)
#   schedule1 on one GPU: the paper's whole SER schedule, 5 folds x 2 M crops, in one `train ser`
#            command (batch 1024, --compile auto; ~10.5 min: beyond one 10-minute device call, so start
#            it under setsid and wait across calls) against the steps-only rate (targets 3 and 4); torch
#            bytecode-compiled and a 20-step warm-up command first (round fourteen's two runs each paid
#            one cold cost: torch's sources compiled by the command, or a cold torch.compile cache)
#   schedule on 2 GPUs (nvidia-h200-x2): the paper's whole SER schedule, 5 folds x 2 M crops, in one
#            `train ser --gpus 0,1 --data-parallel` command (batch 1024, --compile auto; ~8 min)
#   parallel on 2 GPUs (nvidia-h200-x2): 5 folds on 1 GPU, one per GPU, and with --data-parallel,
#            plus the NCCL test of a data-parallel fold; the conv stacks compiled inside the Dask workers
OUT=${1:-/tmp/gpu-training}
WHAT=${2:-both}
TAIL=${TAIL:-16}
source "$(dirname "$0")/gpu_common.sh"
if [ "$WHAT" = steps ] || [ "$WHAT" = both ]; then
  run ser_speed "${STEPS_LIMIT:-300}" python3 bench/ser_speed.py --device cuda --batches "${BATCHES:-512,1024}" \
    --compile "${COMPILE:-default}" --steps 40 --warmup 10 --out "$OUT/ser_speed.json"
fi
if [ "$WHAT" = graph ]; then  # the compiled step against it replayed from a CUDA graph, same run
  run ser_speed_graph "${STEPS_LIMIT:-300}" python3 bench/ser_speed.py --device cuda --hours "${HOURS:-2}" \
    --batches "${BATCHES:-1024}" --compile default,default+graph --steps 60 --warmup 10 --out "$OUT/ser_speed_graph.json"
fi
if [ "$WHAT" = command ] || [ "$WHAT" = both ]; then
  run train_speed "${COMMAND_LIMIT:-540}" python3 -m bench.train_speed --device cuda --hours "${HOURS:-2}" \
    --folds all --crops "${CROPS:-300000}" --batch-size 512 --compile "${TRAIN_COMPILE:-off}" \
    --json "$OUT/train_speed.json"
fi
if [ "$WHAT" = paper ]; then
  run train_speed_paper "${COMMAND_LIMIT:-590}" python3 -m bench.train_speed --device cuda --hours "${HOURS:-2}" \
    --folds G1,G2 --crops 2000000 --batch-size "${BATCH:-512}" --compile auto --json "$OUT/train_speed_paper.json"
fi
if [ "$WHAT" = ter ]; then
  run ter_command "${COMMAND_LIMIT:-590}" python3 -m bench.ter_command_speed --device cuda --amp \
    --json "$OUT/ter_command.json"
fi
if [ "$WHAT" = schedule1 ]; then  # as on a machine in use: torch bytecode-compiled, a warm-up command first
  python3 -m compileall -q -j 0 "$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')" \
    > /dev/null 2>&1
  run schedule_x1 "${COMMAND_LIMIT:-1500}" python3 -m bench.train_speed --device cuda --hours "${HOURS:-2}" \
    --folds all --crops 2000000 --batch-size "${BATCH:-1024}" --compile auto --warm --json "$OUT/schedule_x1.json"
fi
if [ "$WHAT" = schedule ]; then
  run schedule_x2 "${COMMAND_LIMIT:-560}" python3 -m bench.train_speed --device cuda --hours "${HOURS:-2}" \
    --crops 0 --gpus 2 --skip-one-gpu --data-parallel --data-parallel-only --fold-crops 2000000 \
    --batch-size "${BATCH:-1024}" --compile auto --json "$OUT/schedule_x2.json"
fi
if [ "$WHAT" = parallel ]; then
  run ddp_test 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_data_parallel.py
  run train_speed_x2 "${COMMAND_LIMIT:-540}" python3 -m bench.train_speed --device cuda --hours "${HOURS:-1}" \
    --folds G1 --crops "${CROPS:-50000}" --batch-size 512 --gpus 2 ${SKIP_ONE:+--skip-one-gpu} --fold-crops "${FOLD_CROPS:-200000}" --data-parallel --compile "${TRAIN_COMPILE:-default}" \
    --json "$OUT/train_speed_x2.json"
fi
