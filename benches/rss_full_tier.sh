#!/usr/bin/env bash
# Peak RSS with the memory tier full, two builds one after the other: each is filled with
# unique 1 KiB misses for DUR seconds (far past MEM), then its VmHWM is read.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost MEM=128MiB benches/rss_full_tier.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
export OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=${MEM:-128MiB}
for target in "before $BEFORE 19301" "after $AFTER 19302"; do
  set -- $target
  taskset -c 0 "$2" serve --listen "127.0.0.1:$3" --origin http://127.0.0.1:19000 >/dev/null 2>&1 & P=$!; PIDS+=($P)
  sleep 1
  taskset -c 1 wrk -t1 -c64 -d"${DUR:-30}"s -s "$KIT/keys.lua" "http://127.0.0.1:$3" -- unique /b/1k/r- "$1" - '?d=0' >/dev/null 2>&1
  echo "$1 (${MEM:-128MiB} tier): $(grep -E 'VmHWM' "/proc/$P/status" | tr -s ' \t' ' ')"
  kill "$P"
done
