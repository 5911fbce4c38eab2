#!/usr/bin/env bash
# Memory held by the package mirror for artifacts read whole to be checked (issue 17,
# target 6), two builds side by side: N curl downloads at once (default 16) of distinct
# Debian `by-hash` files (whose path names their SHA-256) of SIZE_MIB MiB (default 40,
# under `mirror.hold_max`), from `trickle_origin.py` standing for the archive, while
# held_memory.py samples each build. Prints each build's peak RSS as a ratio to its memory
# capacity (MEM, default 128MiB) and whether every file arrived whole.
# Loopback only; stops what it started.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/held_artifacts.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
MEM=${MEM:-128MiB}
N=${N:-16}
export SIZE_MIB=${SIZE_MIB:-40} STEP_KIB=1024 INTERVAL_MS=${INTERVAL_MS:-10}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; wait; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
python3 "$HERE/trickle_origin.py" 19081 >/dev/null 2>&1 & PIDS+=($!)
digest=$(python3 -c "
import hashlib, os
print(hashlib.sha256(bytes(i % 251 for i in range(int(os.environ['SIZE_MIB']) << 20))).hexdigest())")
wait_port 19081
cap=$(python3 -c "
s='$MEM'.lower().replace('ib','').replace('b','')
m={'k':1<<10,'m':1<<20,'g':1<<30}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))")
cat >"$WORK/mirror.toml" <<EOF
[[mirror.registries]]
name = "debian"
kind = "debian"
path = "/debian/"
upstream = "http://127.0.0.1:19081"
EOF
declare -A PORT=([before]=19082 [after]=19083)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM "$bin" serve \
    --listen "127.0.0.1:${PORT[$name]}" --origin http://127.0.0.1:19081 \
    --config "$WORK/mirror.toml" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  wait_port "${PORT[$name]}"
done
for name in before after; do
  pid_var=PID_$name
  python3 "$HERE/held_memory.py" "${!pid_var}" >"$WORK/$name.mem" & sampler=$!
  downloads=()
  for i in $(seq "$N"); do
    curl -s -o "$WORK/file-$i" \
      "http://127.0.0.1:${PORT[$name]}/debian/dists/d$i-$$/main/by-hash/SHA256/$digest" &
    downloads+=($!)
  done
  wait "${downloads[@]}"
  kill "$sampler"; wait "$sampler" 2>/dev/null
  whole=$(for i in $(seq "$N"); do sha256sum "$WORK/file-$i"; done | grep -c "^$digest ")
  awk -v cap="$cap" -v name="$name" -v whole="$whole" -v n="$N" '
    { if ($1 > r) r = $1 }
    END { printf "%-6s peak RSS %6.1f MiB (%.2fx capacity); %d of %d files whole\n",
          name, r / 1048576, r / cap, whole, n }' "$WORK/$name.mem"
  rm -f "$WORK"/file-*
done
