#!/usr/bin/env bash
# Memory when the tier's heap objects are displaced by bodies in memory files (issue 17,
# target 6): a MEM tier is filled with unique 1 KiB misses for 4 s, then 40 unique 1 MiB
# objects are each asked for ASKS times in a row (enough to win their place among one-hit
# objects, which the size weight favours up to 3x and the sketch may count twice), so the
# tier trades its heap for memory files. Reports, per build and round, RSS less shmem
# plus the memory files the process holds (as memory_footprint.sh counts them) at the
# start, at its peak and 2 s after the last request, as a ratio to MEM.
#
#   BEFORE=path/to/outpost AFTER=path/to/outpost [MEM=64MiB RUNS=2 ASKS=10] benches/heap_displaced.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
MEM=${MEM:-64MiB}
RUNS=${RUNS:-2}
ASKS=${ASKS:-10}
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; PIDS=(); }
trap cleanup EXIT
round() { # round LABEL BIN
  taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
  OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM \
    taskset -c 0 "$2" serve --listen 127.0.0.1:19305 --origin http://127.0.0.1:19000 >/dev/null 2>&1 &
  local pid=$!; PIDS+=($pid)
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:19305/b/1k/up && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c64 -d4s -s "$KIT/keys.lua" http://127.0.0.1:19305 -- unique /b/1k/r- "$$" - '?d=0' >/dev/null 2>&1
  python3 - "$pid" "$1" "$MEM" "$ASKS" "$HERE" <<'PY'
import sys, threading, time, urllib.request
pid, label, mem, asks, here = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
text = mem.lower().replace("ib", "").replace("b", "")
capacity = int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
sys.path.insert(0, here)
from held_memory import held as held_by
def held():
    rss, rss_shmem, files = held_by(pid)
    return rss - rss_shmem + files, files
samples, done = [held()], threading.Event()
def sample():
    while not done.is_set():
        samples.append(held())
        time.sleep(0.05)
sampler = threading.Thread(target=sample)
sampler.start()
stamp = time.time()
for index in range(40):
    for _ in range(asks):
        urllib.request.urlopen(f"http://127.0.0.1:19305/b/1m/displace-{index}-{stamp}?d=0").read()
time.sleep(2)
done.set()
sampler.join()
mib = lambda b: f"{b / 2**20:.1f}"
start, peak, end = samples[0], max(samples), samples[-1]
print(f"{label:>8}: start {mib(start[0])} MiB, peak {mib(peak[0])} MiB (memory files {mib(peak[1])}) = "
      f"{peak[0] / capacity:.3f}x, 2 s later {mib(end[0])} MiB (memory files {mib(end[1])}) = {end[0] / capacity:.3f}x")
PY
  cleanup
}
echo "memory tier $MEM; 40 x 1 MiB asked $ASKS times each after 4 s of unique 1 KiB misses"
for _ in $(seq "$RUNS"); do
  round before "${BEFORE:?BEFORE=path/to/outpost}"
  round after "${AFTER:?AFTER=path/to/outpost}"
done
