"""A real collector on loopback (`personalization collect` in a subprocess), and reading what reached raw."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import requests

from tests.conftest import ROOT, free_port

WRITE_KEY = "test-write-key-0001"
OTHER_KEY = "test-write-key-0002"
# the preference center's subject-token secret, as the customer's backend and the collector share it
TOKEN_SECRET = "test-preference-token-secret-0001-abcdefgh"


@dataclass
class Collector:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def metrics(self) -> dict[str, float]:
        """Samples of the Prometheus exposition: {'name{labels}': value}."""
        out = {}
        for line in requests.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def kill(self) -> None:
        """SIGKILL, no chance to flush or clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def collector_process_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PERSONALIZATION_COLLECTOR_WRITE_KEYS": f"{WRITE_KEY},{OTHER_KEY}"}
    env.update(extra or {})
    return env


def start_collector(log: Path, port: int | None = None, extra_env: dict[str, str] | None = None, wait: bool = True) -> Collector:
    port = port or free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "personalization_assets.cli", "collect", "--host", "127.0.0.1", "--port", str(port)],
            env=collector_process_env(extra_env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    c = Collector(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log=log)
    if wait:
        wait_healthy(c)
    return c


def wait_healthy(c: Collector, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.proc.poll() is not None:
            raise AssertionError(f"collector exited with {c.proc.returncode}:\n{c.log.read_text()[-3000:]}")
        try:
            answer = requests.get(c.url + "/health", timeout=1)
            # the tracking API is up at 200; the preference center once its store read the suppression list
            if answer.status_code == 200 and answer.json().get("preference_center") == "ready":
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"collector not healthy after {timeout}s:\n{c.log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def shared_collector(tmp_path_factory):
    """One collector for the tests that only look at what it answers and writes (not at raw): (collector, landing).
    Its preference center has no token secret: it serves anonymous visitors only."""
    root = tmp_path_factory.mktemp("shared_collector")
    env = {"PERSONALIZATION_DATA_DIR": str(root / "data"), "PERSONALIZATION_LANDING_URL": str(root / "data" / "landing"),
           "PERSONALIZATION_LAKE_URL": str(root / "data" / "lake"), "DAGSTER_HOME": str(root),
           "PERSONALIZATION_PREFERENCE_TOKEN_SECRET": ""}
    c = start_collector(root / "collector.log", extra_env=env)
    yield c, root / "data" / "landing"
    c.stop()


@dataclass
class SignedCenter:
    """A collector whose preference center verifies subject tokens under TOKEN_SECRET."""

    collector: Collector
    landing: Path
    state_dir: Path

    @property
    def url(self) -> str:
        return self.collector.url + "/privacy/preferences"


@pytest.fixture(scope="session")
def signed_collector(tmp_path_factory) -> SignedCenter:
    root = tmp_path_factory.mktemp("signed_collector")
    env = {"PERSONALIZATION_DATA_DIR": str(root / "data"), "PERSONALIZATION_LANDING_URL": str(root / "data" / "landing"),
           "PERSONALIZATION_LAKE_URL": str(root / "data" / "lake"), "DAGSTER_HOME": str(root),
           "PERSONALIZATION_COLLECTOR_STATE_DIR": str(root / "state"), "PERSONALIZATION_PREFERENCE_TOKEN_SECRET": TOKEN_SECRET}
    c = start_collector(root / "collector.log", extra_env=env)
    yield SignedCenter(c, root / "data" / "landing", root / "state")
    c.stop()


@pytest.fixture
def collector(data_dir, tmp_path):
    """A collector on the test's own data dir (for tests that materialize what it wrote); it verifies subject tokens."""
    c = start_collector(tmp_path / "collector.log", extra_env={"PERSONALIZATION_PREFERENCE_TOKEN_SECRET": TOKEN_SECRET})
    yield c
    c.stop()


class StoredChoices(dict):
    """The preference center's store as it is on disk, keyed as stored ("user:" | "anon:" + pseudonym); a lookup by
    "user:<raw id>" computes the pseudonym with the data dir's key, as the center does. No raw id is stored."""

    def __init__(self, rows: dict, data_dir: Path):
        super().__init__(rows)
        self.data_dir = data_dir

    def _key(self, key: str) -> str:
        kind, _, value = key.partition(":")
        if re.fullmatch(r"v\d+:[0-9a-f]{64}", value):
            return key
        from personalization_assets.core.pseudonym_keys import DEV_KEY_FILE, parse_key_map
        from personalization_assets.core.pseudonymize import KeyChain, normalize

        keys, active = parse_key_map((self.data_dir / DEV_KEY_FILE).read_text())
        return f"{kind}:{KeyChain(keys, active).pseudonym(normalize(value, 'id'))}"

    def __getitem__(self, key):
        return super().__getitem__(self._key(key))

    def __contains__(self, key):
        return super().__contains__(self._key(key))


def stored_choices(state_dir: Path, data_dir: Path | None = None) -> StoredChoices:
    """The preference center's store as it is on disk: {"user:<pseudonym>" | "anon:<pseudonym>": ({purpose: status}, gpc)}
    (GPC's sticky denials applied, as the center shows them); `data_dir`: the collector's (default: the `data` folder
    next to the state dir, else the state dir's parent)."""
    from personalization_assets.core.policies import get_policy

    data_dir = data_dir or (state_dir.parent / "data" if (state_dir.parent / "data").exists() else state_dir.parent)
    path = state_dir / "preferences.sqlite"
    if not path.exists():
        return StoredChoices({}, data_dir)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("select subject, purposes, gpc_at from choices").fetchall()
    finally:
        con.close()
    sticky = {p.name for p in get_policy().purposes.values() if p.gpc_denies}
    out = {}
    for subject, purposes, gpc_at in rows:
        view = {p: v[0] for p, v in json.loads(purposes).items()}
        if gpc_at:
            view.update({p: "denied" for p in sticky})
        out[subject] = (view, gpc_at is not None)
    return StoredChoices(out, data_dir)


def landing_messages(landing: Path) -> list[dict]:
    """Every message the collector wrote, from the landing objects themselves."""
    out = []
    for f in sorted((landing / "events").rglob("*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines()]
    return out


def landing_objects(landing: Path) -> list[Path]:
    return sorted(p for p in (landing / "events").rglob("*") if p.is_file()) if (landing / "events").exists() else []


def materialize_raw():
    """`raw/events` (+ its quarantine) over every landing hour present, as `personalization materialize` does."""
    from personalization_assets.cli import landing_partition_keys
    from tests.helpers import defs_for_env, materialize

    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    assert keys, "nothing landed"
    materialize(defs, "key:raw/events", (keys[0], keys[-1]))
    return defs


def raw_rows(defs, sql: str) -> list[tuple]:
    """Query the lake's raw/events (view `raw`) and raw/events_quarantine (view `quarantine`)."""
    import pyarrow as pa

    con = duckdb.connect()
    con.execute("set TimeZone='UTC'")
    lake = defs.resources["lake"]
    lake.register(con, "raw", "raw", "events")
    lake.register(con, "quarantine", "raw", "events_quarantine", empty_schema=pa.schema([("reason", pa.string()), ("original_text", pa.string())]))
    return con.execute(sql).fetchall()
