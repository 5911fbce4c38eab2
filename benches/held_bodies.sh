#!/usr/bin/env bash
# Memory held for bodies read whole before they go on (issue 17, target 6), two builds side
# by side, each sampled by held_memory.py while many clients at once make it hold one:
#
#   ranges     STALLED clients (64) each ask for a distinct PIECE_MIB MiB range (6) past
#              `cache.range_fill_max_offset` of one of four 10 MiB objects, read 1 KiB and
#              hold on for HOLD_S seconds (6): a forwarded 206 is read whole to be kept as a
#              partial entry, and what a slow client has not read yet waits in memory too.
#   cancelled  N curl downloads (32) of distinct 40 MiB objects (1 MiB every 20 ms)
#              stopped after STOP_S seconds (1.5), disk tier: what arrived of each is read
#              back from its file to be kept as a prefix. Sampled until HOLD_S seconds (4)
#              after the cancel. (A faster origin makes the downloads' own memory, which
#              varies from run to run by more than the read-backs, the larger part.)
#   spilled    STALLED clients (64) each ask for a distinct SIZE_MIB (40) MiB object, disk tier, read
#              1 KiB and hold on for HOLD_S seconds (6): each fill streams to disk, and a
#              stalled client goes on from the file; what the fill reads next is held for
#              no reader unless dropped.
#   artifacts  N curl downloads (16) at once of distinct 40 MiB Debian `by-hash` files
#              (whose path names their SHA-256) through the package mirror: each is held
#              whole to be checked, up to `mirror.hold_max` (64 MiB).
#   packages   N curl downloads (4) at once of distinct Debian `Packages.xz` indexes through
#              the package mirror, each a synthetic index of PACKAGES (60000) paragraphs
#              (about 50 MB of text, 6 MB of xz, as Debian's main index): each is read for
#              its `.deb` digests, which held the index and its decoded text whole. The
#              outcome checks that the digests were recorded: a pool file they list, which
#              the origin answers with other bytes, is refused.
#   documents  N curl downloads (4) at once of distinct npm package documents through the
#              package mirror, each VERSIONS (20000) versions, about 14 MB of JSON, as
#              large as the registry's largest full documents: each is read whole to have
#              its tarball links rewritten. The outcome checks the links were rewritten.
#              GZIPPED=1 serves them gzip-coded (2 MB each), as npm's registry does.
#
# The origin is `trickle_origin.py`. Prints each build's peak RSS as a ratio to its memory
# capacity (MEM, default 128MiB), and what it kept or whether every file arrived whole.
# Loopback only; stops what it started.
#
#   BEFORE=/path/to/old/outpost AFTER=target/release/outpost benches/held_bodies.sh ranges
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SCENARIO=${1:?ranges, cancelled, spilled, artifacts, packages or documents}
BEFORE=${BEFORE:?path of the build to compare against}
AFTER=${AFTER:-$HERE/../target/release/outpost}
MEM=${MEM:-128MiB}
export STEP_KIB=1024
case $SCENARIO in
  ranges) export SIZE_MIB=10 INTERVAL_MS=1; N=${STALLED:-64}; HOLD_S=${HOLD_S:-6} ;;
  cancelled) export SIZE_MIB=40 INTERVAL_MS=20; N=${N:-32}; HOLD_S=${HOLD_S:-4} ;;
  spilled) export SIZE_MIB=${SIZE_MIB:-40} INTERVAL_MS=5; N=${STALLED:-64}; HOLD_S=${HOLD_S:-6} ;;
  artifacts) export SIZE_MIB=40 INTERVAL_MS=10; N=${N:-16}; HOLD_S=0 ;;
  packages) export SIZE_MIB=1 INTERVAL_MS=2 STEP_KIB=256; N=${N:-4}; HOLD_S=0 ;;
  documents) export SIZE_MIB=1 INTERVAL_MS=2 STEP_KIB=256 CONTENT_TYPE=application/json; N=${N:-4}; HOLD_S=0 ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; wait; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }
if [[ $SCENARIO == packages ]]; then
  python3 - "$WORK/Packages.xz" "${PACKAGES:-60000}" <<'PY'
import lzma, random, sys
out, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(17)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
         for _ in range(5000)]
