#!/usr/bin/env bash
# Instructions per 1 KiB memory hit of two outpost builds, counted by callgrind: unlike
# time, the count does not move with what else this shared machine is doing, so small
# changes to the hit path show. Each build serves 2,000 warm-up hits, then its counters are
# zeroed and 20,000 hits of 100 hot keys (8 connections, `outpost load`) are counted.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/instructions_per_hit.sh
set -u
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$(dirname "$0")/../target/release/outpost}
REQUESTS=${REQUESTS:-20000}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
count() { # build port -> instructions per request
  local bin=$1 port=$2 out="$WORK/cg.$2"
  OUTPOST_LOG__ACCESS_LOG=false valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" serve --listen "127.0.0.1:$port" --origin http://127.0.0.1:19000 >/dev/null 2>&1 &
  local pid=$!; PIDS+=($pid)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
  local url="http://127.0.0.1:$port/b/1k/h{key}"
  "$AFTER" load "$url" --keys 100 --zipf 0 --requests 2000 --duration 300s -c 8 --quiet >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$AFTER" load "$url" --keys 100 --zipf 0 --requests "$REQUESTS" --duration 300s -c 8 --quiet >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null
  local total; total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
  echo $((total / REQUESTS))
}
b=$(count "$BEFORE" 19311); a=$(count "$AFTER" 19312)
python3 -c "print('instructions per 1 KiB hit: before $b, after $a (%.1f%%)' % (100 * ($a - $b) / $b))"
