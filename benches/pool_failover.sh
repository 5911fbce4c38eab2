#!/usr/bin/env bash
# How long an origin pool keeps sending to a server that died, and what clients see.
#
# Three sample origins behind one outpost pool, uncached load from `outpost load`; after
# a few seconds one origin is killed, and the admin API is polled until the pool stops
# offering it requests. Run once with passive ejection only (5 consecutive failures) and
# once with active checks only (every 1 s, out after 2 failures).
#
# usage: benches/pool_failover.sh        (builds a release outpost unless OUTPOST_BIN is set)
# env:   OUTPOST_BIN  DURATION (load seconds, 8)  KILL_AFTER (seconds, 3)  BASE_PORT (19600)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${OUTPOST_BIN:-}
if [[ -z $BIN ]]; then cargo build --release --locked -q; BIN=target/release/outpost; fi
DURATION=${DURATION:-8}; KILL_AFTER=${KILL_AFTER:-3}; BASE=${BASE_PORT:-19600}
WORK=$(mktemp -d); PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
now() { date +%s.%N; }

run() { # run NAME POOL_TOML_LINES
  local name=$1 extra=$2 origins=() port
  for n in 1 2 3; do
    port=$((BASE + n))
    "$BIN" origin --listen "127.0.0.1:$port" --latency 2ms --body-size 1KiB --cache-control "no-store" \
      >"$WORK/origin$n.log" 2>&1 &
    origins+=($!); PIDS+=($!); wait_port "$port"
  done
  cat >"$WORK/$name.toml" <<EOF
listen = "127.0.0.1:$BASE"
admin = "127.0.0.1:$((BASE + 10))"
pool = "app"
[log]
access_log = false
[[pools]]
name = "app"
servers = [{ url = "http://127.0.0.1:$((BASE + 1))" }, { url = "http://127.0.0.1:$((BASE + 2))" }, { url = "http://127.0.0.1:$((BASE + 3))" }]
$extra
EOF
  "$BIN" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  local proxy=$!; PIDS+=($proxy); wait_port "$BASE"; wait_port $((BASE + 10))
  "$BIN" load "http://127.0.0.1:$BASE/obj/" --duration "${DURATION}s" -c 16 --keys 1000000 --zipf 0 \
    --quiet --json "$WORK/$name.json" >"$WORK/$name.load" 2>&1 &
  local load=$!
  sleep "$KILL_AFTER"
  local dead=127.0.0.1:$((BASE + 2)) killed_at out_at state
  killed_at=$(now); kill "${origins[1]}"
  while :; do
    state=$(curl -s "http://127.0.0.1:$((BASE + 10))/origins" |
      python3 -c "import json,sys; print(next(m['state'] for p in json.load(sys.stdin) for m in p['members'] if m['address']=='$dead'))")
    [[ $state != up ]] && { out_at=$(now); break; }
    sleep 0.005
  done
  wait "$load" || true
  python3 - "$name" "$killed_at" "$out_at" "$state" "$WORK/$name.json" "$WORK/$name.log" <<'PY'
import datetime, json, re, sys
name, killed, out, state, report, log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
r = json.load(open(report))
# The proxy's own log line says when it took the server out (the admin poll is coarser).
taken_out = None
for line in open(log):
    if "ejected after consecutive failures" in line or "failed its health checks" in line:
        stamp = re.match(r"\x1b?\S*?(\d{4}-\d\d-\d\dT[\d:.]+)Z", line)
        if stamp:
            taken_out = datetime.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
            break
exact = f"{1000 * (taken_out - killed):.0f} ms by its log, " if taken_out else ""
print(f"{name}: out of rotation ({state}) {exact}{1000 * (out - killed):.0f} ms by the admin poll; "
      f"{r.get('requests')} requests, {r.get('errors', 0)} errors, statuses {r.get('statuses', {})}")
PY
  kill "$proxy" "${origins[0]}" "${origins[2]}" 2>/dev/null || true
  wait 2>/dev/null || true
}

run passive 'passive = { consecutive_failures = 5 }'
run active 'passive = { consecutive_failures = 0 }
health = { path = "/obj/health", interval = "1s", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 2 }'
