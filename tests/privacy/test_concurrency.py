"""Append-only logs under concurrent writers, with real processes (issue #15, item 4).

Each test starts its processes so that they collide on purpose (they wait for the same wall-clock
instant before touching the log), locally and on S3 (a moto server on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from personalization_assets.privacy.consent import LEDGER_SCHEMA
from personalization_assets.privacy.dp import BudgetLedger
from personalization_assets.core.hash_chain import (
    DuplicateRecordError,
    HashChainedLog,
    LogLockTimeout,
)
from personalization_assets.core.policies import DpRelease, get_policy
from personalization_assets.core.storage import LakeStorage
from tests.conftest import ROOT
from tests.helpers import defs_for_env, held_by_another_thread, materialize
from tests.privacy.concurrency_worker import env_lake

T = datetime(2026, 11, 28, tzinfo=timezone.utc)


def row(i, decision="granted"):
    return {"decision_id": f"d{i}", "identifier_pseudonym": "v1:" + f"{i:064x}", "identifier_kind": "user", "purpose": "personalization",
            "decision": decision, "effective_at": T, "recorded_at": T, "source": "cmp_event", "source_ref": f"m{i}",
            "policy_version": "t", "jurisdiction": "EU"}


def start_workers(args_per_worker: list[list[str]], envs: list[dict] | None = None, lead: float = 0.5) -> list[subprocess.Popen]:
    """Start the workers, wait until every one is ready, then release them all at the same instant."""
    envs = envs or [{}] * len(args_per_worker)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.privacy.concurrency_worker", *args], cwd=ROOT,
                              env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for args, env in zip(args_per_worker, envs)]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "READY":
            p.wait(timeout=30)
            raise AssertionError(f"worker did not start: {line}{p.stderr.read()[-3000:]}")
    go = time.time() + lead
    for p in procs:
        p.stdin.write(f"{go}\n")
        p.stdin.flush()
    return procs


def collect(procs: list[subprocess.Popen], timeout: float = 90) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        assert p.returncode == 0 and lines, f"worker failed (rc {p.returncode}):\n{stderr[-3000:]}"
        out.append(json.loads(lines[-1][len("RESULT "):]))
    return out


# --- the consent ledger: two materializations at once -------------------------------------------------


def _generate_landing(s3: dict | None, landing_dir):
    import datetime as dt

    import pyarrow.fs as pafs

    from personalization_assets.generator import generate_landing_zone

    kwargs = dict(users=120, events=5000, seed=5, bad_fraction=0.0, end=dt.date(2026, 11, 28), days=1)
    if s3 is None:
        generate_landing_zone(pafs.LocalFileSystem(), str(landing_dir), **kwargs)
    else:
        fs = pafs.S3FileSystem(endpoint_override=s3["endpoint"].split("://", 1)[1], scheme="http", access_key="testing",
                               secret_key="testing", region="us-east-1")
        generate_landing_zone(fs, f"{s3['bucket']}/landing", **kwargs)


def _two_ledger_runs_at_once(tmp_path, rounds: int = 3):
    """Two processes materialize the consent ledger at the same instant, `rounds` times on an emptied
    ledger (each worker warmed up first, so the runs really overlap)."""
    from personalization_assets.cli import landing_partition_keys

    defs = defs_for_env()
    keys = landing_partition_keys(defs, None)
    materialize(defs, "group:raw", (keys[0], keys[-1]))
    lake = env_lake()
    log = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, unique_key="decision_id")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    errs = [open(tmp_path / f"worker{i}.err", "w") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.privacy.concurrency_worker", "ledger"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=errs[i], text=True, start_new_session=True) for i in range(2)]
    try:
        for i, p in enumerate(procs):
            assert p.stdout.readline().strip() == "READY", (tmp_path / f"worker{i}.err").read_text()[-3000:]
        for r in range(rounds):
            lake.delete(lake.table_dir("privacy", "consent_ledger"))
            # and its verified checkpoint: a ledger emptied under a checkpoint is a removed ledger (the check fails)
            lake.delete(lake.table_dir("privacy", "consent_ledger_checkpoint"))
            go = time.time() + 0.5
            for p in procs:
                p.stdin.write(f"{go}\n")
                p.stdin.flush()
            results = []
            for i, p in enumerate(procs):
                line = p.stdout.readline()
                assert line.startswith("RESULT "), (tmp_path / f"worker{i}.err").read_text()[-3000:]
                results.append(json.loads(line[len("RESULT "):]))
            ids = log.read_all(["decision_id"])["decision_id"].to_pylist()
            status = log.verify()
            assert all(x["success"] for x in results), results
            assert all(x["checks"]["privacy/consent_ledger:hash_chain_intact"] for x in results), results
            appended = sorted(x["appended"] for x in results)
            # one run recorded every decision, the other found them recorded: the ledger equals one run's
            assert len(ids) == len(set(ids)), f"round {r}: {len(ids) - len(set(ids))} duplicate decision ids in the ledger"
            assert appended[0] == 0 and appended[1] == len(ids) > 0, (r, appended)
            assert status.ok and status.rows == len(ids), status
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in errs:
            f.close()
    # and a later, sequential run appends nothing
    again = materialize(defs, "key:privacy/consent_ledger")
    assert again.success and log.verify().rows == len(ids)


def test_two_consent_ledger_materializations_at_once_record_each_decision_once(landing):
    _generate_landing(None, landing)
    _two_ledger_runs_at_once(landing.parent)


def test_two_consent_ledger_materializations_at_once_on_s3(s3_env, tmp_path):
    _generate_landing(s3_env, None)
    _two_ledger_runs_at_once(tmp_path, rounds=2)  # every round collides by construction; the local test runs three
    # the writer lease is gone once both runs ended
    listed = s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="lake/privacy/consent_ledger/")["Contents"]
    assert not [o["Key"] for o in listed if o["Key"].endswith("_writer.lease")]


# --- the DP budget: two processes charging at once ----------------------------------------------------


def _budget_race(lake: LakeStorage):
    policy = get_policy()
    trials, eps = 6, 0.4
    # every trial month has exactly one release of eps left: at most one of the two processes may spend it
    ledger = BudgetLedger.open(lake, policy, None)
    for i in range(trials):
        ledger.charge(DpRelease("setup", policy.dp_total_epsilon - eps, 1), "setup", datetime(2030 + i // 12, i % 12 + 1, 1, tzinfo=timezone.utc))
    procs = start_workers([["dp", "0.6", str(trials), str(eps)] for _ in range(2)])
    results = collect(procs)
    for i in range(trials):
        period = f"{2030 + i // 12}-{i % 12 + 1:02d}"
        assert ledger.spent(period) == pytest.approx(policy.dp_total_epsilon), f"trial {i}: budget overspent ({ledger.spent(period)})"
        assert sorted(r["outcomes"][i] for r in results) == ["charged", "refused"], (i, results)
    assert ledger.log.verify().ok


def test_two_processes_charging_the_dp_budget_never_overspend(data_dir):
    _budget_race(env_lake())


def test_two_processes_charging_the_dp_budget_on_s3_never_overspend(s3_env):
    _budget_race(env_lake())


# --- unique ids: refused on append, detected by verify ------------------------------------------------


def test_an_append_refuses_a_decision_id_already_stored(tmp_path):
    lake = LakeStorage(url=str(tmp_path / "lake"))
    log = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, unique_key="decision_id")
    log.append([row(1), row(2)])
    with pytest.raises(DuplicateRecordError, match="already stored .*d2"):
        log.append([row(3), row(2, "denied")])
    with pytest.raises(DuplicateRecordError, match="repeats"):
        log.append([row(4), row(4)])
    # the caller decided on rows up to seq 2: a writer that appended d3 since then is caught too
    head = log.head()[0]
    HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, unique_key="decision_id").append([row(3)])
    with pytest.raises(DuplicateRecordError, match="d3"):
        log.append([row(3)], checked_through=head)
    assert [r["decision_id"] for r in log.read_all().to_pylist()] == ["d1", "d2", "d3"]
    assert log.verify().ok


def test_the_chain_check_fails_on_a_decision_id_stored_twice(tmp_path):
    """What the old code produced: a well-chained ledger holding the same decision twice."""
    lake = LakeStorage(url=str(tmp_path / "lake"))
    naive = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA)  # no unique key: appends anything
    naive.append([row(1), row(2)])
    naive.append([row(3), row(2)])
    assert naive.verify().ok  # the chain itself is intact
    status = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, unique_key="decision_id").verify()
    assert not status.ok and status.first_bad_seq == 4 and "decision_id" in status.problem and "d2" in status.problem


def test_consent_ledger_asset_fails_its_blocking_check_on_duplicate_decisions(landing):
    from tests.helpers import check_results, generate, partition_range

    manifest = generate(landing, users=80, events=3000, days=1)
    defs = defs_for_env()
    materialize(defs, "group:raw", partition_range(manifest))
    assert materialize(defs, "key:privacy/consent_ledger").success
    lake = defs.resources["lake"]
    first = lake.read_table("privacy", "consent_ledger", {"segment": "000000000001"}).slice(0, 1)
    HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA).append(first.drop_columns(["seq", "prev_hash", "row_hash"]))
    result = materialize(defs, "key:privacy/consent_ledger", raise_on_error=False)
    assert check_results(result)["privacy/consent_ledger:hash_chain_intact"] is False


# --- the writer lock itself -----------------------------------------------------------------------------


def test_writer_lock_serializes_read_decide_append_across_processes(tmp_path):
    """A process holding `exclusive()` keeps another process's append waiting until it releases."""
    lake_dir = tmp_path / "lake"
    code = (
        "import sys, time\n"
        "from personalization_assets.privacy.consent import LEDGER_SCHEMA\n"
        "from personalization_assets.core.hash_chain import HashChainedLog\n"
        "from personalization_assets.core.storage import LakeStorage\n"
        f"log = HashChainedLog(lake=LakeStorage(url={str(lake_dir)!r}), name='consent_ledger', schema=LEDGER_SCHEMA)\n"
        "with log.exclusive():\n"
        "    print('held', flush=True)\n"
        "    time.sleep(3)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    log = HashChainedLog(lake=LakeStorage(url=str(lake_dir)), name="consent_ledger", schema=LEDGER_SCHEMA, unique_key="decision_id")
    t0 = time.monotonic()
    log.append([row(1)])
    waited = time.monotonic() - t0
    holder.wait(timeout=30)
    assert waited > 1.5, f"append did not wait for the lock holder ({waited:.2f} s)"


def _s3_lake(moto_server) -> LakeStorage:
    import uuid

    import boto3

    bucket = f"t-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=bucket)
    return LakeStorage(url=f"s3://{bucket}/lake", s3_endpoint_url=moto_server, aws_access_key_id="x", aws_secret_access_key="x")


def _kept_while_held(lake: LakeStorage, waiter_timeout: float) -> HashChainedLog:
    """A thread holds the ledger's S3 lease (lifetime 1.5 s) while a waiter tries to take it for `waiter_timeout` s,
    longer than two lifetimes: the waiter must give up (only renewal keeps a lease that long). Returns the waiter,
    once the holder let go."""
    holder = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, lease_seconds=1.5)

    def warmed():
        with holder.exclusive():  # once, released at once: this thread's S3 client is made (~2 s on a busy machine,
            pass                  # longer than the lease lasts)
        return holder.exclusive()

    with held_by_another_thread(warmed):
        waiter = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, lock_timeout=waiter_timeout)
        with pytest.raises(LogLockTimeout):
            waiter.append([row(1)])
    return waiter


