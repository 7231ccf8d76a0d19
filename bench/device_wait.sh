#!/usr/bin/env bash
# Wait inside one device call for a job that outlasts the call (10 minutes): the job runs under
# setsid, writes step times to STATE/times.tsv and its exit status to STATE/finished
# (bench/gpu_rehearsal.sh does), and this returns when it has finished or after LIMIT seconds,
# showing progress every minute; then the next call waits again, until STATE/finished exists.
#   STATE=/dev/shm/reh setsid nohup bash bench/gpu_rehearsal.sh /dev/shm/reh/out > /dev/shm/reh.log 2>&1 &
#   bash bench/device_wait.sh STATE 570 [COPY_TO]
# COPY_TO (the call's $OUT) receives STATE/out (the job's OUT_DIR) and the logs (tar) at the end.
STATE=$1 LIMIT=${2:-570} COPY=${3:-}
end=$(( $(date +%s) + LIMIT ))
show() {
  echo "--- $(date +%T)"; [ -e "$STATE/times.tsv" ] && cat "$STATE/times.tsv"
  local log; log=$(ls -t "$STATE"/*.log 2>/dev/null | head -1)
  [ -n "$log" ] && { echo "[$log]"; tr '\r' '\n' < "$log" | grep -v "^\s*$" | tail -3 | cut -c1-200; }
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  df -h /dev/shm 2>/dev/null | tail -1; free -g | sed -n 2p
}
while [ ! -e "$STATE/finished" ] && [ "$(date +%s)" -lt "$end" ]; do
  show; for _ in $(seq 60); do [ -e "$STATE/finished" ] && break; [ "$(date +%s)" -ge "$end" ] && break; sleep 1; done
done
show
if [ -e "$STATE/finished" ]; then
  echo "=== finished, exit $(cat "$STATE/finished")"
  if [ -n "$COPY" ]; then
    cp -r "$STATE"/out/. "$COPY"/ 2>/dev/null
    tar czf "$COPY/state_logs.tgz" -C "$STATE" $(cd "$STATE" && ls *.log) 2>/dev/null
  fi
fi
