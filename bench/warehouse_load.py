"""The `insert` load path of warehouse/features_loaded against a fakesnow server, at the feature-table sizes of a
1M-event run (bench/results/*-1000000.json: 33,333 users, 125,793 sessions, 145,383 affinity rows).
Run: .venv/bin/python -m bench.warehouse_load (synthetic values, real column types and row counts)."""
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pyarrow as pa

from personalization_assets.warehouse.loader import FEATURE_TABLES, to_load_table
from personalization_assets.warehouse.resources import SnowflakeWarehouse

SIZES = {"user_rfm": 33333, "engagement": 33333, "content_affinity": 145383, "sessions": 125793,
         "purpose_eligibility": 33333 * 4, "identity_map": 66666}
rng = random.Random(1)
def col(t, n, name):
    if t == "varchar": return pa.array([f"v1:{rng.getrandbits(128):032x}{name[:3]}" for _ in range(n)])
    if t == "double": return pa.array([rng.random() * 100 for _ in range(n)])
    if t == "bigint": return pa.array([rng.randrange(10**6) for _ in range(n)], pa.int64())
    if t == "boolean": return pa.array([rng.random() < .5 for _ in range(n)])
    return pa.array([dt.datetime(2026, 11, 1) + dt.timedelta(seconds=rng.randrange(10**6)) for _ in range(n)], pa.timestamp("us"))


def main() -> None:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    p = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "fakesnow"), "-s", "-p", str(port)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port), .2).close(); break
        except OSError: time.sleep(.1)
    try:
        wh = SnowflakeWarehouse(account="a", user="u", password="p", role="r", warehouse="w", database="PERSONALIZATION", host="127.0.0.1", port=port, protocol="http")
        total_rows, total_t = 0, 0.0
        with wh.get_connection(paramstyle="qmark") as conn:
            conn.cursor().execute("create database if not exists PERSONALIZATION")
            for table, columns in FEATURE_TABLES.items():
                n = SIZES[table]
                data = pa.table({name: col(t, n, name) for name, t in columns})
                t0 = time.perf_counter(); loaded = wh.replace_table(conn, table, columns, to_load_table(table, data)); el = time.perf_counter() - t0
                total_rows += loaded.rows; total_t += el
                print(f"{table:20s} {loaded.rows:>8,} rows {el:6.1f} s  {loaded.rows/el:>8,.0f} rows/s")
        print(f"{'total':20s} {total_rows:>8,} rows {total_t:6.1f} s  {total_rows/total_t:>8,.0f} rows/s")
    finally:
        os.killpg(p.pid, signal.SIGINT)  # the server stops on SIGINT
        p.wait(10)


if __name__ == "__main__":
    main()