def test_s3_lease_renewal_survives_a_conflict_and_an_error(moto_server, monkeypatch):
    """A renewal answered 409 (a conflicting request in flight) or failing with a transient error leaves the lease with
    its holder: the renewer re-reads the lease (still its own) and renews on that version, or tries again next period.
    The original renewer stopped for good on either, and a waiter took over a live holder once the lease expired."""
    import threading

    from personalization_assets.core import storage

    lake = _s3_lake(moto_server)
    real_put = storage._S3Backend.put_conditional
    faults = ["conflict", "error"]  # the first two renewals

    def flaky_put(self, path, data, if_match, if_none_match):
        if if_match and threading.current_thread().name.startswith("lease-") and faults:
            if faults.pop(0) == "error":
                raise ConnectionError("connection reset by peer")
            return None  # what a 409 ConditionalRequestConflict comes back as
        return real_put(self, path, data, if_match, if_none_match)

    monkeypatch.setattr(storage._S3Backend, "put_conditional", flaky_put)
    waiter = _kept_while_held(lake, waiter_timeout=4.0)
    assert not faults, "both faults happened while the lease was held"
    waiter.append([row(1)])
    assert waiter.verify().rows == 1


def test_an_s3_lease_born_expired_is_not_relied_on(moto_server, monkeypatch):
    """The request creating a lease can take longer than the lease lives (its expiry is computed before the request).
    Another writer then takes the expired lease over, legitimately; the slow writer must not enter as well when its
    request finally returns. The original code did: both writers were inside at once."""
    import threading

    from personalization_assets.core import storage

    lake = _s3_lake(moto_server)
    real_put = storage._S3Backend.put_conditional
    slow_create_done, other_inside = threading.Event(), threading.Event()

    def slow_first_create(self, path, data, if_match, if_none_match):
        etag = real_put(self, path, data, if_match, if_none_match)
        if threading.current_thread().name == "slow-writer" and if_none_match and not slow_create_done.is_set():
            slow_create_done.set()
            assert other_inside.wait(30), "the other writer never took the expired lease over"
        return etag

    monkeypatch.setattr(storage._S3Backend, "put_conditional", slow_first_create)
    inside, most_inside, guard = [0], [0], threading.Lock()

    def critical_section(log: HashChainedLog, signal: threading.Event | None = None):
        with log.exclusive():
            with guard:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
            if signal is not None:
                signal.set()
            time.sleep(1.0)
            with guard:
                inside[0] -= 1

    slow = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, lease_seconds=1.0, lock_timeout=30)
    t = threading.Thread(target=critical_section, args=(slow,), name="slow-writer")
    t.start()
    try:
        assert slow_create_done.wait(30)
        other = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, lease_seconds=1.0, lock_timeout=30)
        critical_section(other, signal=other_inside)
    finally:
        other_inside.set()
        t.join(60)
    assert not t.is_alive()
    assert most_inside[0] == 1, "two writers held the lease at once"


