"""`make prod-rehearsal` end to end: the script starts a real moto S3 server and a real fakesnow server
(`fakesnow -s`) as processes, runs `personalization generate` + `personalization materialize` with
PERSONALIZATION_ENV=prod from the CLI (nothing patched), and must produce the same user_segments rows as a
local run (DuckDB) of the same landing zone, pseudonymization key and feature cutoff.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "infra" / "scripts" / "prod_rehearsal.py"
sys.path.insert(0, str(SCRIPT.parent))
from prod_rehearsal import plain
from tests.conftest import platform_free_environ

KEYS = json.dumps({"1": "ab" * 32})
GEN = ["--users", "200", "--events", "8000", "--seed", "7", "--bad-fraction", "0.01", "--days", "1", "--end", "2026-11-20"]
AS_OF = "2026-11-21T00:00:00Z"


def _clean_env(**extra: str) -> dict[str, str]:
    return platform_free_environ("AWS_", "PROMETHEUS_", PYTHONPATH=str(ROOT), **extra)

def test_prod_rehearsal_from_the_cli_matches_a_local_run(tmp_path):
    out = tmp_path / "segments.json"
    rehearsal_log = tmp_path / "rehearsal.log"
    # the rehearsal (mostly waiting on its servers) and the local run of the same landing run side by side
    with open(rehearsal_log, "w") as log:
        rehearsal = subprocess.Popen(
            [sys.executable, str(SCRIPT), *GEN, "--as-of", AS_OF, "--workdir", str(tmp_path / "rehearsal"), "--segments-out", str(out)],
            env=_clean_env(PERSONALIZATION_PSEUDONYM_KEYS=KEYS), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            local_rows, local_columns = _local_run(tmp_path)
            returncode = rehearsal.wait(timeout=900)
        finally:
            if rehearsal.poll() is None:
                rehearsal.kill()
                rehearsal.wait()
    text = rehearsal_log.read_text()
    assert returncode == 0, text[-6000:]
    # the demo's summary, the segment sizes read back from the warehouse, and the rehearsal's own lines
    assert "layer        assets  files read" in text and "\nwarehouse " in text and "\nsegments " in text
    assert "Segment sizes (segments.segment_sizes" in text
    assert "segments.user_segments on the fakesnow server:" in text
    assert "Production rehearsal passed" in text
    # the servers were real processes (their logs show the traffic)
    assert "query-request" in (tmp_path / "rehearsal" / "fakesnow.log").read_text()
    assert "PUT /rehearsal-lake/" in (tmp_path / "rehearsal" / "moto.log").read_text()
    prod = json.loads(out.read_text())
    assert len(prod["rows"]) > 50
    assert prod["columns"] == local_columns
    assert prod["rows"] == local_rows


def _local_run(tmp_path: Path) -> tuple[list, list[str]]:
    """The same landing, key and cutoff, locally (DuckDB), also from the CLI."""
    local = tmp_path / "local"
    env = _clean_env(
        PERSONALIZATION_DATA_DIR=str(local), PERSONALIZATION_PSEUDONYM_KEYS=KEYS,
        DBT_TARGET_PATH=str(tmp_path / "dbt_target_local"), DAGSTER_HOME=str(tmp_path / "dagster_home_local"),
    )
    for argv in (["generate", *GEN], ["materialize", "--as-of", AS_OF]):
        run = subprocess.run([str(BIN / "personalization"), *argv], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    con = duckdb.connect(str(local / "warehouse.duckdb"), read_only=True)
    try:
        cur = con.execute("select * from segments.user_segments order by person_id")
        columns = [d[0].lower() for d in cur.description]
        rows = [[plain(v) for v in r] for r in cur.fetchall()]
    finally:
        con.close()
    return rows, columns
