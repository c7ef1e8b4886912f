"""The prediction log's Parquet compression: bytes per row against CPU per row.

Serving (``.venv-serving``) answers real rows (``bench.run.bodies``: 1,000-row and single-row
JSON) for a few seconds and logs them as it does in production; each object it wrote is then
written again, as ``datalog.write_predictions`` writes it, with each compression, and read
back. CPU time (``time.process_time``), not wall time: it is what the serving core pays, and
moves little when other work shares the machine. Then the same objects, put in a closed day of
a fresh store, are compacted as the reporter does (``datalog.compact_predictions``): bytes per
row before and after, and the reporter's CPU per row.

Usage: python -m bench.log_format [--serving-python .venv-serving/bin/python] [--seconds 4]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.run import Server, bodies, machine, make_store, path_of, wrk
from mlplatform_common import datalog, keys
from mlplatform_common.storage import LocalStore

CODECS = [None, "SNAPPY", "LZ4_RAW", "ZSTD", "GZIP"]


def logged(serving_python: str, seconds: float, tmp: Path) -> list[bytes]:
    """The log objects a serving process wrote under real traffic, as written."""
    env = make_store(tmp)
    server = Server("ours", [serving_python, "-m", "mlplatform_serving"], env, "/ready").start()
    try:
        every = bodies()
        for scenario in ("1,000-row JSON", "single JSON"):
            sent, ctype = every[scenario]
            wrk(server.url + path_of(scenario), sent, ctype, 8, seconds)
    finally:
        server.stop()  # flushes the log
    store = LocalStore(tmp / "store")
    return [store.get(k) for k in store.list_keys(keys.PREDICTIONS)]


def compaction(objects: list[bytes], tmp: Path, max_rows: int) -> dict[str, float]:
    """The objects as one closed day's batches in a fresh store, compacted into objects of at
    most ``max_rows`` rows: bytes per row before and after, the reporter's CPU µs per row, and
    the rows read back."""
    store = LocalStore(tmp / f"compaction-{max_rows}")
    store.ensure()
    day = 20_000 * 86_400.0
    for i, blob in enumerate(objects):
        store.put(keys.predictions_batch(day + 60 + i, datalog.new_id()[:12]), blob)
    rows = len(datalog.read_predictions(store))
    before = sum(len(store.get(k)) for k in store.list_keys(keys.PREDICTIONS))
    t0 = time.process_time()
    done = datalog.compact_predictions(store, day + 2 * 86_400, max_rows=max_rows)
    cpu = time.process_time() - t0
    after = sum(len(store.get(k)) for k in store.list_keys(keys.PREDICTIONS))
    return {
        "rows": rows,
        "objects_before": len(objects),
        "objects_after": done["objects"],
        "bytes_per_row_before": before / rows,
        "bytes_per_row_after": after / rows,
        "cpu_us_per_row": cpu / rows * 1e6,
        "rows_after": len(datalog.read_predictions(store)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.log_format")
    parser.add_argument("--serving-python", default=".venv-serving/bin/python")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlplatform-logfmt-"))
    try:
        objects = logged(args.serving_python, args.seconds, tmp)
        # bench.run.bodies repeat after 50,000 rows (50 bodies of 1,000): an object of more
        # holds rows twice, which ZSTD finds, as real traffic would rarely let it
        compacted = {n: compaction(objects, tmp, n) for n in (50_000, 100_000)} if objects else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    frames = [pd.read_parquet(io.BytesIO(b), engine="fastparquet") for b in objects]
    rows = sum(len(f) for f in frames)
    if not rows:
        print("serving logged nothing", file=sys.stderr)
        return 1
    print(f"Machine: {machine()}")
    print(f"{len(frames)} log objects, {rows:,} rows, {len(frames[0].columns)} columns\n")
    print("| compression | bytes per row | write CPU µs per row | read CPU µs per row |")
    print("|---|---:|---:|---:|")
    for codec in CODECS:
        size, write, read = 0, float("inf"), float("inf")
        for _ in range(args.repeat):  # best of: the least disturbed run
            blobs, t0 = [], time.process_time()
            for frame in frames:
                blobs.append(datalog.parquet_bytes(frame, codec))
            write = min(write, time.process_time() - t0)
            t0 = time.process_time()
            for blob in blobs:
                pd.read_parquet(io.BytesIO(blob), engine="fastparquet")
            read = min(read, time.process_time() - t0)
            size = sum(len(b) for b in blobs)
        print(
            f"| {codec or 'none'} | {size / rows:.0f} | {write / rows * 1e6:.2f} "
            f"| {read / rows * 1e6:.2f} |"
        )
    for n, c in compacted.items():
        print(
            f"\nCompaction of a closed day (datalog.compact_predictions, ZSTD, <= {n:,} rows an "
            f"object): {c['objects_before']} objects -> {c['objects_after']}, "
            f"{c['bytes_per_row_before']:.0f} -> {c['bytes_per_row_after']:.0f} bytes per row, "
            f"{c['cpu_us_per_row']:.2f} CPU µs per row (the reporter's); rows read back "
            f"{c['rows_after']:,} of {c['rows']:,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
