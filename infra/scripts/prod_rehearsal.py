"""Production rehearsal on one machine: `make prod-rehearsal`.

Starts the two stand-ins of the production services as separate processes on loopback, exactly as a user
would run them:

* `moto_server` (S3): the landing and lake buckets;
* `fakesnow -s` (Snowflake's HTTP API, fakesnow[server]): the warehouse;

then runs the whole graph with `PERSONALIZATION_ENV=prod` from the CLI (`personalization generate` into the S3
landing bucket, `personalization materialize`), which prints the same summary as `make demo`, and finally
reads `segments.user_segments` back from the warehouse over the Snowflake connector and prints it.
Nothing is patched: every process talks to the servers over HTTP like it would to AWS and Snowflake.

    python infra/scripts/prod_rehearsal.py [--users N] [--events N] [--days N] [--end YYYY-MM-DD]
                                           [--as-of ISO] [--workdir DIR] [--segments-out FILE.json]

Known emulator limit: fakesnow cannot create the temporary tables dbt-snowflake uses for dbt unit tests, so
the rehearsal excludes them (`DBT_EXCLUDE_RESOURCE_TYPES=unit_test`); they run on DuckDB in `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DATABASE = "PERSONALIZATION"
LANDING_BUCKET, LAKE_BUCKET = "rehearsal-landing", "rehearsal-lake"
LEDGER_BUCKET = "rehearsal-ledger"  # the append-only logs, write-once (S3 Object Lock) as in production
USER_SEGMENTS_SQL = "select * from segments.user_segments order by person_id"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before listening on 127.0.0.1:{port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@contextmanager
def server(name: str, argv: list[str], port: int, log: Path):
    """A server process in its own process group (stopped as a group, no orphans), its output in `log`."""
    exe = shutil.which(argv[0], path=str(BIN)) or shutil.which(argv[0])
    if exe is None:
        raise SystemExit(f"{argv[0]} not found. Fix: `make install` (pyproject pins moto[server] and fakesnow[server]).")
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, *argv[1:]], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, proc, name)
            print(f"{name} listening on 127.0.0.1:{port} (log: {log})", flush=True)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # fakesnow -s waits for SIGINT
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def rehearsal_env(workdir: Path, s3_port: int, snow_port: int, keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONALIZATION_", "SNOWFLAKE_", "DBT_", "AWS_"))}
    env.update(
        {
            "PERSONALIZATION_ENV": "prod",
            "PERSONALIZATION_DATA_DIR": str(workdir / "data"),
            "PERSONALIZATION_LANDING_URL": f"s3://{LANDING_BUCKET}/cdp",
            "PERSONALIZATION_LAKE_URL": f"s3://{LAKE_BUCKET}/lake",
            "PERSONALIZATION_LEDGER_URL": f"s3://{LEDGER_BUCKET}/ledger",
            "PERSONALIZATION_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "PERSONALIZATION_PSEUDONYM_KEYS": keys,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "rehearsal",
            "AWS_SECRET_ACCESS_KEY": "rehearsal",  # moto accepts any credentials
            "SNOWFLAKE_ACCOUNT": "rehearsal",
            "SNOWFLAKE_USER": "rehearsal",
            "SNOWFLAKE_PASSWORD": "rehearsal",  # fakesnow accepts any credentials
            "SNOWFLAKE_ROLE": "TRANSFORMER",
            "SNOWFLAKE_WAREHOUSE": "TRANSFORMING",
            "SNOWFLAKE_DATABASE": DATABASE,
            "SNOWFLAKE_HOST": "127.0.0.1",
            "SNOWFLAKE_PORT": str(snow_port),
            "SNOWFLAKE_PROTOCOL": "http",
            "DBT_EXCLUDE_RESOURCE_TYPES": "unit_test",
            "DBT_TARGET_PATH": str(workdir / "dbt_target"),
            "DAGSTER_HOME": str(workdir / "dagster_home"),
        }
    )
    # this checkout's code first (also when the venv holds an editable install of another checkout)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # a run's failure alerts and metrics stay local
    env.pop("PROMETHEUS_PUSHGATEWAY_URL", None)
    return env


def run(argv: list[str], env: dict[str, str]) -> None:
    print(f"$ {' '.join(argv)}", flush=True)
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"prod rehearsal FAILED at `{' '.join(argv)}` (exit {proc.returncode})")


def plain(value):
    """A JSON-able, comparable form of a warehouse value (timestamps naive ISO, decimals as float)."""
    from decimal import Decimal

    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def read_user_segments(snow_port: int) -> tuple[list[str], list[list]]:
    import snowflake.connector

    conn = snowflake.connector.connect(
        account="rehearsal", user="rehearsal", password="rehearsal", database=DATABASE,
        host="127.0.0.1", port=snow_port, protocol="http",
    )
    try:
        cur = conn.cursor()
        cur.execute(USER_SEGMENTS_SQL)
        columns = [d[0].lower() for d in cur.description]
        return columns, [list(r) for r in cur.fetchall()]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=int(os.environ.get("DEMO_USERS", "2000")))
    p.add_argument("--events", type=int, default=int(os.environ.get("DEMO_EVENTS", "200000")))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bad-fraction", type=float, default=0.01)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--end", help="last day of data (default: yesterday UTC)")
    p.add_argument("--as-of", help="feature cutoff (default: now)")
    p.add_argument("--workdir", help="scratch directory (default: a temporary directory, removed afterwards)")
    p.add_argument("--segments-out", help="also write user_segments (columns + rows) to this JSON file")
    args = p.parse_args(argv)

    # the HMAC key of this rehearsal: PERSONALIZATION_PSEUDONYM_KEYS if exported (to compare runs), else fresh
    keys = os.environ.get("PERSONALIZATION_PSEUDONYM_KEYS") or json.dumps({"1": secrets.token_hex(32)})
    end = args.end or (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prod-rehearsal-")))
        workdir.mkdir(parents=True, exist_ok=True)
        s3_port, snow_port = free_port(), free_port()
        stack.enter_context(server("moto S3 server", ["moto_server", "-H", "127.0.0.1", "-p", str(s3_port)], s3_port, workdir / "moto.log"))
        stack.enter_context(
            server("fakesnow server", ["fakesnow", "-s", "--host", "127.0.0.1", "-p", str(snow_port)], snow_port, workdir / "fakesnow.log")
        )
        env = rehearsal_env(workdir, s3_port, snow_port, keys)

        import boto3

        s3 = boto3.client("s3", endpoint_url=env["PERSONALIZATION_S3_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
        for bucket in (LANDING_BUCKET, LAKE_BUCKET):
            s3.create_bucket(Bucket=bucket)
        s3.create_bucket(Bucket=LEDGER_BUCKET, ObjectLockEnabledForBucket=True)

        run(["personalization", "generate", "--users", str(args.users), "--events", str(args.events), "--seed", str(args.seed),
             "--bad-fraction", str(args.bad_fraction), "--days", str(args.days), "--end", end], env)
        materialize = ["personalization", "materialize"] + (["--as-of", args.as_of] if args.as_of else [])
        run(materialize, env)

        columns, rows = read_user_segments(snow_port)
        print(f"segments.user_segments on the fakesnow server: {len(rows):,} rows ({', '.join(columns)})")
        for row in rows[:5]:
            print("  " + " | ".join(str(v) for v in row))
        if args.segments_out:
            Path(args.segments_out).write_text(json.dumps({"columns": columns, "rows": [[plain(v) for v in r] for r in rows]}))
        lake_objects = sum(1 for page in s3.get_paginator("list_objects_v2").paginate(Bucket=LAKE_BUCKET) for _ in page.get("Contents", []))
        print(f"lake bucket s3://{LAKE_BUCKET}: {lake_objects} objects")
    print(f"Production rehearsal passed in {time.monotonic() - started:.0f} s "
          "(moto S3 + fakesnow server, PERSONALIZATION_ENV=prod, from the CLI).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
