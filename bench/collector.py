"""Collector benchmark: messages/s and request latency (p50/p99) with batches of 100 from 4 concurrent clients
on loopback, beside the bare durable write throughput of the same storage.

    python -m bench.collector [--messages 100000] [--clients 4] [--batch 100] [--out bench/work/collector.json]

* collector: `personalization collect` in its own process (local landing zone in a temp dir); each client is a
  process posting pre-built `/v1/batch` bodies over a keep-alive connection, one request at a time, and
  timing each request until its 200 (= durable). Afterwards every message is counted in the landing zone.
* bare write: the same messages, encoded as the collector encodes them (NDJSON + gzip) and written with
  `LandingZone.write_durable` (temp file, fsync, rename, directory fsync) — one object per batch, in one
  process, no HTTP, no index. The collector's group commit can beat it: it writes one object per flush.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "bench-write-key-000001"


def _message(client: int, i: int) -> dict:
    return {
        "type": "track", "event": "Content Viewed", "messageId": f"bench-{client}-{i}-{uuid.uuid4().hex[:8]}",
        "userId": f"user-{i % 5000}", "anonymousId": f"anon-{i % 7000}", "timestamp": "2026-12-05T06:00:00.000Z",
        "context": {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 (X11; Linux x86_64) bench", "locale": "de-DE",
                    "location": {"country": "DE"}, "page": {"url": f"https://example.com/articles/{i % 900}", "referrer": "https://news.example"},
                    "library": {"name": "analytics-python", "version": "2.4.0"}},
        "properties": {"content_id": f"c{i % 900}", "category": "sports", "dwell_ms": 12_000 + i % 5000},
    }


def _bodies(client: int, messages: int, batch: int) -> list[bytes]:
    out = []
    for start in range(0, messages, batch):
        out.append(json.dumps({"batch": [_message(client, i) for i in range(start, min(start + batch, messages))],
                               "sentAt": "2026-12-05T06:00:01.000Z"}).encode())
    return out


def _client(args) -> list[float]:
    import requests

    url, client, messages, batch, barrier = args
    bodies = _bodies(client, messages, batch)
    session = requests.Session()
    headers = {"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    latencies = []
    barrier.wait()
    for body in bodies:
        t = time.perf_counter()
        r = session.post(url + "/v1/batch", data=body, headers=headers, timeout=60)
        latencies.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return latencies


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    import requests

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("collector exited")
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("collector not healthy")


def _count_landed(landing: Path) -> int:
    import gzip

    return sum(gzip.decompress(p.read_bytes()).count(b"\n") for p in (landing / "events").rglob("*.jsonl.gz"))


def bench_collector(messages: int, clients: int, batch: int, work: Path) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PERSONALIZATION_DATA_DIR": str(work / "data"),
           "PERSONALIZATION_LANDING_URL": str(work / "data" / "landing"), "PERSONALIZATION_LAKE_URL": str(work / "data" / "lake"),
           "PERSONALIZATION_COLLECTOR_WRITE_KEYS": WRITE_KEY, "DAGSTER_HOME": str(work)}
    url = f"http://127.0.0.1:{port}"
    with open(work / "collector.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "personalization_assets.cli", "collect", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, proc)
        per_client = messages // clients
        # spawn, not fork: forking a process that runs threads (a test runner, a Dagster process) can copy a
        # held lock into a child that then never exits
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            barrier = manager.Barrier(clients + 1)
            # the workers take SIGTERM's default back: a parent started with SIGINT ignored (a background job)
            # may have had SIGTERM mapped to it by Dagster's interrupt handling, and an ignored disposition
            # survives exec, so the pool's terminate() on an error would wait forever for its workers
            with ctx.Pool(clients, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
                pending = pool.map_async(_client, [(url, c, per_client, batch, barrier) for c in range(clients)])
                barrier.wait()
                t = time.perf_counter()
                results = pending.get()
                elapsed = time.perf_counter() - t
                pool.close()  # done: let the workers exit on their own
                pool.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    latencies = sorted(x for r in results for x in r)
    sent = per_client * clients
    landed = _count_landed(work / "data" / "landing")
    assert landed == sent, f"landed {landed} != sent {sent}"
    objects = sum(1 for _ in (work / "data" / "landing" / "events").rglob("*.jsonl.gz"))
    return {
        "messages": sent, "requests": len(latencies), "seconds": round(elapsed, 2), "messages_per_s": round(sent / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 1), "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "objects_written": objects,
    }


def bench_bare_write(messages: int, batch: int, work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from personalization_assets.collector.writer import encode
    from personalization_assets.core.storage import LandingZone

    landing = LandingZone(url=str(work / "bare"))
    batches = [[_message(0, i) for i in range(s, min(s + batch, messages))] for s in range(0, messages, batch)]
    t = time.perf_counter()
    for n, b in enumerate(batches):
        landing.write_durable(f"events/date=2026-12-05/hour=06/bare-{n}.jsonl.gz", encode(b))
    elapsed = time.perf_counter() - t
    return {"messages": messages, "objects_written": len(batches), "seconds": round(elapsed, 2), "messages_per_s": round(messages / elapsed)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "bench" / "work" / "collector.json"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    try:
        bare = bench_bare_write(args.messages, args.batch, work)
        collector = bench_collector(args.messages, args.clients, args.batch, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"clients": args.clients, "batch": args.batch, "collector": collector, "bare_write": bare, "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
