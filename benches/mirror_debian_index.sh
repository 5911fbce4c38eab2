#!/usr/bin/env bash
# What a Debian index miss costs the mirror: real apt-get update of one suite through a fresh
# outpost (config/mirror.toml, the real archive, so it needs the network), while a client
# fetches a stored .deb again and again. Per build and round it prints apt's wall time, how
# long the by-hash indexes took to pass (read whole, decoded and their digests recorded
# before they go on), and the slowest of the concurrent hits: a runtime thread that
# decodes or records stalls them. outpost runs on one CPU (`taskset -c 0`, so its
# current-thread runtime), as a small mirror would.
#
#   BUILDS="old=path/to/outpost new=target/release/outpost" ROUNDS=3 benches/mirror_debian_index.sh
#
# SUITE (default "bookworm main") and CA_FILE (default the system's store, for hosts behind
# a TLS-inspecting proxy) may be set. Loopback listeners only; stops what it started.
set -u
BUILDS=${BUILDS:-"outpost=$(dirname "$0")/../target/release/outpost"}
ROUNDS=${ROUNDS:-2}
SUITE=${SUITE:-"bookworm main"}
CA_FILE=${CA_FILE:-/etc/ssl/certs/ca-certificates.crt}
CONFIG=$(cd "$(dirname "$0")/.." && pwd)/config/mirror.toml
PORT=${PORT:-18690}; ADMIN=$((PORT + 1))
WORK=$(mktemp -d)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
echo "deb http://127.0.0.1:$PORT/debian $SUITE" >"$WORK/sources.list"
APT=(-o "Dir::Etc::sourcelist=$WORK/sources.list" -o Dir::Etc::sourceparts=-
  -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache::Archives=$WORK/archives"
  -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root)
DEB=http://127.0.0.1:$PORT/debian/pool/main/h/hello/hello_2.10-3_amd64.deb
for round in $(seq "$ROUNDS"); do
  for build in $BUILDS; do
    name=${build%%=*}; bin=${build#*=}
    rm -rf "$WORK/cache" "$WORK/lists"; mkdir -p "$WORK/cache" "$WORK/lists/partial" "$WORK/archives/partial"
    OUTPOST_UPSTREAM__CA_FILE=$CA_FILE taskset -c 0 "$bin" serve --config "$CONFIG" \
      --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --cache-dir "$WORK/cache" >"$WORK/log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ADMIN/" && break; sleep 0.1; done
    curl -s -o /dev/null "$DEB"
    start=$(date +%s.%N)
    apt-get "${APT[@]}" update >/dev/null 2>&1 &
    apt=$!
    : >"$WORK/hits"
    while kill -0 "$apt" 2>/dev/null; do
      curl -s -o /dev/null -w "%{time_total}\n" "$DEB" >>"$WORK/hits"
    done
    wait "$apt"; status=$?
    end=$(date +%s.%N)
    kill "$PID"; wait "$PID" 2>/dev/null; PID=
    python3 - "$name" "$round" "$start" "$end" "$status" "$WORK" <<'PY'
import json, sys
name, rnd, start, end, status, work = sys.argv[1:]
indexes = []
for line in open(f"{work}/log"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if "/by-hash/" in entry.get("target", ""):
        indexes.append(f"{entry['bytes'] / 1e6:.1f}MB:{entry['duration_ms']:.0f}ms")
hits = sorted((float(t) for t in open(f"{work}/hits") if t.strip()), reverse=True)
slowest = " ".join(f"{t * 1000:.0f}" for t in hits[:3])
print(f"{name} round {rnd}: apt {float(end) - float(start):.2f}s (exit {status}), "
      f"indexes {' '.join(indexes)}, {len(hits)} hits, slowest {slowest} ms")
PY
  done
done
