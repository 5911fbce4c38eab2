#!/usr/bin/env bash
# Server CPU per request of two outpost builds, alternating rounds (the fairest comparison
# this shared machine allows): hot hits (MODE=hit), unique misses (MODE=miss) or both on
# the same keep-alive connections (MODE=mixed: one miss in EVERY requests, default 10,
# `mixed.lua`) of SIZE (1k, 100k, 1m; default 1k). Each server on CPU 0, wrk and
# perf-origin (no delay) on CPU 1; CPU from /proc ticks; wrk's p50, p90 and p99 latency
# (MODE=mixed shows what a miss costs the requests around it). QUERY (default `?d=0`) is
# appended to miss keys: `QUERY='?d=0&cc=no-store'` measures the proxying of a miss alone,
# with nothing stored. CONNS (default 64) is wrk's connection count. KEYS (default 100) is
# how many objects MODE=hit cycles over: more than the tier holds makes a cyclic scan,
# every request a miss of an object asked for before.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost MODE=hit ROUNDS=8 benches/cpu_per_request.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
MODE=${MODE:-hit}; SIZE=${SIZE:-1k}; ROUNDS=${ROUNDS:-8}; DURATION=${DURATION:-5}
EVERY=${EVERY:-10}; QUERY=${QUERY:-?d=0}; CONNS=${CONNS:-64}; KEYS=${KEYS:-100}
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
export OUTPOST_LOG__ACCESS_LOG=false
taskset -c 0 "$BEFORE" serve --listen 127.0.0.1:19201 --origin http://127.0.0.1:19000 >/dev/null 2>&1 & A=$!; PIDS+=($A)
taskset -c 0 "$AFTER" serve --listen 127.0.0.1:19202 --origin http://127.0.0.1:19000 >/dev/null 2>&1 & B=$!; PIDS+=($B)
sleep 1
ticks() { awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  for target in "before $A 19201" "after $B 19202"; do
    set -- $target
    script=$KIT/keys.lua
    case $MODE in
      hit) args=(hot "/b/$SIZE/h" "$KEYS" - "$QUERY") ;;
      mixed) script=$HERE/mixed.lua; args=("$EVERY" 100 "/b/$SIZE/h" "/b/$SIZE/x-r$round-$1-$$-") ;;
      *) args=(unique "/b/$SIZE/m-" "r$round-$1-$$" - "$QUERY") ;;
    esac
    t0=$(ticks "$2")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$script" "http://127.0.0.1:$3" -- "${args[@]}" 2>&1)
    t1=$(ticks "$2")
    requests=$(echo "$out" | awk '/requests in/{print $1}')
    latency=$(echo "$out" | awk '/^ +(50|90|99)%/{printf " p%s %s", substr($1, 1, length($1) - 1), $2}')
    python3 -c "print('round $round %-6s %8d requests  %6.1f us server CPU per request ' % ('$1', $requests, ($t1 - $t0) * 10000 / $requests) + '$latency')"
  done
done
