#!/usr/bin/env bash
# Issue 17 item 5: a cold burst of N requests for one key, through outpost, against one
# origin round trip. The probe is `outpost load --burst` (Rust, raw sockets, connections
# opened beforehand) on CPU 1, outpost on CPU 0, the kit's perf-origin answering after
# DELAY ms. Each round: the origin alone (every request its own fetch), outpost cold (a new
# key: one fetch, the rest collapsed), outpost warm (the same key again: all hits).
#
#   AFTER=target/release/outpost ROUNDS=5 N=200 DELAY=50 benches/burst.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-burst}
AFTER=${AFTER:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-5}; N=${N:-200}; DELAY=${DELAY:-50}
mkdir -p "$RUN_DIR"
PID=
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null
  "$KIT/servers.sh" stop origin >/dev/null 2>&1
}
trap cleanup EXIT
"$KIT/servers.sh" start origin >/dev/null
OUTPOST_LOG__ACCESS_LOG=false taskset -c 0 "$AFTER" serve --listen 127.0.0.1:19414 \
  --origin http://127.0.0.1:19000 >/dev/null 2>&1 &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:19414/ && break; sleep 0.05; done
probe() { taskset -c 1 "$AFTER" load --burst "$N" --duration 30s --json "$RUN_DIR/b.json" "$1" >/dev/null;
  python3 -c "import json; r=json.load(open('$RUN_DIR/b.json')); print('%8.1f ms  p50 %6.1f  hits %3d fwd %3d collapsed %3d' % (r['burst_ms'], r['p50_ms'], r['hits'], r['forwarded'], r['collapsed']))"; }
for round in $(seq "$ROUNDS"); do
  key="burst-$$-$round"
  printf 'round %d origin alone  ' "$round"; probe "http://127.0.0.1:19000/t/1k/$key-direct?d=$DELAY"
  printf 'round %d outpost cold  ' "$round"; probe "http://127.0.0.1:19414/t/1k/$key?d=$DELAY"
  printf 'round %d outpost warm  ' "$round"; probe "http://127.0.0.1:19414/t/1k/$key?d=$DELAY"
done
