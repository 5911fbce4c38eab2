#!/usr/bin/env bash
# Requests behind the origin connection caps: K concurrent distinct misses (default 3), each
# answered by perf-origin after DELAY ms (default 300), through an outpost whose
# `upstream.max_connections_per_origin` is CAP (default 1). Each request's status and
# time, and the connections the origin accepted for them. With the cap at 1 the answers
# should come one DELAY after another, on one connection (the readiness check's, or one
# new): a request waiting behind the cap takes the connection the one before it released
# (before 5a8cf08 it waited beside it for the pool's idle timeout, here 60 s, and got a
# 503 when the connection queue's 10 s ran out).
#
#   benches/connection_caps.sh [path/to/outpost ...]     # default target/release/outpost
#
# TOTAL=1 caps `upstream.max_connections` instead, with the first request sent to a
# second origin (a site) so that its idle connection holds the one place.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
K=${K:-3}; DELAY=${DELAY:-300}; CAP=${CAP:-1}
[[ $# -eq 0 ]] && set -- "$HERE/../target/release/outpost"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
"$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
"$ORIGIN_BIN" --port 19001 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:19000/__stats && break; sleep 0.1; done
for bin in "$@"; do
  conf=$(mktemp --suffix=.toml)
  if [[ -n ${TOTAL:-} ]]; then
    printf '[upstream]\nmax_connections = %s\npool_idle_timeout = "60s"\nconnection_queue_timeout = "10s"\n\n[[sites]]\nhosts = ["second.test"]\norigin = "http://127.0.0.1:19001"\n' "$CAP" >"$conf"
  else
    printf '[upstream]\nmax_connections_per_origin = %s\npool_idle_timeout = "60s"\nconnection_queue_timeout = "10s"\n' "$CAP" >"$conf"
  fi
  OUTPOST_LOG__ACCESS_LOG=false "$bin" serve --config "$conf" --listen 127.0.0.1:19307 \
    --origin http://127.0.0.1:19000 >/dev/null 2>&1 & P=$!; PIDS+=($P)
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:19307/b/1k/up && break; sleep 0.1; done
  echo "== $bin (cap $CAP${TOTAL:+ in all}, $K misses of ${DELAY} ms)"
  if [[ -n ${TOTAL:-} ]]; then
    curl -s -o /dev/null -H 'Host: second.test' "http://127.0.0.1:19307/b/1k/second-$$-$RANDOM?cc=no-store"
  fi
  conns() { curl -s http://127.0.0.1:19000/__stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["conns"])'; }
  before=$(conns)
  stamp=$(date +%s%N)
  clients=()
  for i in $(seq "$K"); do
    curl -s -o /dev/null -m 30 -w "request $i: %{http_code} in %{time_total} s\n" \
      "http://127.0.0.1:19307/b/1k/cap-$stamp-$i?d=$DELAY&cc=no-store" & clients+=($!)
  done
  wait "${clients[@]}"
  # Less one: the connection that asks for the count.
  echo "connections the origin accepted for them: $(($(conns) - before - 1))"
  kill "$P"; wait "$P" 2>/dev/null
  rm -f "$conf"
done
