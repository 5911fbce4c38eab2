#!/usr/bin/env bash
# A cold burst that asks for an encoding: N clients at once for one new compressible object
# (a deploy's script bundle, every browser sending `Accept-Encoding: gzip, deflate, br,
# zstd`), through two outpost builds and nginx (the kit's proxy_cache, gzip level 1 on the
# way out), rounds interleaved. Each line: the time to the last response, p99, the server's
# CPU for the burst (user + system, from /proc) and, for outpost, the encoder runs it
# started (`outpost_encoder_runs_total`). The probe is `outpost load --burst` on CPU 1
# (connections opened first), the servers on CPU 0, perf-origin answering after DELAY ms.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost ROUNDS=3 N=200 SIZE=100k \
#     benches/encoded_burst.sh
#
# ENCODINGS is a comma list of Accept-Encoding values to try (`|` stands for `, `); NGINX=0
# leaves nginx out. CHUNKED=1 puts `chunked_origin.py` (bodies sent chunked, no
# Content-Length) in front of the two outposts instead of perf-origin, and leaves nginx out.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-encoded-burst}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-3}; N=${N:-200}; DELAY=${DELAY:-50}; SIZE=${SIZE:-100k}
ENCODINGS=${ENCODINGS:-gzip|deflate|br|zstd,gzip,identity}
NGINX=${NGINX:-1}
CHUNKED=${CHUNKED:-0}
[[ $CHUNKED == 1 ]] && NGINX=0
export ORIGIN_DELAY_MS=$DELAY
mkdir -p "$RUN_DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  [[ $NGINX == 1 ]] && "$KIT/servers.sh" stop nginx >/dev/null 2>&1
  "$KIT/servers.sh" stop origin >/dev/null 2>&1
}
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
ORIGIN=http://127.0.0.1:19000
if [[ $CHUNKED == 1 ]]; then
  DELAY_MS=$DELAY python3 "$HERE/chunked_origin.py" 19005 &
  PIDS+=($!); ORIGIN=http://127.0.0.1:19005
  wait_port 19005
else
  "$KIT/servers.sh" start origin >/dev/null
fi
[[ $NGINX == 1 ]] && "$KIT/servers.sh" start nginx >/dev/null
declare -A PORT ADMIN PID_OF
start_outpost() { # name binary port
  OUTPOST_LOG__ACCESS_LOG=false taskset -c 0 "$2" serve --listen "127.0.0.1:$3" \
    --admin "127.0.0.1:$(($3 + 1))" --origin "$ORIGIN" >/dev/null 2>&1 &
  PIDS+=($!); PID_OF[$1]=$!; PORT[$1]=$3; ADMIN[$1]=$(($3 + 1))
  wait_port "$3"
}
start_outpost before "$BEFORE" 19420
start_outpost after "$AFTER" 19422
NAMES=(before after)
if [[ $NGINX == 1 ]]; then NAMES+=(nginx); PORT[nginx]=18080; fi
cpu_ms() { # name: user + system CPU of the server's processes, in ms
  local pids
  if [[ $1 == nginx ]]; then pids=$("$KIT/servers.sh" pids nginx); else pids=${PID_OF[$1]}; fi
  local ticks=0
  for p in $pids; do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $((ticks * 1000 / $(getconf CLK_TCK)))
}
runs() { # name: encoder runs so far (outpost)
  [[ $1 == nginx ]] && { echo 0; return; }
  curl -s "http://127.0.0.1:${ADMIN[$1]}/metrics" | awk '/^outpost_encoder_runs_total/ {print $2}'
}
IFS=, read -r -a encodings <<<"$ENCODINGS"
for round in $(seq "$ROUNDS"); do
  for accept in "${encodings[@]}"; do
    accept=${accept//|/, }
    for name in "${NAMES[@]}"; do
      key="eb-$$-$round-${accept//[ ,]/}-$name"
      cpu0=$(cpu_ms "$name"); runs0=$(runs "$name")
      taskset -c 1 "$AFTER" load --burst "$N" --duration 60s -H "Accept-Encoding: $accept" \
        --json "$RUN_DIR/b.json" "http://127.0.0.1:${PORT[$name]}/t/$SIZE/$key" >/dev/null 2>&1
      cpu1=$(cpu_ms "$name"); runs1=$(runs "$name")
      python3 - "$RUN_DIR/b.json" "$round" "$accept" "$name" $((cpu1 - cpu0)) $((runs1 - runs0)) <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
round_, accept, name, cpu, runs = sys.argv[2:7]
print("round %s  %-24s %-7s burst %7.1f ms  p99 %7.1f ms  cpu %5s ms  encoder runs %4s  completed %d/%d"
      % (round_, accept, name, r["burst_ms"] or -1, r["p99_ms"] or -1, cpu,
         runs if name != "nginx" else "-", r["completed"], r["requests"]))
EOF
    done
  done
done
