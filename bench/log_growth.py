"""How the per-run cost of the hash-chained privacy logs grows with their history.

    python -m bench.log_growth [--sizes 100,1000,5000,20000] [--repeats 5] [--workdir DIR] [--s3] [--no-whole]

Every run of the platform appends to the access audit log (one segment per audited step, and before the fix one per
partition the erasure run read). For each size N, a log with the access audit log's schema and N one-row segments
(what N audited steps leave behind), then, side by side:

* append one row: with the head hint (this code) and without it (the hint removed first: the head comes from the
  listing of every segment, which is what each append did before);
* verify: the whole chain (what `privacy/access_audit_log` did on every run before session 13) and from the
  checkpoint after one more append (what it does now: a listing of the newest segments and of a window of at most
  1,000 older ones, the checkpoint's head and the block of the new segment; before session 15 the whole listing
  and the whole checkpoint table, one row per segment).

A `--workdir` kept from an earlier run grows its log further (sizes count the segments already there);
`--no-whole` skips the whole-chain verification, which takes minutes at 100,000 segments.

`--s3` runs the same on a moto server on loopback (S3 lists 1,000 keys per request). Medians of `--repeats` runs,
seconds. Nothing is asserted in tests: figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone


def _row(i: int) -> dict:
    return {"read_at": datetime.now(timezone.utc), "run_id": f"run-{i}", "reader": "consented/events", "asset": "raw/events",
            "partition": f"date=2026-11-28/hour={i % 24:02d}", "columns": "*", "purpose": "data_minimization"}


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4)


def measure(lake, sizes: list[int], repeats: int, verify_whole: bool = True) -> list[dict]:
    from personalization_assets.core.audit import AUDIT_SCHEMA
    from personalization_assets.core.hash_chain import HashChainedLog
    from personalization_assets.privacy import ledger_checkpoint

    log = HashChainedLog(lake=lake, name="access_audit_log", schema=AUDIT_SCHEMA)
    store, hint = log._hint_location()
    out, n = [], len(log.segments())  # a --workdir kept from an earlier run grows its log further
    for size in sorted(sizes):
        t0 = time.perf_counter()
        while n < size:
            log.append([_row(n)])
            n += 1
        build_s = time.perf_counter() - t0

        def append_with_hint():
            nonlocal n
            log.append([_row(n)])
            n += 1

        def append_listing():
            nonlocal n
            store.delete(hint)  # no hint: the head comes from the listing (and the append writes the hint again)
            log.append([_row(n)])
            n += 1

        with_hint = _timed(append_with_hint, repeats)
        listing = _timed(append_listing, repeats)
        whole = _timed(lambda: log.verify(), max(1, repeats // 2)) if verify_whole else None
        ckpt = ledger_checkpoint.verify(log, lake)
        ledger_checkpoint.write_checkpoint(lake, log, ckpt)

        def incremental():
            nonlocal n
            log.append([_row(n)])
            n += 1
            v = ledger_checkpoint.verify(log, lake)
            assert v.status.ok and v.mode == "incremental", v
            ledger_checkpoint.write_checkpoint(lake, log, v)

        inc = _timed(incremental, repeats)
        out.append({"segments": size, "build_s": round(build_s, 1), "append_with_hint_s": with_hint, "append_listing_s": listing,
                    "append_ratio": round(listing / with_hint, 1) if with_hint else None,
                    "verify_whole_s": whole, "append_and_verify_from_checkpoint_s": inc,
                    "verify_ratio": round(whole / inc, 1) if inc and whole else None})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000,20000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--s3", action="store_true", help="a moto server on loopback instead of a local directory")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-chain verification (minutes at 100,000 segments)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    from personalization_assets.core.storage import LakeStorage

    workdir = args.workdir or tempfile.mkdtemp(prefix="log-growth-")
    server = None
    try:
        if args.s3:
            import logging

            import boto3
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            bucket = f"log-growth-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                         aws_secret_access_key="x").create_bucket(Bucket=bucket)
            lake = LakeStorage(url=f"s3://{bucket}/lake", s3_endpoint_url=endpoint, aws_region="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="x")
        else:
            lake = LakeStorage(url=os.path.join(workdir, "lake"))
        rows = measure(lake, sizes, args.repeats, verify_whole=not args.no_whole)
    finally:
        if server is not None:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write("\nBENCH_RESULT " + json.dumps({"store": "s3 (moto)" if args.s3 else "local", "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