def test_s3_lease_blocks_while_live_and_is_taken_over_once_expired(moto_server):
    import uuid

    import boto3

    bucket = f"t-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3.create_bucket(Bucket=bucket)
    lake = LakeStorage(url=f"s3://{bucket}/lake", s3_endpoint_url=moto_server, aws_access_key_id="x", aws_secret_access_key="x")
    lease_key = "lake/privacy/consent_ledger/_writer.lease"
    # a live lease of another writer: we wait, then give up with a clear error
    s3.put_object(Bucket=bucket, Key=lease_key, Body=json.dumps({"owner": "other", "expires_at": time.time() + 600}).encode())
    log = HashChainedLog(lake=lake, name="consent_ledger", schema=LEDGER_SCHEMA, unique_key="decision_id", lock_timeout=1.0)
    with pytest.raises(LogLockTimeout, match="_writer.lease"):
        log.append([row(1)])
    assert log.segments() == []
    # its holder died: the lease expires and is taken over
    s3.put_object(Bucket=bucket, Key=lease_key, Body=json.dumps({"owner": "dead", "expires_at": time.time() - 1}).encode())
    log.append([row(1)])
    assert log.verify().ok and log.verify().rows == 1
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=lease_key)  # released


# --- a fresh DAGSTER_HOME opened by several processes at once -------------------------------------------


def test_processes_opening_a_fresh_dagster_home_at_once_all_succeed(tmp_path):
    """Four processes per fresh home, two homes: the original CLI failed in most homes (`table runs
    already exists`, duplicate alembic stamps)."""
    homes = [tmp_path / f"home{h}" for h in range(2)]
    results = collect(start_workers([["init"]] * 8, envs=[{"DAGSTER_HOME": str(homes[i % 2])} for i in range(8)]))
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    for h in range(2):
        assert (tmp_path / f"home{h}" / "dagster.yaml").read_text().startswith("# Local Dagster instance")


def test_s3_lease_is_renewed_while_held(moto_server):
    """A lease held longer than its lifetime stays with its holder (renewed in the background)."""
    waiter = _kept_while_held(_s3_lake(moto_server), waiter_timeout=3.5)
    waiter.append([row(1)])
    assert waiter.verify().rows == 1
