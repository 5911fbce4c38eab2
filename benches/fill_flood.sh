#!/usr/bin/env bash
# The aborted-fill flood of issue 11: N clients each ask for a distinct cache-busting URL of
# a large, slow, storable object and hang up as soon as the response head arrives. Reports,
# per outpost binary, the most origin connections open at once, the body bytes the origin
# had to send, and outpost's peak RSS. Everything is on 127.0.0.1 and bounded in time.
#
# usage: benches/fill_flood.sh BIN [BIN ...]      (release builds of outpost, run in turn)
# env:   CLIENTS=200  SIZE_MIB=16  SECONDS_PER_OBJECT=5  WATCH=8 (s sampled after the flood)
#        EXTRA_ARGS (added to `outpost serve`)
set -euo pipefail
CLIENTS=${CLIENTS:-200}; SIZE_MIB=${SIZE_MIB:-16}; SECONDS_PER_OBJECT=${SECONDS_PER_OBJECT:-5}
WATCH=${WATCH:-8}
ORIGIN_PORT=${ORIGIN_PORT:-19500}; PROXY_PORT=${PROXY_PORT:-19501}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/origin.py" <<'PY'
# A slow origin: every GET gets SIZE bytes, sent in 64 KiB pieces spread over SECONDS.
# Writes "open peak sent" to STATS whenever a connection opens or closes.
import asyncio, os, sys
port, size, seconds, stats = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
piece = 64 << 10
state = {"open": 0, "peak": 0, "sent": 0}
def record():
    with open(stats + ".tmp", "w") as f:
        f.write(f'{state["open"]} {state["peak"]} {state["sent"]}\n')
    os.replace(stats + ".tmp", stats)
async def serve(reader, writer):
    state["open"] += 1; state["peak"] = max(state["peak"], state["open"]); record()
    closed = asyncio.Event()
    async def watch_close():
        # The proxy closing its side (FIN) is what "connection closed" means here; a
        # write would only notice it later.
        await reader.read()
        closed.set()
    try:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        watcher = asyncio.ensure_future(watch_close())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: max-age=600\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n" % size)
        pause = seconds / (size / piece)
        block = b"x" * piece
        for _ in range(size // piece):
            if closed.is_set():
                break
            writer.write(block); await writer.drain(); state["sent"] += piece
            try:
                await asyncio.wait_for(closed.wait(), pause)
            except asyncio.TimeoutError:
                pass
        watcher.cancel()
    except (ConnectionError, OSError):
        pass
    finally:
        state["open"] -= 1; record(); writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    record()
    async with server: await server.serve_forever()
asyncio.run(main())
PY

cat >"$WORK/flood.py" <<'PY'
# N clients at once: GET /big?bust=i, read the head, hang up. Bounded by a timeout.
import asyncio, sys
port, clients = int(sys.argv[1]), int(sys.argv[2])
async def one(i):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        writer.write(f"GET /big?bust={i} HTTP/1.1\r\nHost: flood\r\n\r\n".encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        writer.close()
        return 1
    except Exception:
        return 0
async def main():
    done = await asyncio.gather(*(one(i) for i in range(clients)))
    print(sum(done))
asyncio.run(main())
PY

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# Outpost's own sockets to the origin, as the kernel has them (sampled).
proxy_conns() { ss -Htn state established "( dport = :$ORIGIN_PORT )" 2>/dev/null | wc -l; }

printf '| binary | heads received | peak origin connections (origin saw / outpost held, sampled) | origin body MiB sent | peak RSS MiB | RSS MiB after |\n|---|---|---|---|---|---|\n'
for bin in "$@"; do
  python3 "$WORK/origin.py" "$ORIGIN_PORT" $((SIZE_MIB << 20)) "$SECONDS_PER_OBJECT" "$WORK/stats" &
  origin=$!; pids+=("$origin"); wait_port "$ORIGIN_PORT"
  # shellcheck disable=SC2086
  OUTPOST_LOG__ACCESS_LOG=false "$bin" serve --listen "127.0.0.1:$PROXY_PORT" \
    --origin "http://127.0.0.1:$ORIGIN_PORT" ${EXTRA_ARGS:-} >"$WORK/outpost.log" 2>&1 &
  proxy=$!; pids+=("$proxy"); wait_port "$PROXY_PORT"
  peak_rss=0; peak_held=0
  timeout 60 python3 "$WORK/flood.py" "$PROXY_PORT" "$CLIENTS" >"$WORK/heads" &
  flood=$!
  # Sample while the flood runs and for WATCH seconds after it.
  end=$((SECONDS + 60))
  while kill -0 "$flood" 2>/dev/null && [[ $SECONDS -lt $end ]]; do
    r=$(rss_kib "$proxy"); ((r > peak_rss)) && peak_rss=$r
    c=$(proxy_conns); ((c > peak_held)) && peak_held=$c
  done
  for _ in $(seq $((WATCH * 10))); do r=$(rss_kib "$proxy"); ((r > peak_rss)) && peak_rss=$r; sleep 0.1; done
  read -r _open peak sent <"$WORK/stats"
  printf '| %s%s | %s | %s / %s | %d | %d | %d |\n' "$bin" "${LABEL:+ ($LABEL)}" \
    "$(cat "$WORK/heads")" "$peak" "$peak_held" $((sent >> 20)) $((peak_rss / 1024)) $(($(rss_kib "$proxy") / 1024))
  kill "$proxy" "$origin" 2>/dev/null || true; wait "$proxy" "$origin" 2>/dev/null || true
  pids=()
done
