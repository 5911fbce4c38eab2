#!/usr/bin/env python3
"""Cross-check `outpost replay` against libCacheSim (PyPI `libcachesim`).

    pip install libcachesim
    cargo build --release
    python3 benches/libcachesim_check.py [--outpost target/release/outpost] \
        [--spec zipf:alpha=0.9,objects=1e5,requests=2e6,seed=1,size=logn:4096:1.5] \
        [--sizes 60MB,140MB,200MB]

1. outpost generates the workload and writes it as oracleGeneral and CSV;
2. both replay it: outpost (lru, tinylfu, wtinylfu: the memory tier's default) and
   libCacheSim (LRU, WTinyLFU, S3FIFO), miss ratio and byte miss ratio;
3. LRU must agree within 1 percentage point at every size (exit status 1 otherwise);
4. speed: requests per second of each on the same CSV trace, parsing included.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import libcachesim as lcs


def size_bytes(text):
    units = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
    lower = text.strip().lower()
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * factor)
    return int(lower)


def lcs_run(cls, path, trace_type, size, params=None):
    reader = lcs.TraceReader(path, trace_type, params) if params else lcs.TraceReader(path, trace_type)
    cache = cls(cache_size=size)
    started = time.perf_counter()
    miss, byte_miss = cache.process_trace(reader)
    return miss, byte_miss, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--outpost", default="target/release/outpost")
    parser.add_argument("--spec", default="zipf:alpha=0.9,objects=1e5,requests=2e6,seed=1,size=logn:4096:1.5")
    parser.add_argument("--sizes", default="60MB,140MB,200MB")
    args = parser.parse_args()
    sizes = [size_bytes(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="outpost-lcs-")
    oracle = os.path.join(work, "trace.oracleGeneral.bin")
    csv = os.path.join(work, "trace.csv")
    out_json = os.path.join(work, "outpost.json")
    subprocess.run(
        [args.outpost, "replay", "--synthetic", args.spec, "--policy", "lru,tinylfu,wtinylfu",
         "--sizes", ",".join(str(s) for s in sizes), "--write-oracle", oracle, "--write-csv", csv,
         "--json", out_json, "--quiet"],
        check=True, stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        ours = {(r["policy"], r["size_bytes"]): r for r in json.load(f)["results"]}

    print(f"trace: {args.spec}")
    print("miss ratio / byte miss ratio")
    print(f"{'size':>10} {'outpost lru':>15} {'lcs LRU':>15} {'diff pp':>8} {'outpost tinylfu':>15} "
          f"{'outpost wtinylfu':>17} {'lcs WTinyLFU':>15} {'lcs S3FIFO':>15}")
    worst = 0.0
    pair = lambda miss, byte_miss: f"{miss:.4f}/{byte_miss:.4f}"
    for size in sizes:
        lru = lcs_run(lcs.LRU, oracle, lcs.TraceType.ORACLE_GENERAL_TRACE, size)
        wtlfu = lcs_run(lcs.WTinyLFU, oracle, lcs.TraceType.ORACLE_GENERAL_TRACE, size)
        s3 = lcs_run(lcs.S3FIFO, oracle, lcs.TraceType.ORACLE_GENERAL_TRACE, size)
        ours_of = lambda policy: ours[(policy, size)]
        ours_pair = lambda policy: pair(ours_of(policy)["miss_ratio"], 1 - ours_of(policy)["byte_hit_ratio"])
        diff = abs(ours_of("lru")["miss_ratio"] - lru[0]) * 100
        worst = max(worst, diff)
        print(f"{size/2**20:>7.0f}MiB {ours_pair('lru'):>15} {pair(lru[0], lru[1]):>15} {diff:>8.3f} "
              f"{ours_pair('tinylfu'):>15} {ours_pair('wtinylfu'):>17} {pair(wtlfu[0], wtlfu[1]):>15} "
              f"{pair(s3[0], s3[1]):>15}")

    # Speed on the same CSV trace, one cache size, parsing included.
    params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",")
    params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
    _, _, lcs_seconds = lcs_run(lcs.LRU, csv, lcs.TraceType.CSV_TRACE, sizes[-1], params)
    started = time.perf_counter()
    subprocess.run([args.outpost, "replay", csv, "--format", "csv", "--policy", "lru",
                    "--sizes", str(sizes[-1]), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours_seconds = time.perf_counter() - started
    requests = sum(1 for _ in open(csv)) - 1
    print(f"speed on the CSV trace ({requests} requests, LRU, one size, parsing included): "
          f"outpost {requests/ours_seconds/1e6:.2f}M req/s, libCacheSim {requests/lcs_seconds/1e6:.2f}M req/s "
          f"({lcs_seconds/ours_seconds:.2f}x)")
    print(f"largest LRU difference: {worst:.3f} percentage points")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
