#!/usr/bin/env bash
# Where a hit's CPU goes, outpost beside nginx's cache (sendfile from tmpfs), interleaved:
# per request, the server's own user and system time (/proc/PID/stat, which includes the
# softirq work the kernel does in the server's context, such as delivering its bytes to
# the client's socket over loopback) and CPU 0's split from /proc/stat (user, system,
# softirq, idle). The server under test is alone on CPU 0; wrk and perf-origin on CPU 1.
# Stop other servers of the kit first: this starts and stops its own.
#
#   benches/hit_cpu_split.sh                 # BIN=target/release/outpost SIZE=100k
#
# SIZE (1k, 100k), KEYS (100), ROUNDS (3), DURATION (5 s). Any outpost flags in ARGS.
# MISSES=1 measures unique misses instead (every request a new key: outpost stores in
# memory, nginx writes its cache files to tmpfs).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-split}
BIN=${BIN:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; SIZE=${SIZE:-100k}; KEYS=${KEYS:-100}
mkdir -p "$RUN_DIR"
. "$HERE/hot_rounds.sh"
start_peers
export OUTPOST_LOG__ACCESS_LOG=false
# shellcheck disable=SC2086
taskset -c 0 "$BIN" serve --listen 127.0.0.1:19431 --origin http://127.0.0.1:19000 ${ARGS:-} \
  >/dev/null 2>&1 &
PIDS+=($!)
declare -A URL=([outpost]=http://127.0.0.1:19431 [nginx]=http://127.0.0.1:18080)
declare -A PID=([outpost]=$!)
sleep 1
PID[nginx]=$(pgrep -f "nginx: worker" | head -1)
prefix=/b/$SIZE/split

task_ticks() { awk '{sub(/^.*\) /,""); print $12, $13}' "/proc/$1/stat"; }
cpu0_ticks() { awk '/^cpu0 /{print $2 + $3, $4, $8, $5}' /proc/stat; }

keys() { # server round: keys.lua's arguments
  if [[ -n ${MISSES:-} ]]; then echo unique "$prefix" "m$$-$1-$2"; else echo hot "$prefix" "$KEYS"; fi
}
for t in outpost nginx; do
  # shellcheck disable=SC2046
  timeout 30 taskset -c 1 wrk -t1 -c8 -d2s -s "$KIT/keys.lua" "${URL[$t]}" -- $(keys "$t" 0) - >/dev/null 2>&1
done
echo "per request, µs: task user / task sys | CPU 0 user / sys / softirq / idle"
for round in $(seq "$ROUNDS"); do
  for t in outpost nginx; do
    read -r tu0 ts0 < <(task_ticks "${PID[$t]}")
    read -r cu0 cs0 cq0 ci0 < <(cpu0_ticks)
    # shellcheck disable=SC2046
    out=$(timeout $((DURATION + 20)) taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" -s "$KIT/keys.lua" \
      "${URL[$t]}" -- $(keys "$t" "$round") - 2>&1)
    read -r tu1 ts1 < <(task_ticks "${PID[$t]}")
    read -r cu1 cs1 cq1 ci1 < <(cpu0_ticks)
    requests=$(echo "$out" | grep -o '"requests":[0-9]*' | cut -d: -f2)
    python3 - "$t" "$round" "${requests:-0}" "$(getconf CLK_TCK)" \
      $((tu1 - tu0)) $((ts1 - ts0)) $((cu1 - cu0)) $((cs1 - cs0)) $((cq1 - cq0)) $((ci1 - ci0)) <<'PY'
import sys
name, round_, requests, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
per = [int(ticks) * 1e6 / hz / max(requests, 1) for ticks in sys.argv[5:]]
print("round %s %-7s %8d req  task %5.2f / %5.2f | cpu0 %5.2f / %5.2f / %5.2f / %5.2f  total %5.2f"
      % (round_, name, requests, *per, per[0] + per[1]))
PY
  done
done
