#!/usr/bin/env python3
"""Cross-check `outpost replay` against libCacheSim (PyPI `libcachesim`).

    pip install libcachesim
    cargo build --release
    python3 benches/libcachesim_check.py [--outpost target/release/outpost] \
        [--spec zipf:alpha=0.9,objects=1e5,requests=2e6,seed=1,size=100-8000] \
        [--sizes 20MB,50MB,100MB,200MB]

1. outpost generates the workload and writes it as oracleGeneral and CSV;
2. both replay it: outpost (lru, tinylfu) and libCacheSim (LRU, WTinyLFU, S3FIFO);
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
    parser.add_argument("--spec", default="zipf:alpha=0.9,objects=1e5,requests=2e6,seed=1,size=100-8000")
    parser.add_argument("--sizes", default="20MB,50MB,100MB,200MB")
    args = parser.parse_args()
    sizes = [size_bytes(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="outpost-lcs-")
    oracle = os.path.join(work, "trace.oracleGeneral.bin")
    csv = os.path.join(work, "trace.csv")
    out_json = os.path.join(work, "outpost.json")
    subprocess.run(
        [args.outpost, "replay", "--synthetic", args.spec, "--policy", "lru,tinylfu",
         "--sizes", ",".join(str(s) for s in sizes), "--write-oracle", oracle, "--write-csv", csv,
         "--json", out_json, "--quiet"],
        check=True, stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        ours = {(r["policy"], r["size_bytes"]): r for r in json.load(f)["results"]}

    print(f"trace: {args.spec}")
    print(f"{'size':>10} {'outpost lru':>12} {'lcs LRU':>9} {'diff pp':>8} {'outpost tinylfu':>16} {'lcs WTinyLFU':>13} {'lcs S3FIFO':>11}")
    worst = 0.0
    for size in sizes:
        lru_miss, _, _ = lcs_run(lcs.LRU, oracle, lcs.TraceType.ORACLE_GENERAL_TRACE, size)
        wtlfu_miss, _, _ = lcs_run(lcs.WTinyLFU, oracle, lcs.TraceType.ORACLE_GENERAL_TRACE, size)
        s3_miss, _, _ = lcs_run(lcs.S3FIFO, oracle, lcs.TraceType.ORACLE_GENERAL_TRACE, size)
        our_lru = ours[("lru", size)]["miss_ratio"]
        our_tlfu = ours[("tinylfu", size)]["miss_ratio"]
        diff = abs(our_lru - lru_miss) * 100
        worst = max(worst, diff)
        print(f"{size/2**20:>7.0f}MiB {our_lru:>12.4f} {lru_miss:>9.4f} {diff:>8.3f} {our_tlfu:>16.4f} {wtlfu_miss:>13.4f} {s3_miss:>11.4f}")

    # Speed on the same CSV trace, one cache size, parsing included.
    params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",")
    params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
    _, _, lcs_seconds = lcs_run(lcs.LRU, csv, lcs.TraceType.CSV_TRACE, sizes[-1], params)
    started = time.perf_counter()
    subprocess.run([args.outpost, "replay", csv, "--format", "csv", "--sizes", str(sizes[-1]), "--quiet"],
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
