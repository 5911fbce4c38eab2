#!/usr/bin/env bash
# Memory held when many downloads are cancelled together (issue 17, target 6), two builds
# side by side, each with a disk tier of its own: N curl downloads (default 32) of
# distinct SIZE_MIB MiB objects (default 40) from `trickle_origin.py` are stopped after
# STOP_S seconds (default 1). What arrived of each is in its disk file, and is read back
# to be kept as a partial entry (a prefix a later fetch completes). held_memory.py
# samples each build from before the downloads until HOLD_S seconds (default 4) after
# the cancel. Prints each build's peak RSS as a ratio to its memory capacity (MEM,
# default 128MiB), the RSS after the cancel settled, and the prefixes kept.
# Loopback only; stops what it started.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/cancelled_downloads.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
MEM=${MEM:-128MiB}
N=${N:-32}
STOP_S=${STOP_S:-1}
HOLD_S=${HOLD_S:-4}
export SIZE_MIB=${SIZE_MIB:-40} STEP_KIB=1024 INTERVAL_MS=2
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; wait; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
python3 "$HERE/trickle_origin.py" 19061 >/dev/null 2>&1 & PIDS+=($!)
wait_port 19061
cap=$(python3 -c "
s='$MEM'.lower().replace('ib','').replace('b','')
m={'k':1<<10,'m':1<<20,'g':1<<30}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))")
declare -A PORT=([before]=19062 [after]=19063) ADMIN=([before]=19064 [after]=19065)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM "$bin" serve \
    --listen "127.0.0.1:${PORT[$name]}" --admin "127.0.0.1:${ADMIN[$name]}" \
    --origin http://127.0.0.1:19061 --cache-dir "$WORK/cache-$name" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  wait_port "${PORT[$name]}"
done
for name in before after; do
  pid_var=PID_$name
  python3 "$HERE/held_memory.py" "${!pid_var}" >"$WORK/$name.mem" & sampler=$!
  downloads=()
  for i in $(seq "$N"); do
    curl -s --max-time "$STOP_S" -o /dev/null "http://127.0.0.1:${PORT[$name]}/cancel-$i-$$-$name" &
    downloads+=($!)
  done
  wait "${downloads[@]}"
  sleep "$HOLD_S"
  kill "$sampler"; wait "$sampler" 2>/dev/null
  kept=$(curl -s "http://127.0.0.1:${ADMIN[$name]}/status.json" \
    | python3 -c 'import json,sys; p=json.load(sys.stdin)["tiers"]["partial"]; print(p["entries"], "entries,", round(p["bytes"] / 1048576, 1), "MiB")')
  awk -v cap="$cap" -v name="$name" -v kept="$kept" '
    { if ($1 > r) r = $1; last = $1 }
    END { printf "%-6s peak RSS %6.1f MiB (%.2fx capacity), settled %6.1f MiB; prefixes kept: %s\n",
          name, r / 1048576, r / cap, last / 1048576, kept }' "$WORK/$name.mem"
done
