#!/usr/bin/env bash
# How much of a large memory hit's CPU goes to the kernel looking up the pages of the body's
# memory file as sendfile reads it (issue 17, 100 KiB hits; README, Tuning), beside nginx's
# cache hit for the same object (its cache file where the kit puts it: NGINX_CACHE_DIR,
# /dev/shm by default). Each server in turn serves 64 connections of hot hits alone on
# CPU 0 (wrk and the kit's origin on CPU 1) while `perf record` samples it; prints the
# share of its samples in the page-cache read for splice (shmem's one lookup per page, or
# a file system's batched folio reads) and the shmem setting in force. With
# shmem_enabled=never the lookups were about 11-12% of the samples of both (tmpfs pages
# too), with within_size about 4% of outpost's. Stops what it starts.
#
#   benches/sendfile_lookups.sh             # BIN=target/release/outpost SIZE=100k
#
# SIZE (100k, 1m), KEYS (100), DURATION of the sampling (5 s). Needs perf and wrk.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$HERE/../../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/perf/target} RUN_DIR=${RUN_DIR:-/tmp/perf/run-lookups}
BIN=${BIN:-$HERE/../target/release/outpost}
DURATION=${DURATION:-5}; SIZE=${SIZE:-100k}; KEYS=${KEYS:-100}
ROUNDS=1
mkdir -p "$RUN_DIR"
. "$HERE/hot_rounds.sh"
OUT=$(mktemp -d)
extra_cleanup() { rm -rf "$OUT"; }
start_peers
export OUTPOST_LOG__ACCESS_LOG=false
taskset -c 0 "$BIN" serve --listen 127.0.0.1:19432 --origin http://127.0.0.1:19000 >/dev/null 2>&1 &
PIDS+=($!)
declare -A URL=([outpost]=http://127.0.0.1:19432 [nginx]=http://127.0.0.1:18080)
declare -A PID=([outpost]=$!)
for _ in $(seq 50); do curl -s -o /dev/null "${URL[outpost]}/b/1k/up" && break; sleep 0.1; done
PID[nginx]=$(pgrep -f "nginx: worker" | head -1)
prefix=/b/$SIZE/lookups

echo "shmem_enabled: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null || echo unknown)"
for t in outpost nginx; do
  # Stored, then hit once by a connection of its own (outpost prepares the answer).
  for _ in 1 2 3; do
    timeout 30 taskset -c 1 wrk -t1 -c8 -d2s -s "$KIT/keys.lua" "${URL[$t]}" -- hot "$prefix" "$KEYS" - >/dev/null 2>&1
  done
  timeout $((DURATION + 20)) taskset -c 1 wrk -t1 -c64 -d$((DURATION + 2))s -s "$KIT/keys.lua" \
    "${URL[$t]}" -- hot "$prefix" "$KEYS" - >"$OUT/$t.wrk" 2>&1 &
  load=$!
  sleep 1
  perf record -q -F 2000 -p "${PID[$t]}" -o "$OUT/$t.data" -- sleep "$DURATION" >/dev/null 2>&1
  wait "$load"
  perf report -i "$OUT/$t.data" --no-children --sort sym --stdio 2>/dev/null | awk -v t="$t" '
    /^ +[0-9.]+%/ {
      share = $1; sub(/%/, "", share); name = $3
      if (name ~ /^(filemap_get_entry|shmem_get_folio_gfp|shmem_file_splice_read|xas_load|xas_start|filemap_splice_read|filemap_get_read_batch|filemap_get_pages|next_uptodate_folio|splice_folio_into_pipe|folio_unlock|folio_mark_accessed|ext4_file_splice_read)$/) {
        lookup += share; detail = detail sprintf(" %s %.1f%%", name, share)
      }
    }
    END { printf "%-7s page lookups for sendfile: %5.1f%% of samples  (%s )\n", t, lookup, detail }'
  awk -v t="$t" '/Requests\/sec/ { printf "%-7s %s req/s while sampled\n", t, $2 }' "$OUT/$t.wrk"
done
