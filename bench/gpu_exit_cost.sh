#!/usr/bin/env bash
# What a GPU process's exit costs (a probe behind bench/RESULTS.md round seven): a process that
# started CUDA and held N GiB of page-locked blocks (returned to torch's cache, as after an
# extraction), timed from its last line to its end — a normal exit, then os._exit (no
# interpreter teardown; the driver still unpins at exit).     bash bench/gpu_exit_cost.sh
for n in 0 6; do for mode in normal osexit; do
python3 - "$n" "$mode" > /tmp/exit_cost.txt <<'PY'
import os, sys, time, torch
n, mode = int(sys.argv[1]), sys.argv[2]
torch.zeros(1, device="cuda")
blocks = [torch.empty(2**29, dtype=torch.float16, pin_memory=True) for _ in range(n)]
for b in blocks: b.fill_(1)
del blocks
print(time.time(), flush=True)
if mode == "osexit":
    os._exit(0)
PY
end=$(date +%s.%N)
python3 -c "print('exit with $n GiB page-locked, $mode:', round($end - float(open('/tmp/exit_cost.txt').read()), 3), 's')"
done; done
