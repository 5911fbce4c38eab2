#!/usr/bin/env bash
# Disk-tier hits over TLS, where sendfile cannot be used and bodies are read into memory:
# for each build in turn (BUILDS, paths, alternated ROUNDS times)
#   - 1 MiB disk hits, 32 connections for 6 s (wrk on CPU 1 with the origin, outpost on
#     CPU 0): requests per second and per server CPU-second;
#   - 64 TLS clients that ask for an 8 MiB disk hit, read 1 KiB and stop reading: the heap
#     (RssAnon) they add, which is what each stalled client's read pieces pin.
#
#   BUILDS="/tmp/old/outpost target/release/outpost" ROUNDS=2 benches/tls_disk_hits.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ORIGIN_BIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
BUILDS=${BUILDS:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-1}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" \
  -days 1 -subj /CN=localhost 2>/dev/null
cat >"$WORK/hot.lua" <<'L'
counter = 0
request = function() counter = counter + 1; return wrk.format("GET", "/b/1m/h-" .. (counter % 16)) end
L
taskset -c 1 "$ORIGIN_BIN" --port 19000 --delay-ms 0 >/dev/null 2>&1 & PIDS+=($!)

start() { # start BIN MAX_IN_MEMORY: outpost with a fresh disk tier; sets P
  rm -rf "$WORK/cache"; mkdir -p "$WORK/cache"
  OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MAX_OBJECT_SIZE=$2 taskset -c 0 "$1" serve \
    --listen 127.0.0.1:19305 --origin http://127.0.0.1:19000 --cache-dir "$WORK/cache" \
    --tls-listen 127.0.0.1:19443 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
    >/dev/null 2>&1 & P=$!
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:19305/b/1k/up && return; sleep 0.1; done
}
load() {
  start "$1" 64KiB
  for i in $(seq 0 15); do
    curl -s -o /dev/null "http://127.0.0.1:19305/b/1m/h-$i"; curl -s -o /dev/null "http://127.0.0.1:19305/b/1m/h-$i"
  done
  local s0 s1 r
  s0=$(awk '{print $14+$15}' "/proc/$P/stat")
  r=$(taskset -c 1 wrk -t1 -c32 -d6s -s "$WORK/hot.lua" https://127.0.0.1:19443 | awk '/Requests\/sec/{print $2}')
  s1=$(awk '{print $14+$15}' "/proc/$P/stat")
  echo "$1: 1 MiB TLS disk hits $r req/s, $(python3 -c "print(round($r * 6 / max(1, $s1 - $s0) * 100))") per server CPU-s"
  kill "$P"; wait "$P" 2>/dev/null
}
stalled() {
  start "$1" 1MiB
  python3 - "$P" "$1" <<'PY'
import socket, ssl, sys, time, urllib.request
pid, build = sys.argv[1], sys.argv[2]
def anon():
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    return int(status["RssAnon"].split()[0]) / 1024
paths = [f"/b/8m/disk-{i}-{time.time()}" for i in range(8)]
for _ in range(2):  # fetched, then hit: each file verified and kept open
    for path in paths:
        urllib.request.urlopen(f"http://127.0.0.1:19305{path}").read()
before = anon()
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
held = []
for i in range(64):
    raw = socket.create_connection(("127.0.0.1", 19443))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(f"GET {paths[i % 8]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    tls.recv(1024)
    held.append(tls)
time.sleep(2)
print(f"{build}: 64 stalled TLS clients on 8 MiB disk hits added {anon() - before:.1f} MiB of heap")
PY
  kill "$P"; wait "$P" 2>/dev/null
}
for _ in $(seq "$ROUNDS"); do
  for build in $BUILDS; do load "$build"; stalled "$build"; done
done
