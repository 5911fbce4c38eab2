#!/usr/bin/env bash
# Memory-tier hits of large objects with and without sealed memory files
# (`cache.memory_sendfile_min`), beside nginx's cache on /dev/shm (sendfile from tmpfs),
# interleaved. One outpost build runs twice: `heap` with memory_sendfile_min = 0 (bodies on
# the heap, written into the socket), `sealed` with the default (sent with sendfile).
# Server CPU per request from /proc ticks.
#
#   benches/memory_hits_compare.sh            # BIN=target/release/outpost
#
# SIZE and KEYS choose the objects (default 100k and 100).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-mh}
BIN=${BIN:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-6}; SIZE=${SIZE:-100k}; KEYS=${KEYS:-100}
mkdir -p "$RUN_DIR"
. "$HERE/hot_rounds.sh"
start_peers
export OUTPOST_LOG__ACCESS_LOG=false
declare -A URL=([heap]=http://127.0.0.1:19421 [sealed]=http://127.0.0.1:19422 [nginx]=http://127.0.0.1:18080)
declare -A MIN=([heap]=0 [sealed]=64KiB)
declare -A PID
for t in heap sealed; do
  OUTPOST_CACHE__MEMORY_SENDFILE_MIN=${MIN[$t]} taskset -c 0 "$BIN" serve \
    --listen "${URL[$t]#http://}" --origin http://127.0.0.1:19000 >/dev/null 2>&1 &
  PID[$t]=$!; PIDS+=($!)
done
sleep 1
PID[nginx]=$(pgrep -f "nginx: worker" | head -1)
hot_rounds "/b/$SIZE/mh" heap sealed nginx
