#!/usr/bin/env bash
# TLS hits and handshakes: outpost against nginx terminating TLS with the same certificate
# (ECDSA P-256) and TLS 1.3, both caching in front of ../shared/bench's perf-origin.
# Interleaved rounds; each server pinned to CPU 0, wrk on CPU 1; server CPU from /proc.
#
# usage: benches/tls.sh    env: OUTPOST_BIN, ORIGIN_BIN (perf-origin), ROUNDS (4), DURATION (5)
#   hits:       1 KiB cached objects, 32 keep-alive HTTP/1.1 connections
#   handshakes: the same with Connection: close (a full TLS handshake per request)
#   h2 hits:    the same objects over HTTP/2 (h2load: 32 connections x 8 streams), if h2load
#               is installed (Debian's nghttp2-client)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${OUTPOST_BIN:-target/release/outpost}
ORIGIN=${ORIGIN_BIN:-/tmp/perf/target/release/perf-origin}
ROUNDS=${ROUNDS:-4}; DURATION=${DURATION:-5}
WORK=$(mktemp -d); PIDS=()
chmod 755 "$WORK"  # nginx's workers run as nobody
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/key.pem" \
  -out "$WORK/cert.pem" -subj /CN=localhost -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
chmod 644 "$WORK"/*.pem

taskset -c 1 "$ORIGIN" --port 19300 --delay-ms 0 >"$WORK/origin.log" 2>&1 & PIDS+=($!); wait_port 19300

mkdir -p "$WORK/cache" "$WORK/body"; chown -R nobody:nogroup "$WORK/cache" "$WORK/body" 2>/dev/null || true
cat >"$WORK/nginx.conf" <<NGINX
user nobody nogroup;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 16384; use epoll; }
http {
  access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000; server_tokens off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/cache/tmp 1 2;
  proxy_cache_path $WORK/cache/c levels=1:2 keys_zone=edge:64m max_size=1g inactive=1h use_temp_path=off;
  upstream origin { server 127.0.0.1:19300; keepalive 256; }
  server {
    listen 127.0.0.1:19443 ssl http2 reuseport backlog=4096;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache edge; proxy_cache_valid 200 1h; proxy_cache_lock on;
    }
  }
}
NGINX
taskset -c 0 nginx -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 & NGINX=$!; PIDS+=($NGINX)
OUTPOST_LOG__ACCESS_LOG=false taskset -c 0 "$BIN" serve --listen 127.0.0.1:19401 --origin http://127.0.0.1:19300 \
  --tls-listen 127.0.0.1:19444 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" >"$WORK/outpost.log" 2>&1 &
OUTPOST=$!; PIDS+=($OUTPOST)
wait_port 19443; wait_port 19444

cat >"$WORK/keys.lua" <<'LUA'
local n = 0
local close = os.getenv("CLOSE") == "1"
request = function()
  n = n + 1
  local headers = close and { ["Connection"] = "close" } or {}
  return wrk.format("GET", "/b/1k/k" .. (n % 100 + 1), headers)
end
LUA
for port in 19443 19444; do for i in $(seq 1 100); do curl -sk -o /dev/null "https://localhost:$port/b/1k/k$i"; done; done

ticks() { local t=0; for p in $(pgrep -P "$1") "$1"; do t=$((t + $(awk '{sub(/^.*\) /,""); print $12+$13}' /proc/$p/stat))); done; echo $t; }
measure() { # name pid port close
  local t0 t1 out reqs
  t0=$(ticks "$2")
  out=$(CLOSE=$4 taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" -s "$WORK/keys.lua" "https://localhost:$3/" 2>&1)
  t1=$(ticks "$2")
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  python3 -c "
cpu = ($t1 - $t0) / 100
print('%-8s %-10s %8.0f req/s  %8.0f per server CPU-s' % ('$1', 'handshakes' if '$4' == '1' else 'hits', $reqs / $DURATION, $reqs / max(cpu, 0.01)))"
}
measure_h2() { # name pid port
  local t0 t1 out reqs
  t0=$(ticks "$2")
  out=$(taskset -c 1 h2load -c32 -m8 -D "$DURATION" -i "$WORK/uris-$3" 2>&1)
  t1=$(ticks "$2")
  reqs=$(echo "$out" | awk '/^requests:/{print $8}')
  python3 -c "
cpu = ($t1 - $t0) / 100
print('%-8s %-10s %8.0f req/s  %8.0f per server CPU-s' % ('$1', 'h2 hits', $reqs / $DURATION, $reqs / max(cpu, 0.01)))"
}
for port in 19443 19444; do
  for i in $(seq 1 100); do echo "https://localhost:$port/b/1k/k$i"; done >"$WORK/uris-$port"
done
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  measure nginx "$NGINX" 19443 0; measure outpost "$OUTPOST" 19444 0
  measure nginx "$NGINX" 19443 1; measure outpost "$OUTPOST" 19444 1
  if command -v h2load >/dev/null; then
    measure_h2 nginx "$NGINX" 19443; measure_h2 outpost "$OUTPOST" 19444
  fi
done