with lzma.open(out, "wt", preset=6) as index:
    for i in range(count):
        lines = [" " + " ".join(rng.choices(words, k=12)) for _ in range(rng.randint(2, 12))]
        index.write(f"Package: pkg{i}\nVersion: 1.{i}\nArchitecture: amd64\n"
                    f"Depends: libc6 (>= 2.36), pkg{rng.randrange(count)}\n"
                    f"Description: {' '.join(rng.choices(words, k=6))}\n" + "\n".join(lines) +
                    f"\nFilename: pool/main/p/pkg{i}/pkg{i}_1.{i}_amd64.deb\nSize: {rng.randrange(1 << 20)}\n"
                    f"SHA256: {rng.getrandbits(256):064x}\n\n")
PY
  export BODY_FILE=$WORK/Packages.xz
elif [[ $SCENARIO == documents ]]; then
  python3 - "$WORK/packument.json" "${VERSIONS:-20000}" <<'PY'
import json, random, sys
out, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(17)
versions = {}
for i in range(count):
    v = f"1.{i // 100}.{i % 100}"
    versions[v] = {
        "name": "big", "version": v, "description": "a package with many versions " * 3,
        "dependencies": {f"dep{rng.randrange(500)}": f"^{rng.randrange(9)}.0.0" for _ in range(8)},
        "scripts": {"test": "node test.js", "build": "tsc -p ."},
        "maintainers": [{"name": "someone", "email": "someone@example.org"}],
        "dist": {"tarball": f"http://127.0.0.1:19041/big/-/big-{v}.tgz",
                 "shasum": f"{rng.getrandbits(160):040x}",
                 "integrity": "sha512-" + "A" * 86 + "=="},
    }
with open(out, "w") as f:
    json.dump({"name": "big", "dist-tags": {"latest": v}, "versions": versions}, f)
PY
  export BODY_FILE=$WORK/packument.json
  if [[ -n ${GZIPPED:-} ]]; then
    gzip -6 -n "$WORK/packument.json"
    export BODY_FILE=$WORK/packument.json.gz CONTENT_ENCODING=gzip
  fi
fi
python3 "$HERE/trickle_origin.py" 19041 >/dev/null 2>&1 & PIDS+=($!)
wait_port 19041
cap=$(python3 -c "
s='$MEM'.lower().replace('ib','').replace('b','')
m={'k':1<<10,'m':1<<20,'g':1<<30}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))")
printf '[[mirror.registries]]\nname = "debian"\nkind = "debian"\npath = "/debian/"\nupstream = "http://127.0.0.1:19041"\n' \
  >"$WORK/mirror.toml"
printf '[[mirror.registries]]\nname = "npm"\nkind = "npm"\npath = "/npm/"\nupstream = "http://127.0.0.1:19041"\n' \
  >>"$WORK/mirror.toml"
