#!/usr/bin/env bash
# What a download that is stopped and then started again costs the origin, through two
# outpost builds side by side: curl fetches one SIZE_MIB MiB object (default 40) from
# `trickle_origin.py` (1 MiB every 20 ms, a strong ETag) and is stopped after STOP_S
# seconds (default 0.3, a user's cancel or a dropped connection); RETRIES plain GETs
# (default 2, as a browser's retry or a package manager's next attempt: no `-C -`) then
# fetch it whole. Each build has a disk tier of its own. Prints each retry's status,
# time and curl exit code and whether its file is the origin's, the bytes and requests
# the origin served each build (and each request's Range), and each build's
# `outpost_prefix_*` counters where it has them.
# Loopback only; stops what it started.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/retried_download.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
RETRIES=${RETRIES:-2}
STOP_S=${STOP_S:-0.3}
export SIZE_MIB=${SIZE_MIB:-40} STEP_KIB=1024 INTERVAL_MS=20
WORK=$(mktemp -d)
export SENT_LOG=$WORK/sent
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; wait; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
python3 "$HERE/trickle_origin.py" 19031 & PIDS+=($!)
wait_port 19031
declare -A PORT=([before]=19032 [after]=19033) ADMIN=([before]=19034 [after]=19035)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  OUTPOST_LOG__ACCESS_LOG=false "$bin" serve --listen "127.0.0.1:${PORT[$name]}" \
    --admin "127.0.0.1:${ADMIN[$name]}" --origin http://127.0.0.1:19031 \
    --cache-dir "$WORK/cache-$name" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "${PORT[$name]}"
done
for name in before after; do
  url="http://127.0.0.1:${PORT[$name]}/retry-$$-$name.iso"
  curl -s --max-time "$STOP_S" -o /dev/null "$url"
  for retry in $(seq "$RETRIES"); do
    rm -f "$WORK/file"
    took=$(curl -s -o "$WORK/file" -w '%{http_code} %{time_total}s' "$url")
    took="$took curl-exit=$?"
    same=$(python3 - "$WORK/file" <<'PY'
import os, sys
size = int(os.environ["SIZE_MIB"]) << 20
data = open(sys.argv[1], "rb").read() if os.path.exists(sys.argv[1]) else b""
print("same" if data == bytes(i % 251 for i in range(size)) else "DIFFERENT")
PY
)
    echo "$name  retry $retry  $same  $took" >>"$WORK/runs"
  done
  curl -s "http://127.0.0.1:${ADMIN[$name]}/metrics" | grep '^outpost_prefix' | sed "s/^/$name  /" >>"$WORK/counters"
done
# The origin logs a request when its connection closes: both builds stop first.
for pid in "${PIDS[@]:1}"; do kill "$pid"; done
wait "${PIDS[@]:1}"
cat "$WORK/runs"
cat "$WORK/counters" 2>/dev/null
echo "origin requests (path, bytes sent, Range):"
sed 's/^/  /' "$SENT_LOG"
echo "origin bytes served per build:"
awk '{k = ($1 ~ /-before/) ? "before" : "after"; b[k] += $2; n[k]++}
  END {for (k in b) printf "  %-6s %6.1f MiB in %d requests\n", k, b[k] / 1048576, n[k]}' "$SENT_LOG"
