#!/usr/bin/env bash
# How soon a Range miss gets its first byte, through two outpost builds side by side: each
# RANGES entry is asked of a new URL of `trickle_origin.py` (SIZE_MIB MiB sent STEP_KIB KiB
# every INTERVAL_MS ms; defaults 4, 128, 50: 1.6 s for the whole object), ROUNDS times per
# build, rounds interleaved. Each line: curl's time to the first byte and to the last, and
# whether the bytes are the origin's. Loopback only; stops what it started.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/range_miss.sh
#
# RANGES is a space-separated list of `first-last` or `first-` (default: a small range in
# the first MiB, an open range from the start, and a range past 1 MiB, which is forwarded).
# SIZE_MIB=16 puts the object past `cache.unread_fill_limit` (8 MiB): a range ending early
# in it then lets the whole fetch stop once it is sent. Once both builds have stopped, the
# bytes the origin sent for each request are listed (fetches a range let go of stop short).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-2}
export SIZE_MIB=${SIZE_MIB:-4} STEP_KIB=${STEP_KIB:-128} INTERVAL_MS=${INTERVAL_MS:-50}
RANGES=${RANGES:-1000-1999 0- 2000000-2999999}
WORK=$(mktemp -d)
export SENT_LOG=$WORK/sent
PIDS=()
# Waits for the outposts' graceful stops: fills still reading the slow origin finish first.
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait
  echo "origin bytes sent per request (path, bytes):"
  sort "$SENT_LOG" 2>/dev/null | sed 's/^/  /'
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
python3 "$HERE/trickle_origin.py" 19011 & PIDS+=($!)
wait_port 19011
declare -A PORT=([before]=19012 [after]=19013)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  OUTPOST_LOG__ACCESS_LOG=false "$bin" serve --listen "127.0.0.1:${PORT[$name]}" \
    --origin http://127.0.0.1:19011 >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "${PORT[$name]}"
done
for round in $(seq "$ROUNDS"); do
  for spec in $RANGES; do
    for name in before after; do
      url="http://127.0.0.1:${PORT[$name]}/r$$-$round-$spec-$name"
      timing=$(curl -s -o "$WORK/piece" -r "$spec" -w "%{http_code} %{time_starttransfer} %{time_total}" "$url")
      same=$(python3 - "$spec" "$WORK/piece" <<'PY'
import os, sys
size = int(os.environ["SIZE_MIB"]) << 20
first, last = sys.argv[1].split("-")
first, last = int(first), int(last) if last else size - 1
want = bytes(i % 251 for i in range(first, last + 1))
print("same" if open(sys.argv[2], "rb").read() == want else "DIFFERENT")
PY
)
      read -r status ttfb total <<<"$timing"
      printf 'round %s  %-20s %-6s %s  first byte %7.1f ms  last %7.1f ms  %s\n' "$round" "$spec" \
        "$name" "$status" "$(echo "$ttfb * 1000" | bc)" "$(echo "$total * 1000" | bc)" "$same"
    done
  done
done
