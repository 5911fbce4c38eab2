#!/bin/bash
# Disk-hit throughput beside memory hits and nginx's file cache, in one run.
#
#   cargo build --release
#   ROUNDS=2 DURATION=6 benches/disk_hits.sh
#
# Uses the shared benchmark kit (KIT, default ../shared/bench: perf-origin, nginx peer
# config, keys.lua, servers.sh; see its README for the one-time setup). Three targets:
#   mem   outpost with its default memory tier (every request a memory hit once warm)
#   disk  outpost with a 1 MiB memory tier and a disk tier on /dev/shm (nginx's cache is on
#         tmpfs in the kit): every 100 KiB request reads and verifies its body from disk,
#         and 10 MiB objects (above max_object_size) always stream from their file
#   nginx the kit's nginx proxy_cache
# Server on CPU 0, wrk and the origin on CPU 1; rounds are interleaved. Prints req/s,
# req per server CPU-second and p99 per target and test. Stops everything it started.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ROUNDS=${ROUNDS:-2}; DURATION=${DURATION:-6}
export OUTPOST_BIN=${OUTPOST_BIN:-$HERE/../target/release/outpost}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run}
export OUTPOST_LOG__ACCESS_LOG=false
CACHE_DIR=/dev/shm/outpost-disk-hits
OUT=$(mktemp)
mkdir -p "$RUN_DIR"
cleanup() {
  [[ -n ${DISKPID:-} ]] && kill "$DISKPID" 2>/dev/null && wait "$DISKPID" 2>/dev/null
  for s in outpost nginx origin; do "$KIT/servers.sh" stop $s >/dev/null 2>&1; done
  rm -rf "$CACHE_DIR" "$OUT"
}
trap cleanup EXIT
for s in origin nginx outpost; do "$KIT/servers.sh" start $s >/dev/null; done
rm -rf "$CACHE_DIR"
OUTPOST_CACHE__MEMORY_CAPACITY=1MiB OUTPOST_CACHE__MAX_OBJECT_SIZE=1MiB taskset -c 0 "$OUTPOST_BIN" serve \
  --listen 127.0.0.1:18889 --origin http://127.0.0.1:19000 --cache-dir "$CACHE_DIR" >"$RUN_DIR/outpost-disk.log" 2>&1 &
DISKPID=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/18889) 2>/dev/null && break; sleep 0.05; done
declare -A URL=([mem]=http://127.0.0.1:18888 [disk]=http://127.0.0.1:18889 [nginx]=http://127.0.0.1:18080)
pid_of() { case $1 in mem) cat "$RUN_DIR/outpost.pid";; disk) echo "$DISKPID";; nginx) pgrep -f "nginx: worker" | head -1;; esac; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # target prefix keys conns
  local pid c0 c1 line; pid=$(pid_of "$1"); c0=$(ticks "$pid")
  line=$(timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$4" -d"${DURATION}s" --timeout 10s -s "$KIT/keys.lua" "${URL[$1]}" -- hot "$2" "$3" - 2>/dev/null | sed -n 's/^WRKJSON //p')
  c1=$(ticks "$pid")
  echo "$1 $2 $((c1 - c0)) $line" >>"$OUT"
}
for t in mem disk nginx; do # fill every key
  timeout 30 taskset -c 1 wrk -t1 -c8 -d3s -s "$KIT/keys.lua" "${URL[$t]}" -- hot /b/100k/dk 100 - >/dev/null 2>&1
  timeout 30 taskset -c 1 wrk -t1 -c4 -d4s -s "$KIT/keys.lua" "${URL[$t]}" -- hot /b/10m/dk 8 - >/dev/null 2>&1
done
for _ in $(seq "$ROUNDS"); do
  for t in mem disk nginx; do run $t /b/100k/dk 100 64; done
  for t in mem disk nginx; do run $t /b/10m/dk 8 8; done
done
python3 - "$OUT" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    target, prefix, ticks, data = line.split(" ", 3)
    if not data.strip():
        continue
    j = json.loads(data)
    r = rows.setdefault((prefix, target), [0, 0, 0, []])
    r[0] += j["requests"]; r[1] += j["duration_us"]; r[2] += int(ticks); r[3].append(j["p99_us"] / 1000)
clk = 100  # USER_HZ
for (prefix, target), (req, dur, ticks, p99) in sorted(rows.items()):
    print(f"{prefix:12} {target:6} req/s {req / (dur / 1e6):9.0f}  per server CPU-s {req / max(ticks / clk, 1e-9):9.0f}  p99 ms {p99}")
PY
