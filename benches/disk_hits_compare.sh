#!/usr/bin/env bash
# 100 KiB disk hits of two outpost builds beside nginx's file cache, interleaved: each
# outpost keeps no body over 64 KiB in memory (MAX_IN_MEMORY) and its disk tier is on
# /dev/shm, so every hit's body comes from disk (sent from its verified file with
# `cache.disk_sendfile`, the default; set OUTPOST_CACHE__DISK_SENDFILE=false to measure
# the per-byte verified read). The memory tier (MEMORY, 64 MiB) holds those objects'
# headers and where their files are: it must hold them all, and the disk tier's index is
# charged to it (20 MiB and more), so a tier of 1 MiB (charged down to 128 KiB) sent half
# the hits back to the index. Server CPU per request from /proc ticks.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/disk_hits_compare.sh
#
# SIZE and KEYS choose the objects (default 100k and 100); small objects need more keys
# than the memory tier holds (SIZE=1k KEYS=20000 MEMORY=1MiB MAX_IN_MEMORY=1MiB: nearly
# every hit from a pack).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-dc}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-6}; SIZE=${SIZE:-100k}; KEYS=${KEYS:-100}
mkdir -p "$RUN_DIR"
. "$HERE/hot_rounds.sh"
extra_cleanup() { rm -rf /dev/shm/outpost-dc-before /dev/shm/outpost-dc-after; }
start_peers
export OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=${MEMORY:-64MiB} \
  OUTPOST_CACHE__MAX_OBJECT_SIZE=${MAX_IN_MEMORY:-64KiB}
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
hot_rounds "/b/$SIZE/dc" before after nginx
