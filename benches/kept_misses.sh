#!/usr/bin/env bash
# How many unique misses the memory tier stores only to evict: one build, ROUNDS rounds of
# 5 s of unique misses of SIZE (default 1m) from CONNS connections (default 64) into a
# tier of MEM (default 128MiB); per round its requests, server CPU per request, memory
# evictions (`outpost_evictions_total{tier="memory"}`) and responses handed over to a
# stored memory file (`outpost_memory_sendfile_responses_total`). The server on CPU 0,
# wrk and perf-origin (no delay) on CPU 1. One-hit objects should stream through unstored
# once the tier is full: evictions near zero.
#
#   CONNS=2 ROUNDS=4 benches/kept_misses.sh [path/to/outpost]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BIN=${1:-$HERE/../target/release/outpost}
CONNS=${CONNS:-64}; SIZE=${SIZE:-1m}; ROUNDS=${ROUNDS:-4}; MEM=${MEM:-128MiB}
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM taskset -c 0 "$BIN" serve \
  --listen 127.0.0.1:19401 --origin http://127.0.0.1:19000 --admin 127.0.0.1:19402 >/dev/null 2>&1 & P=$!; PIDS+=($P)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:19401/b/1k/up && break; sleep 0.1; done
ticks() { awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$1/stat"; }
metric() { curl -s http://127.0.0.1:19402/metrics | awk -v name="$1" '$1 == name {printf "%d", $2}'; }
evicted_before=0; handed_before=0
for round in $(seq "$ROUNDS"); do
  t0=$(ticks "$P")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d5s -s "$KIT/keys.lua" http://127.0.0.1:19401 -- unique "/b/$SIZE/k-" "$$-$round" - '?d=0' 2>&1)
  t1=$(ticks "$P")
  requests=$(echo "$out" | awk '/requests in/{print $1}')
  evicted=$(metric 'outpost_evictions_total{tier="memory"}')
  handed=$(metric outpost_memory_sendfile_responses_total)
  python3 -c "print('round $round %7d requests %8.1f us CPU per request %6d evicted %6d handed over' % ($requests, ($t1 - $t0) * 10000 / $requests, ${evicted:-0} - $evicted_before, ${handed:-0} - $handed_before))"
  evicted_before=${evicted:-0}; handed_before=${handed:-0}
done
