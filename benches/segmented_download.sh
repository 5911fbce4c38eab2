#!/usr/bin/env bash
# What a segmented downloader costs the origin, through two outpost builds side by side:
# aria2c (4 connections, 4 segments) fetches one SIZE_MIB MiB object (default 40) from
# `trickle_origin.py` (1 MiB every 20 ms, a strong ETag) RUNS times per build (default 4),
# each build with a disk tier of its own. aria2's first connection is a plain GET it
# drops at its segment's end; the others ask for ranges. Prints whether each run's file
# is the origin's, then the bytes and requests the origin served each build over all runs
# (a build that stores the object after its first run serves the rest from cache).
# Loopback only; stops what it started. Needs aria2c (Debian: aria2).
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/segmented_download.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
RUNS=${RUNS:-4}
export SIZE_MIB=${SIZE_MIB:-40} STEP_KIB=1024 INTERVAL_MS=20
command -v aria2c >/dev/null || { echo "aria2c is needed (apt-get install aria2)" >&2; exit 1; }
WORK=$(mktemp -d)
export SENT_LOG=$WORK/sent
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; wait; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
python3 "$HERE/trickle_origin.py" 19021 & PIDS+=($!)
wait_port 19021
declare -A PORT=([before]=19022 [after]=19023)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  OUTPOST_LOG__ACCESS_LOG=false "$bin" serve --listen "127.0.0.1:${PORT[$name]}" \
    --origin http://127.0.0.1:19021 --cache-dir "$WORK/cache-$name" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "${PORT[$name]}"
done
for run in $(seq "$RUNS"); do
  for name in before after; do
    rm -f "$WORK/file" "$WORK/file.aria2"
    aria2c -q -x4 -s4 -k1M --allow-overwrite=true -d "$WORK" -o file \
      "http://127.0.0.1:${PORT[$name]}/seg-$$-$name.iso" 2>&1
    same=$(python3 - "$WORK/file" <<'PY'
import os, sys
size = int(os.environ["SIZE_MIB"]) << 20
data = open(sys.argv[1], "rb").read()
print("same" if data == bytes(i % 251 for i in range(size)) else "DIFFERENT")
PY
)
    echo "run $run  $name  $same" >>"$WORK/runs"
  done
done
# The origin logs a request when its connection closes: both builds stop first.
for pid in "${PIDS[@]:1}"; do kill "$pid"; done
wait "${PIDS[@]:1}"
cat "$WORK/runs"
echo "origin bytes served per build (every request, after both builds stopped):"
awk '{k = ($1 ~ /-before/) ? "before" : "after"; b[k] += $2; n[k]++}
  END {for (k in b) printf "  %-6s %6.1f MiB in %d requests\n", k, b[k] / 1048576, n[k]}' "$SENT_LOG"
