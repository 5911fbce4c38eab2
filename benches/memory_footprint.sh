#!/usr/bin/env bash
# Memory footprint against the configured memory tier (issue 17, target 6): one build is
# filled with unique misses of each size in turn (PHASES, each DUR seconds, far past MEM),
# then unique gzip, br and zstd misses (an encoder per response), then STALLED clients (64) that ask for
# unique 8 MiB objects and read only their first KiB for 3 s (each fill past the fills'
# budget streams unstored and holds what it has read ahead of its client), then STALLED
# clients that hold 1 MiB bodies the tier stored while unique 1 MiB misses evict them (a
# sealed body keeps its pages while a client holds a slice), while a sampler (held_memory.py)
# reads every 0.2 s
#   - VmRSS (anonymous + file pages mapped and touched, including mapped memory files),
#   - the bytes of the memory files the process holds (`memfd:` descriptors and mappings;
#     sealed bodies and bodies being written into theirs): shmem pages that belong to no
#     RSS unless a mapping of them was touched,
# and reports, per phase, the peak of each and of RSS + memory files not already in RSS
# (RssShmem), as a ratio to the tier's capacity, beside that sum at the phase's start.
#
#   MEM=128MiB DUR=20 [POLICY=lru] benches/memory_footprint.sh [path/to/outpost]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BIN=${1:-$HERE/../target/release/outpost}
MEM=${MEM:-128MiB}
DUR=${DUR:-20}
PHASES=${PHASES:-"/b/1k/ /b/100k/ /b/1m/"}
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
export OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM
[[ -n ${POLICY:-} ]] && export OUTPOST_CACHE__MEMORY_POLICY=$POLICY
taskset -c 0 "$BIN" serve --listen 127.0.0.1:19305 --origin http://127.0.0.1:19000 >/dev/null 2>&1 & P=$!; PIDS+=($P)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:19305/b/1k/up && break; sleep 0.1; done

sample() { # sample PID OUT: one line per 0.2 s until the pid's sampler is stopped
  python3 "$HERE/held_memory.py" "$1" >"$2" &
  echo $!
}

mib() { python3 -c "print(round($1 / 1048576, 1))"; }
cap=$(python3 -c "
s='$MEM'.lower().replace('ib','').replace('b','')
m={'k':1<<10,'m':1<<20,'g':1<<30}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))")
echo "memory tier $MEM; DUR=${DUR}s per phase; outpost pid $P"
stall() { # stall N PATH SECS [READY]: N clients each ask for a unique PATH object and read
  # 1 KiB of it, then hold on for SECS; with READY, each object is first asked for in full,
  # and READY (a file) is created once all are stalled
  python3 - "$@" <<'PY'
import socket, sys, time
held, stamp = [], time.time()
paths = [f"{sys.argv[2]}stall-{i}-{stamp}?d=0" for i in range(int(sys.argv[1]))]
if len(sys.argv) > 4:  # asked for in full first, so stored and no longer newcomers
    import urllib.request
    for path in paths:
        urllib.request.urlopen(f"http://127.0.0.1:19305{path}").read()
for path in paths:
    s = socket.create_connection(("127.0.0.1", 19305))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.recv(1024)
    held.append(s)
if len(sys.argv) > 4:
    open(sys.argv[4], "w").close()
time.sleep(float(sys.argv[3]))
print("Requests/sec: -")
PY
}
# The kit's key script, taking any Accept-Encoding (its fourth argument) rather than gzip alone.
KEYS=$(mktemp --suffix=.lua)
sed 's/if args\[4\] == "gzip" then hdrs\["Accept-Encoding"\] = "gzip" end/if args[4] and args[4] ~= "-" then hdrs["Accept-Encoding"] = args[4] end/' \
  "$KIT/keys.lua" >"$KEYS"
trap 'cleanup; rm -f "$KEYS"' EXIT
misses() { # misses SECS wrk-args...: 64 connections of unique misses
  local secs=$1; shift
  taskset -c 1 wrk -t1 -c64 -d"${secs}"s --timeout 10s -s "$KEYS" http://127.0.0.1:19305 -- "$@" 2>&1
}
run_phase() { # run_phase LABEL wrk-args... | run_phase LABEL stall N | run_phase LABEL evicted N
  local label=$1; shift
  local log; log=$(mktemp)
  local sp; sp=$(sample "$P" "$log")
  local out
  if [[ $1 == stall ]]; then out=$(stall "$2" /b/8m/ 3 2>&1)
  elif [[ $1 == evicted ]]; then
    # Stalled clients hold 1 MiB bodies the tier stored, while misses evict them (under
    # POLICY=lru; the default policy keeps bodies asked for twice over one-hit misses).
    local ready; ready=$(mktemp -u)
    stall "$2" /b/1m/ $((DUR + 1)) "$ready" >/dev/null 2>&1 & local st=$!
    while [[ ! -e $ready ]] && kill -0 "$st" 2>/dev/null; do sleep 0.1; done
    rm -f "$ready"
    out=$(misses "$DUR" unique /b/1m/e- "$$" - '?d=0')
    wait "$st"
  else out=$(misses "$DUR" "$@")
  fi
  kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null
  read -r rss anon files total start < <(awk '{ if ($1>r) r=$1; if ($1-$2>a) a=$1-$2; if ($3>f) f=$3; t=$1+$3-$2; if (t>m) m=t; if (NR==1) s=t } END { print r+0, a+0, f+0, m+0, s+0 }' "$log")
  # The first sample is what earlier phases left (the tier, the allocator's freed heap):
  # the peak less it is what the phase itself added.
  printf '%-26s %8s req/s  peak RSS %7s MiB (not shmem %7s)  peak memory files %7s MiB  peak RSS+files %7s MiB = %sx capacity (%sx at its start)\n' \
    "$label" "$(echo "$out" | awk '/Requests\/sec/{print $2}')" "$(mib "$rss")" "$(mib "$anon")" "$(mib "$files")" "$(mib "$total")" \
    "$(python3 -c "print(round($total / $cap, 3))")" "$(python3 -c "print(round($start / $cap, 3))")"
  rm -f "$log"
}
for prefix in $PHASES; do run_phase "unique misses $prefix" unique "${prefix}r-" "$$" - '?d=0'; done
run_phase "unique gzip misses /t/100k/" unique /t/100k/u- "$$" gzip '?d=0'
run_phase "unique br misses /t/100k/" unique /t/100k/v- "$$" br '?d=0'
run_phase "unique zstd misses /t/100k/" unique /t/100k/w- "$$" zstd '?d=0'
run_phase "${STALLED:-64} stalled clients /b/8m/" stall "${STALLED:-64}"
run_phase "${STALLED:-64} stalled on evicted /b/1m/" evicted "${STALLED:-64}"
echo "final VmHWM: $(grep VmHWM "/proc/$P/status" | tr -s ' \t' ' ')"
