"""Ingestion of a landing zone of many small objects on S3: read one at a time vs `--concurrency` at a time.

    python -m bench.landing_reads [--events 300000] [--lines-per-object 100] [--latency-ms 20]
                                  [--concurrency 1,8,32] [--local] [--workdir bench/work/landing_reads]

A busy collector flushes an object per batch of messages (docs/BENCHMARKS.md, Collector: ~200 per object at
10k messages/s) and CDP destinations write many parts: the landing zone of a tick can hold thousands of small
objects. Here the default generator's hour files (seeded) are cut into objects of `--lines-per-object` lines and
put on a moto S3 server on loopback; ingestion (`personalization materialize --select key:raw/events`, the lake
local) reads them through a TCP proxy that holds each request `--latency-ms` before passing it on, as a network
round trip would (moto answers on loopback in ≈ 2–4 ms of its own CPU; S3 from a region's compute has a
first-byte latency of tens of ms). The same landing is ingested once per concurrency into a fresh lake
(PERSONALIZATION_LANDING_READ_CONCURRENCY); `--local` adds the same objects read from a local directory.

Reported per run: the wall time of the command, the `raw_events` step, the process's peak RSS, and the rows
written (equal work: every run must write the same raw and quarantine rows). Nothing is asserted in tests:
figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench-landing"


class LatencyProxy:
    """TCP proxy on loopback: every chunk a client sends waits `latency_s` before it goes upstream (a request is one
    chunk for GET and HEAD), answers pass straight back. Runs its own event loop in a thread."""

    def __init__(self, upstream_port: int, latency_s: float):
        self.upstream_port, self.latency_s = upstream_port, latency_s
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _client(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src, dst, delay: float) -> None:
            try:
                while data := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, self.latency_s), pump(up_reader, writer, 0.0))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _cut_landing(source: Path, target: Path, lines_per_object: int) -> int:
    """The generated landing with each events hour file cut into objects of `lines_per_object` lines (gzipped); the
    reference files as they are. Returns the number of objects."""
    count = 0
    for f in sorted(source.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(source).as_posix()
        if rel.startswith("events/") and f.name.endswith(".jsonl.gz"):
            lines = gzip.decompress(f.read_bytes()).splitlines(keepends=True)
            for i in range(0, len(lines), lines_per_object):
                out = target / f"{rel[:-len('.jsonl.gz')]}-{i // lines_per_object:05d}.jsonl.gz"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(gzip.compress(b"".join(lines[i:i + lines_per_object]), mtime=0))
                count += 1
        else:
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
            count += 1
    return count


def _upload(landing: Path, endpoint: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
    s3.create_bucket(Bucket=BUCKET)
    files = [f for f in sorted(landing.rglob("*")) if f.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: s3.put_object(Bucket=BUCKET, Key=f"landing/{f.relative_to(landing).as_posix()}", Body=f.read_bytes()), files))


def _ingest(workdir: Path, landing_url: str, concurrency: int, endpoint: str | None) -> dict:
    """One `materialize --select key:raw/events` into a fresh data dir; wall, step seconds, peak RSS, rows."""
    import dagster as dg
    import pyarrow.parquet as pq

    from bench.common import run_steps

    data, home = workdir / "data", workdir / "home"
    shutil.rmtree(workdir, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONALIZATION_", "SNOWFLAKE_", "AWS_"))}
    env.update(PERSONALIZATION_DATA_DIR=str(data), DAGSTER_HOME=str(home), PERSONALIZATION_LANDING_URL=landing_url,
               PERSONALIZATION_LANDING_READ_CONCURRENCY=str(concurrency), PERSONALIZATION_EVENTS_START="2025-01-01")
    if endpoint:
        env.update(PERSONALIZATION_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_REGION="us-east-1")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "personalization_assets.cli", "materialize", "--select", "key:raw/events"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingestion failed (concurrency {concurrency}):\n{out.decode(errors='replace')[-3000:]}")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.from_config(str(home))
    run = instance.get_run_records(limit=1)[0].dagster_run
    steps = run_steps(instance, run.run_id).seconds()
    rows = {}
    for table in ("events", "events_quarantine"):
        rows[table] = sum(pq.ParquetFile(f).metadata.num_rows for f in (data / "lake" / "raw" / table).rglob("data.parquet"))
    return {"concurrency": concurrency, "wall_seconds": round(wall, 2), "raw_events_seconds": steps.get("raw_events"),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "rows": rows}


def run(workdir: Path, events: int, lines_per_object: int, latency_ms: float, concurrencies: list[int], local: bool) -> dict:
    from moto.server import ThreadedMotoServer

    shutil.rmtree(workdir, ignore_errors=True)
    generated, landing = workdir / "generated", workdir / "landing"
    env = {**os.environ, "PERSONALIZATION_DATA_DIR": str(workdir / "gen_data"), "PERSONALIZATION_LANDING_URL": str(generated)}
    subprocess.run([sys.executable, "-m", "personalization_assets.cli", "generate", "--events", str(events), "--users",
                    str(max(1000, events // 40)), "--days", "2", "--seed", "11"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    objects = _cut_landing(generated, landing, lines_per_object)
    moto_port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    proxy = LatencyProxy(moto_port, latency_ms / 1000)
    try:
        _upload(landing, f"http://127.0.0.1:{moto_port}")
        runs = [{"store": "s3", **_ingest(workdir / f"s3-{c}", f"s3://{BUCKET}/landing", c, f"http://127.0.0.1:{proxy.port}")}
                for c in concurrencies]
        if local:
            runs += [{"store": "local", **_ingest(workdir / f"local-{c}", str(landing), c, None)} for c in concurrencies]
    finally:
        proxy.stop()
        server.stop()
    equal = len({json.dumps(r["rows"], sort_keys=True) for r in runs}) == 1
    return {"events": events, "objects": objects, "lines_per_object": lines_per_object, "latency_ms": latency_ms,
            "equal_work": equal, "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--lines-per-object", type=int, default=100)
    p.add_argument("--latency-ms", type=float, default=20.0, help="added to every request on its way to moto")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated PERSONALIZATION_LANDING_READ_CONCURRENCY values")
    p.add_argument("--local", action="store_true", help="also ingest the same objects from a local directory")
    p.add_argument("--workdir", default=str(ROOT / "bench" / "work" / "landing_reads"))
    a = p.parse_args(argv)
    result = run(Path(a.workdir), a.events, a.lines_per_object, a.latency_ms, [int(c) for c in a.concurrency.split(",")], a.local)
    out = ROOT / "bench" / "results" / f"{datetime.now(timezone.utc):%Y-%m-%dT%H%M%SZ}-landing-reads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["equal_work"] else 1


if __name__ == "__main__":
    sys.exit(main())
