#!/usr/bin/env bash
# Peak RSS and threads with a disk tier, two builds one after the other: each is filled
# with unique 1 KiB misses for DUR seconds (every body also written to its disk tier in a
# fresh directory under DIR), then its VmHWM and thread count are read. Then the same build
# is started again on the filled directory: its RSS once the tier has opened and swept (and
# a little traffic has let freed memory go), against the same on an empty directory, shows
# what the index keeps in memory per object on disk.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost MEM=128MiB benches/rss_disk_tier.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
DIR=${DIR:-/tmp/outpost-rss-disk}
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$DIR"; }
trap cleanup EXIT
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
export OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=${MEM:-128MiB}
for target in "before $BEFORE 19303" "after $AFTER 19304"; do
  set -- $target
  rm -rf "$DIR"; mkdir -p "$DIR"
  taskset -c 0 "$2" serve --listen "127.0.0.1:$3" --origin http://127.0.0.1:19000 \
    --cache-dir "$DIR/cache" >/dev/null 2>&1 & P=$!; PIDS+=($P)
  sleep 1
  out=$(taskset -c 1 wrk -t1 -c64 -d"${DUR:-60}"s -s "$KIT/keys.lua" "http://127.0.0.1:$3" -- unique /b/1k/r- "$1" - '?d=0' 2>&1)
  echo "$1 (${MEM:-128MiB} tier + disk): $(grep -E 'VmHWM' "/proc/$P/status" | tr -s ' \t' ' ')," \
    "threads $(ls "/proc/$P/task" | wc -l), $(echo "$out" | awk '/Requests\/sec/{print $2}') req/s," \
    "on disk $(du -sm "$DIR/cache" | cut -f1) MB"
  kill "$P"; wait "$P" 2>/dev/null
  idle_rss() { # cache dir -> "RSS_kB entries" of an idle start once the tier has opened
    taskset -c 0 "$2" serve --listen "127.0.0.1:$3" --origin http://127.0.0.1:19000 \
      --cache-dir "$1" >"$DIR/idle.log" 2>&1 & local q=$!; PIDS+=($q)
    for _ in $(seq 600); do grep -q "disk tier swept" "$DIR/idle.log" && break; sleep 0.1; done
    # A little traffic lets sled's deferred garbage be collected, and jemalloc returns freed
    # pages after its 10 s decay: what is left is what the index keeps.
    "$AFTER" load "http://127.0.0.1:$3/b/1k/light-{key}" --keys 20 --zipf 0 --requests 2000 \
      -c 2 --duration 10s --quiet >/dev/null 2>&1
    sleep 11
    echo "$(awk '/VmRSS/{print $2}' "/proc/$q/status") $(grep -o 'entries=[0-9]*' "$DIR/idle.log" | head -1 | cut -d= -f2)"
    kill "$q"; wait "$q" 2>/dev/null
  }
  read -r full entries <<<"$(idle_rss "$DIR/cache" "$2" "$3")"
  read -r empty _ <<<"$(idle_rss "$DIR/empty" "$2" "$3")"
  python3 -c "print('$1 idle after reopening: %d kB with %d objects on disk, %d kB empty: %.0f B per object' % ($full, $entries, $empty, ($full - $empty) * 1024 / max($entries, 1)))"
done
