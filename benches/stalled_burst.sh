#!/usr/bin/env bash
# A burst behind one client that stops reading: STALLED clients (1) and N normal ones (8)
# ask at once for one large object that streams through outpost unstored (chunked, so it
# outgrows cache.max_object_size as it arrives; the origin sends a strong ETag and honours
# Range with If-Range, as a static file server does). The stalled clients read 1 KiB and
# then nothing until the normal ones are done. Per build and round: when the last normal
# client finished, what the stalled clients then received (complete or aborted), and how
# many requests the origin saw. The send timeout is lowered to SEND_TIMEOUT (10s) so a
# build that waits for the stalled client ends a round in reasonable time. RESUMABLE=0 makes
# the origin send no ETag (and ignore Range), so the rest cannot be asked for again: the
# stalled client can then only be waited for or cut off.
#
#   BUILDS="old/outpost new/outpost" ROUNDS=3 N=8 SIZE_MIB=32 benches/stalled_burst.sh
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BUILDS=${BUILDS:-$HERE/../target/release/outpost}
ROUNDS=${ROUNDS:-3}; N=${N:-8}; STALLED=${STALLED:-1}; SIZE_MIB=${SIZE_MIB:-32}
SEND_TIMEOUT=${SEND_TIMEOUT:-10s}; RESUMABLE=${RESUMABLE:-1}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The origin: every path is SIZE_MIB MiB of a pattern, chunked, ETag "v1"; `bytes=N-` with a
# matching (or no) If-Range gets the 206 of the rest at once, anything else the 200 after
# 0.3 s. Requests are counted in a file.
cat >"$WORK/origin.py" <<'PY'
import http.server, socketserver, sys, time
size = int(sys.argv[2]) << 20
block = bytes(i % 251 for i in range(1 << 16))
count_file = sys.argv[3]
resumable = sys.argv[4] == "1"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        with open(count_file, "a") as f: f.write(self.headers.get("Range", "-") + "\n")
        first, chunked = 0, True
        r, cond = self.headers.get("Range"), self.headers.get("If-Range")
        if resumable and r and r.startswith("bytes=") and r.endswith("-") and cond in (None, '"v1"'):
            first, chunked = int(r[6:-1]), False
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - first))
        else:
            time.sleep(0.3)  # a slow origin's first byte: the whole burst joins one fetch
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
        if resumable: self.send_header("ETag", '"v1"')
        self.send_header("Cache-Control", "max-age=60")
        self.end_headers()
        at = first
        try:
            while at < size:
                piece = block[at % len(block):][: min(size - at, 1 << 16)]
                if chunked: self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else: self.wfile.write(piece)
                at += len(piece)
            if chunked: self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY

# The burst: stalled clients first (each on a socket with a 4 KiB receive buffer), then the
# normal ones; prints seconds to the last normal client's end, then per stalled client the
# body bytes it got and whether its chunked body ended cleanly.
cat >"$WORK/burst.py" <<'PY'
import socket, sys, threading, time
port, path, n, stalled, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) << 20
request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
def connect(small):
    s = socket.socket()
    if small: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port)); s.sendall(request); return s
def read_all(s):
    data = bytearray()
    while True:
        try: got = s.recv(1 << 20)
        except OSError: break
        if not got: break
        data += got
    return bytes(data)
def dechunk(raw):  # (body bytes, whether the last chunk arrived); by index, not by copying
    at, got = raw.find(b"\r\n\r\n") + 4, 0
    while True:
        line_end = raw.find(b"\r\n", at)
        if line_end < 0: return got, False
        size = int(raw[at:line_end], 16)
        if size == 0: return got, True
        at = line_end + 2
        got += min(size, len(raw) - at)
        if len(raw) < at + size + 2: return got, False
        at += size + 2
held = [connect(True) for _ in range(stalled)]
start = time.time(); ends = []
def normal():
    raw = read_all(connect(False)); got, whole = dechunk(raw)
    ends.append((time.time() - start, got == size and whole))
threads = [threading.Thread(target=normal) for _ in range(n)]
for t in threads: t.start()
# Only then the stalled clients' first KiB: the head comes after the origin's delay, and
# the others must have asked before it, to share the fetch.
firsts = [s.recv(1024) for s in held]
for t in threads: t.join()
print("normal clients done in %.2f s (%d of %d complete)" % (max(e[0] for e in ends), sum(e[1] for e in ends), n))
for s, first in zip(held, firsts):
    got, whole = dechunk(first + read_all(s))
    print("  stalled client then got %d of %d bytes, %s" % (got, size, "complete" if whole and got == size else "aborted"))
PY

port=19511; origin_port=19611
for round in $(seq "$ROUNDS"); do
  for bin in $BUILDS; do
    : >"$WORK/count"
    python3 "$WORK/origin.py" $origin_port "$SIZE_MIB" "$WORK/count" "$RESUMABLE" & opid=$!; PIDS+=($opid)
    OUTPOST_LOG__ACCESS_LOG=false OUTPOST_SERVER__SEND_TIMEOUT=$SEND_TIMEOUT \
      OUTPOST_CACHE__MAX_OBJECT_SIZE=1MiB "$bin" serve --listen 127.0.0.1:$port \
      --origin http://127.0.0.1:$origin_port >"$WORK/log" 2>&1 & ppid=$!; PIDS+=($ppid)
    for _ in $(seq 100); do
      [[ $(curl -s -o /dev/null -w '%{http_code}' -r 0-0 "http://127.0.0.1:$port/warmup") == 206 ]] && break
      sleep 0.05
    done
    : >"$WORK/count"
    printf 'round %d %s: ' "$round" "$bin"
    python3 "$WORK/burst.py" $port "/big-$round-$$" "$N" "$STALLED" "$SIZE_MIB"
    echo "  origin requests: $(wc -l <"$WORK/count") ($(grep -c '^bytes=' "$WORK/count") ranged)"
    kill "$ppid" "$opid" 2>/dev/null; wait "$ppid" "$opid" 2>/dev/null
    port=$((port + 1)); origin_port=$((origin_port + 1))
  done
done
