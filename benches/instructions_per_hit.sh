#!/usr/bin/env bash
# Instructions per 1 KiB memory hit of two outpost builds, counted by callgrind: unlike
# time, the count does not move with what else this shared machine is doing, so small
# changes to the hit path show. Each build serves 2,000 warm-up hits, then its counters are
# zeroed and 20,000 hits of 100 hot keys (8 connections, `outpost load`) are counted.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/instructions_per_hit.sh
#
# DISK=1 counts disk hits instead: each build first fills a cache directory of its own
# (KEYS objects of SIZE, default 5000 of 1k, run natively), is stopped, and is started on it
# again under callgrind with a 1 MiB memory tier, so nearly every counted request reads
# its body from the disk tier (the same seeded key sequence for both builds).
#
# HEADER adds one request field to every counted request (as `Connection: keep-alive`,
# which Node's and Java's HTTP clients send on every request).
#
# CONNECTIONS=1 counts requests that each open a connection of their own instead
# (`Connection: close`, bursts of 200 from `outpost load --burst`, REQUESTS rounded to
# whole bursts): accepting, setting up and closing a connection beside the hit, as clients
# that open a connection per request and bursts of new clients (item 5) pay it.
#
# MISSES=1 counts unique misses instead (bodies of SIZE stored in memory, the origin without
# delay): keys drawn from a billion, the warm-up's under a prefix of their own, since
# `outpost load` draws the same sequence on every run and would turn the counted run's
# first requests into hits of the warm-up's keys.
#
# KEEP=DIR keeps each build's callgrind profile there (before.out, after.out) for
# callgrind_annotate.
set -u
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$(dirname "$0")/../target/release/outpost}
REQUESTS=${REQUESTS:-20000}
DISK=${DISK:-}
SIZE=${SIZE:-1k}
MISSES=${MISSES:-}
KEYS=${KEYS:-$([[ -n $DISK ]] && echo 5000 || { [[ -n $MISSES ]] && echo 1000000000; } || echo 100)}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.2; done; }
drive() { # port requests [key prefix]
  if [[ -n ${CONNECTIONS:-} ]]; then
    for _ in $(seq $(($2 / 200))); do
      "$AFTER" load --burst 200 --duration 60s --json "$WORK/burst.json" \
        "http://127.0.0.1:$1/b/$SIZE/per-connection" >/dev/null 2>&1
    done
    return
  fi
  local extra=()
  [[ -n ${HEADER:-} ]] && extra=(-H "$HEADER")
  "$AFTER" load "http://127.0.0.1:$1/b/$SIZE/${3:-h}{key}" "${extra[@]}" --keys "$KEYS" --zipf 0 --requests "$2" \
    --duration 600s -c 8 --quiet >/dev/null 2>&1
}
fill() { # build port dir: stores every key on disk, natively, then stops
  OUTPOST_LOG__ACCESS_LOG=false "$1" serve --listen "127.0.0.1:$2" --origin http://127.0.0.1:19000 \
    --cache-dir "$3" >/dev/null 2>&1 &
  local pid=$!; PIDS+=($pid)
  wait_port "$2"
  drive "$2" $((KEYS * 10))
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
}
count() { # build port name -> instructions per request
  local bin=$1 port=$2 out="$WORK/cg.$2" disk_args=()
  if [[ -n $DISK ]]; then
    fill "$bin" "$port" "$WORK/dir.$port"
    disk_args=(--cache-dir "$WORK/dir.$port")
  fi
  local memory=()
  [[ -n $DISK ]] && memory=(OUTPOST_CACHE__MEMORY_CAPACITY=1MiB OUTPOST_CACHE__MAX_OBJECT_SIZE=1MiB)
  env OUTPOST_LOG__ACCESS_LOG=false "${memory[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" serve --listen "127.0.0.1:$port" --origin http://127.0.0.1:19000 "${disk_args[@]}" >/dev/null 2>&1 &
  local pid=$!; PIDS+=($pid)
  wait_port "$port"
  drive "$port" 2000 "$([[ -n $MISSES ]] && echo w || echo h)"
  callgrind_control -z "$pid" >/dev/null 2>&1
  drive "$port" "$REQUESTS" "$([[ -n $MISSES ]] && echo m || echo h)"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null
  [[ -n ${KEEP:-} ]] && mkdir -p "$KEEP" && cp "$out.1" "$KEEP/$3.out"
  local total; total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
  local counted=$REQUESTS
  [[ -n ${CONNECTIONS:-} ]] && counted=$((REQUESTS / 200 * 200))
  echo $((total / counted))
}
b=$(count "$BEFORE" 19311 before); a=$(count "$AFTER" 19312 after)
what=$([[ -n $DISK ]] && echo "disk hit" || { [[ -n $MISSES ]] && echo "miss"; } || echo "memory hit")
[[ -n ${CONNECTIONS:-} ]] && what="$what on a connection of its own"
python3 -c "print('instructions per $SIZE $what: before $b, after $a (%.1f%%)' % (100 * ($a - $b) / $b))"
