#!/usr/bin/env bash
# Memory held for clients stalled on range misses (issue 17, target 6), two builds side
# by side: STALLED clients (default 64) each ask for a distinct PIECE_MIB MiB range
# (default 6) past `cache.range_fill_max_offset` of one of four SIZE_MIB MiB objects
# (default 10) from `trickle_origin.py`, read 1 KiB of it and hold on for HOLD_S seconds
# (default 6), while held_memory.py samples each build. A forwarded range's 206 is read
# whole to be kept as a partial entry; a client slower than the origin also leaves what
# it has not read yet in memory. Prints each build's peak RSS (and RSS + memory files) as
# a ratio to its memory capacity (MEM, default 128MiB), and the pieces it kept.
# Loopback only; stops what it started.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/stalled_ranges.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
MEM=${MEM:-128MiB}
STALLED=${STALLED:-64}
PIECE_MIB=${PIECE_MIB:-6}
HOLD_S=${HOLD_S:-6}
export SIZE_MIB=${SIZE_MIB:-10} STEP_KIB=1024 INTERVAL_MS=1
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; wait; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
python3 "$HERE/trickle_origin.py" 19041 >/dev/null 2>&1 & PIDS+=($!)
wait_port 19041
cap=$(python3 -c "
s='$MEM'.lower().replace('ib','').replace('b','')
m={'k':1<<10,'m':1<<20,'g':1<<30}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))")
declare -A PORT=([before]=19042 [after]=19043) ADMIN=([before]=19044 [after]=19045)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM "$bin" serve \
    --listen "127.0.0.1:${PORT[$name]}" --admin "127.0.0.1:${ADMIN[$name]}" \
    --origin http://127.0.0.1:19041 >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  wait_port "${PORT[$name]}"
done
for name in before after; do
  pid_var=PID_$name
  python3 "$HERE/held_memory.py" "${!pid_var}" >"$WORK/$name.mem" & sampler=$!
  python3 - "${PORT[$name]}" "$STALLED" "$PIECE_MIB" "$HOLD_S" <<'PY'
import socket, sys, time
port, stalled, piece, hold = (int(a) for a in sys.argv[1:])
held = []
for i in range(stalled):
    first = (1 << 20) + i * 50 * 1024
    last = first + (piece << 20) - 1
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET /obj-{i % 4} HTTP/1.1\r\nHost: x\r\nRange: bytes={first}-{last}\r\n\r\n".encode())
    s.recv(1024)
    held.append(s)
time.sleep(hold)
PY
  kill "$sampler"; wait "$sampler" 2>/dev/null
  kept=$(curl -s "http://127.0.0.1:${ADMIN[$name]}/status.json" \
    | python3 -c 'import json,sys; p=json.load(sys.stdin)["tiers"]["partial"]; print(p["entries"], "entries,", round(p["bytes"] / 1048576, 1), "MiB")')
  awk -v cap="$cap" -v name="$name" -v kept="$kept" '
    { if ($1 > r) r = $1; t = $1 + $3 - $2; if (t > m) m = t }
    END { printf "%-6s peak RSS %6.1f MiB (%.2fx capacity), RSS+files %6.1f MiB (%.2fx); partial store: %s\n",
          name, r / 1048576, r / cap, m / 1048576, m / cap, kept }' "$WORK/$name.mem"
done
