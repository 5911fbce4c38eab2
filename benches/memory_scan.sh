#!/usr/bin/env bash
# The memory tier under a scan: two outpost builds side by side with a small memory tier,
# the kit's hit test (a) and miss test (c) interleaved, so each round's ~45k unique misses
# overflow the tier before the next round's hits. A scan-resistant tier keeps the hot keys
# (origin fetches 0 in rounds 2+, low p99); plain LRU refetches all of them.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost MEM=32MiB benches/memory_scan.sh
#
# Uses ../shared/bench (perf-origin built as its README says). Servers on CPU 0, load on
# CPU 1; summary in $OUT/summary.md. Stops everything it started.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export RUN_DIR=${RUN_DIR:-/tmp/perf/run-scan}
OUT=${OUT:-/tmp/perf/memory-scan}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
mkdir -p "$RUN_DIR"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 50 >"$RUN_DIR/origin.log" 2>&1 &
PIDS+=($!); echo $! >"$RUN_DIR/origin.pid"
export OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=${MEM:-32MiB}
start() { # name port binary
  taskset -c 0 "$3" serve --listen "127.0.0.1:$2" --origin http://127.0.0.1:19000 >"$RUN_DIR/$1.log" 2>&1 &
  PIDS+=($!); echo $! >"$RUN_DIR/$1.pid"
}
start before 19101 "$BEFORE"
start after 19102 "$AFTER"
sleep 1
RUNS=${RUNS:-3} DURATION=${DURATION:-6} "$KIT/bench.sh" -o "$OUT" \
  before=http://127.0.0.1:19101@a,c after=http://127.0.0.1:19102@a,c
cat "$OUT/summary.md"