digest=$(python3 -c "
import hashlib, os
print(hashlib.sha256(bytes(i % 251 for i in range(int(os.environ['SIZE_MIB']) << 20))).hexdigest())")
declare -A PORT=([before]=19042 [after]=19043) ADMIN=([before]=19044 [after]=19045)
for name in before after; do
  bin=$BEFORE; [[ $name == after ]] && bin=$AFTER
  extra=()
  [[ $SCENARIO == cancelled || $SCENARIO == spilled ]] && extra=(--cache-dir "$WORK/cache-$name")
  [[ $SCENARIO == artifacts || $SCENARIO == packages || $SCENARIO == documents ]] &&
    extra=(--config "$WORK/mirror.toml")
  OUTPOST_LOG__ACCESS_LOG=false OUTPOST_CACHE__MEMORY_CAPACITY=$MEM "$bin" serve \
    --listen "127.0.0.1:${PORT[$name]}" --admin "127.0.0.1:${ADMIN[$name]}" \
    --origin http://127.0.0.1:19041 "${extra[@]}" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  wait_port "${PORT[$name]}"
done
stalled() { # stalled PORT: clients that read 1 KiB and hold on (ranges: each a range)
  python3 - "$1" "$N" "${PIECE_MIB:-6}" "$HOLD_S" "$SCENARIO" "$$" <<'PY'
import socket, sys, time
port, stalled, piece, hold, run = (int(a) for a in sys.argv[1:5] + sys.argv[6:7])
ranges = sys.argv[5] == "ranges"
held = []
for i in range(stalled):
    first = (1 << 20) + i * 50 * 1024
    last = first + (piece << 20) - 1
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if ranges:
        s.sendall(f"GET /obj-{i % 4} HTTP/1.1\r\nHost: x\r\nRange: bytes={first}-{last}\r\n\r\n".encode())
    else:
        s.sendall(f"GET /spilled-{i}-{run}-{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.recv(1024)
    held.append(s)
time.sleep(hold)
PY
}
downloads() { # downloads PORT: N curl downloads at once, to the end or stopped
  local pids=() i
  for i in $(seq "$N"); do
    if [[ $SCENARIO == cancelled ]]; then
      curl -s --max-time "${STOP_S:-1.5}" -o /dev/null "http://127.0.0.1:$1/cancel-$i-$$" &
    elif [[ $SCENARIO == documents ]]; then
      curl -s -o "$WORK/file-$i" -w '%{time_total}\n' -H 'Accept: application/json' \
        "http://127.0.0.1:$1/npm/big-$i-$$" >>"$WORK/times" &
    elif [[ $SCENARIO == packages ]]; then
      curl -s -o "$WORK/file-$i" -w '%{time_total}\n' \
        "http://127.0.0.1:$1/debian/dists/d$i-$$/main/binary-amd64/Packages.xz" >>"$WORK/times" &
    else
      curl -s -o "$WORK/file-$i" "http://127.0.0.1:$1/debian/dists/d$i-$$/main/by-hash/SHA256/$digest" &
    fi
    pids+=($!)
  done
  wait "${pids[@]}"
  sleep "$HOLD_S"
}
for name in before after; do
  pid_var=PID_$name
  python3 "$HERE/held_memory.py" "${!pid_var}" >"$WORK/$name.mem" & sampler=$!
  if [[ $SCENARIO == ranges || $SCENARIO == spilled ]]; then stalled "${PORT[$name]}"; else downloads "${PORT[$name]}"; fi
  kill "$sampler"; wait "$sampler" 2>/dev/null
  if [[ $SCENARIO == packages ]]; then
    whole=$(for i in $(seq "$N"); do cmp -s "$WORK/file-$i" "$BODY_FILE" && echo; done | wc -l)
    refused=$(curl -s -o /dev/null -w '%{http_code}' \
      "http://127.0.0.1:${PORT[$name]}/debian/pool/main/p/pkg7/pkg7_1.7_amd64.deb")
    slowest=$(sort -n "$WORK/times" | tail -1)
    outcome="$whole of $N indexes whole, the slowest in ${slowest}s; a listed pool file with other bytes: $refused (502: digests recorded)"
    rm -f "$WORK"/file-* "$WORK/times"
  elif [[ $SCENARIO == documents ]]; then
    rewritten=$(for i in $(seq "$N"); do python3 -c '
import json, sys
versions = json.load(open(sys.argv[1]))["versions"].values()
print(all(v["dist"]["tarball"].startswith(sys.argv[2]) for v in versions))' \
      "$WORK/file-$i" "http://127.0.0.1:${PORT[$name]}/npm/big/-/"; done | grep -c True)
    slowest=$(sort -n "$WORK/times" | tail -1)
    outcome="$rewritten of $N documents with every link rewritten, the slowest in ${slowest}s"
    rm -f "$WORK"/file-* "$WORK/times"
  elif [[ $SCENARIO == artifacts ]]; then
    outcome="$(for i in $(seq "$N"); do sha256sum "$WORK/file-$i"; done | grep -c "^$digest ") of $N files whole"
    rm -f "$WORK"/file-*
  else
    outcome="partial store: $(curl -s "http://127.0.0.1:${ADMIN[$name]}/status.json" \
      | python3 -c 'import json,sys; p=json.load(sys.stdin)["tiers"]["partial"]; print(p["entries"], "entries,", round(p["bytes"] / 1048576, 1), "MiB")')"
  fi
  awk -v cap="$cap" -v name="$name" -v outcome="$outcome" '
    { if ($1 > r) r = $1; last = $1 }
    END { printf "%-6s peak RSS %6.1f MiB (%.2fx capacity), at the end %6.1f MiB; %s\n",
          name, r / 1048576, r / cap, last / 1048576, outcome }' "$WORK/$name.mem"
done
