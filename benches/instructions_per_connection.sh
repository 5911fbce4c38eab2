#!/usr/bin/env bash
# Instructions per request on a connection of its own (a 1 KiB hit, `Connection: close`) of
# two outpost builds, counted by callgrind: what accepting, setting up and closing a
# connection costs beside the hit itself (compare benches/instructions_per_hit.sh, which
# keeps connections open). Clients that open a connection per request, and bursts of new
# clients (issue 17 item 5), pay it on every request. Each build is warmed with one burst,
# its counters zeroed, then BURSTS bursts of 200 connections (`outpost load --burst`, each
# connection one request) are counted.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/instructions_per_connection.sh
set -u
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$(dirname "$0")/../target/release/outpost}
BURSTS=${BURSTS:-5}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.2; done; }
burst() { # port
  "$AFTER" load --burst 200 --duration 60s --json "$WORK/burst.json" \
    "http://127.0.0.1:$1/t/1k/per-connection?d=0" >/dev/null 2>&1
}
count() { # build port -> instructions per request
  local bin=$1 port=$2 out="$WORK/cg.$2"
  env OUTPOST_LOG__ACCESS_LOG=false valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" serve --listen "127.0.0.1:$port" --origin http://127.0.0.1:19000 >/dev/null 2>&1 &
  local pid=$!; PIDS+=($pid)
  wait_port "$port"
  burst "$port"
  callgrind_control -z "$pid" >/dev/null 2>&1
  for _ in $(seq "$BURSTS"); do burst "$port"; done
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null
  local total; total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
  echo $((total / (BURSTS * 200)))
}
b=$(count "$BEFORE" 19321); a=$(count "$AFTER" 19322)
python3 -c "print('instructions per request on its own connection: before $b, after $a (%.1f%%)' % (100 * ($a - $b) / $b))"
