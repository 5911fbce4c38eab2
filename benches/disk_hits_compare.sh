#!/usr/bin/env bash
# 100 KiB disk hits of two outpost builds beside nginx's file cache, interleaved: each
# outpost has a 1 MiB memory tier and its disk tier on /dev/shm, so every hit's body comes
# from disk (sent from its verified file with `cache.disk_sendfile`, the default; set
# OUTPOST_CACHE__DISK_SENDFILE=false to measure the per-byte verified read). Server CPU
# per request from /proc ticks.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/disk_hits_compare.sh
#
# SIZE and KEYS choose the objects (default 100k and 100); small objects need more keys
# than the 1 MiB memory tier holds (SIZE=1k KEYS=20000: nearly every hit from a pack).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-dc}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-6}; SIZE=${SIZE:-100k}; KEYS=${KEYS:-100}
mkdir -p "$RUN_DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for s in nginx origin; do "$KIT/servers.sh" stop $s >/dev/null 2>&1; done
  rm -rf /dev/shm/outpost-dc-before /dev/shm/outpost-dc-after
}
trap cleanup EXIT
for s in origin nginx; do "$KIT/servers.sh" start $s >/dev/null; done
export OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=1MiB OUTPOST_CACHE__MAX_OBJECT_SIZE=1MiB
declare -A URL=([before]=http://127.0.0.1:19411 [after]=http://127.0.0.1:19412 [nginx]=http://127.0.0.1:18080)
declare -A PID
for t in before after; do
  bin=$BEFORE; [[ $t == after ]] && bin=$AFTER
  taskset -c 0 "$bin" serve --listen "${URL[$t]#http://}" --origin http://127.0.0.1:19000 \
    --cache-dir "/dev/shm/outpost-dc-$t" >/dev/null 2>&1 &
  PID[$t]=$!; PIDS+=($!)
done
sleep 1
PID[nginx]=$(pgrep -f "nginx: worker" | head -1)
for t in before after nginx; do
  timeout 30 taskset -c 1 wrk -t1 -c8 -d3s -s "$KIT/keys.lua" "${URL[$t]}" -- hot "/b/$SIZE/dc" "$KEYS" - >/dev/null 2>&1
done
ticks() { awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  for t in before after nginx; do
    c0=$(ticks "${PID[$t]}")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" -s "$KIT/keys.lua" "${URL[$t]}" -- hot "/b/$SIZE/dc" "$KEYS" - 2>&1)
    c1=$(ticks "${PID[$t]}")
    requests=$(echo "$out" | awk '/requests in/{print $1}')
    python3 -c "print('round $round %-7s %7.0f req/s %7.0f per server CPU-s' % ('$t', $requests / $DURATION, $requests * 100 / max($c1 - $c0, 1)))"
  done
done
