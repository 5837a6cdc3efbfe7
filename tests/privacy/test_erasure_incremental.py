"""The erasure run reads only what could hold an erased subject, and its verification stays a proof.

`privacy/erasure_state` records, per target partition, the listing fingerprint the run verified clean and the
suppression identifiers it was verified against. Each test below breaks a naive version:

* a rerun with nothing new reads no partition of any target (a run costs what changed, not the history);
* an erasure request arriving after the events removes the subject from OLD partitions nobody rewrote (a step that
  only looked at changed partitions would leave them);
* a partition rewritten after the last run, with an erased subject's row planted in it, is read again and cleaned
  (a step that trusted the state without fingerprints would miss it);
* a new key version, a deleted or unreadable state, and a listing that gives no fingerprints each make the run a
  full scan; retention deleting partitions just drops them from the state.

Real assets on a real local lake with a generated landing zone (requests, quarantined lines included).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil

import pyarrow as pa
import pytest

from personalization_assets.core.storage import LakeStorage
from tests.helpers import check_results, defs_for_env, generate, held_by_another_thread, materializations, materialize

BUILD = " or ".join(f"key:{k}" for k in (
    "raw/events", "raw/crm_profiles", "raw/privacy_requests", "privacy/identity_links", "privacy/consent_ledger",
    "privacy/consent_state", "privacy/suppression_list", "consented/events_state"))
REQUESTS = "key:raw/privacy_requests or key:privacy/suppression_list"
ERASE = "key:privacy/erasure_log"
CHECK = "privacy/erasure_log:subjects_absent_everywhere"
# what the run reads besides targets: its inputs, its state and the tails of the hash-chained logs it appends to
NOT_TARGETS = {("privacy", "suppression_list"), ("privacy", "erasure_state"), ("privacy", "access_audit_log"),
               ("privacy", "erasure_log"), ("privacy", "pseudonym_key_ids")}  # and the key ids the keys are checked against


@pytest.fixture(scope="module")
def template(tmp_path_factory, clean_env_module):
    """A lake built once per module from a generated landing (1 day): each test gets its own copy of it."""
    mp = clean_env_module
    root = tmp_path_factory.mktemp("erasure-template")
    data = root / "data"
    data.mkdir()
    keys = {"PERSONALIZATION_PSEUDONYM_KEYS": json.dumps({"1": secrets.token_hex(32)}), "PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION": "1"}
    for name, value in {**keys, "PERSONALIZATION_DATA_DIR": str(data), "PERSONALIZATION_EVENTS_START": "2026-01-01"}.items():
        mp.setenv(name, value)
    generate(data / "landing", users=60, events=2500, days=1, bad_fraction=0.02)
    materialize(defs_for_env(), BUILD)
    return data, keys


@pytest.fixture
def built(template, data_dir, monkeypatch):
    """A private copy of the module's lake, then one erasure run (a full scan: no state yet; the copy's files
    are new files, so no fingerprint of the template could be trusted anyway)."""
    source, keys = template
    shutil.rmtree(data_dir)
    shutil.copytree(source, data_dir, symlinks=True)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    defs = defs_for_env()
    _erase(defs)
    return defs


@pytest.fixture
def reads(monkeypatch):
    """Every (layer, table, partition) read through LakeStorage.read_table during the test."""
    seen: list[tuple[str, str, str]] = []
    real = LakeStorage.read_table

    def spy(self, layer, table, partition=None, columns=None):
        seen.append((layer, table, "/".join(f"{k}={v}" for k, v in (partition or {}).items())))
        return real(self, layer, table, partition, columns)

    monkeypatch.setattr(LakeStorage, "read_table", spy)
    return seen


def _erase(defs, expect_ok=True) -> dict:
    result = materialize(defs, ERASE)
    assert check_results(result)[CHECK] is expect_ok
    return materializations(result)["privacy/erasure_log"]


def _target_reads(reads) -> list[tuple[str, str, str]]:
    return [r for r in reads if (r[0], r[1]) not in NOT_TARGETS]


def _hours(lake, layer="raw", table="events") -> list[dict]:
    return sorted(lake.partitions(layer, table), key=lambda p: (p["date"], p["hour"]))


def _raw_user_rows(lake, user_id: str) -> dict[str, int]:
    """{raw hour: rows of this raw user id} over raw/events."""
    out = {}
    for p in _hours(lake):
        n = sum(1 for u in lake.read_table("raw", "events", p, columns=["user_id"])["user_id"].to_pylist() if u == user_id)
        if n:
            out[f"{p['date']}/{p['hour']}"] = n
    return out


def _consented_rows(lake, pseudonym: str) -> int:
    cols = ["user_pseudonym", "consent_subject"]
    return sum(1 for p in lake.partitions("consented", "events")
               for r in lake.read_table("consented", "events", p, columns=cols).to_pylist() if pseudonym in r.values())


def _request(data_dir, request_id: str, user_id: str) -> None:
    folder = data_dir / "landing" / "privacy_requests"
    (folder / f"late_{request_id}.jsonl").write_text(json.dumps(
        {"request_id": request_id, "type": "erasure", "user_id": user_id, "received_at": "2026-11-28T23:30:00Z",
         "jurisdiction": "EU"}) + "\n")


def _active_user(lake) -> str:
    """A raw user id with events in several hours, still present (not erased) and consented somewhere."""
    counts: dict[str, set] = {}
    for p in _hours(lake):
        for u in set(lake.read_table("raw", "events", p, columns=["user_id"])["user_id"].to_pylist()) - {None}:
            counts.setdefault(u, set()).add(p["hour"])
    return max(sorted(counts), key=lambda u: len(counts[u]))


def _pz(user_id: str) -> str:
    import os

    from personalization_assets.core.pseudonymize import Pseudonymizer

    pz = Pseudonymizer(keys_json=os.environ["PERSONALIZATION_PSEUDONYM_KEYS"],
                       active_version=os.environ.get("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION"))
    return pz.pseudonymize_values([user_id], "id")[0]


def test_a_rerun_with_nothing_new_reads_no_partition_and_says_why_it_is_still_a_proof(built, reads):
    md = _erase(built)
    assert _target_reads(reads) == [], "nothing changed since the last run: no target partition is read"
    scope = md["scope"]
    assert scope["state"] == "used" and scope["new_identifiers"] == 0
    assert scope["partitions_checked_against_whole_list"] == scope["partitions_checked_for_new_identifiers"] == 0
    assert scope["partitions_unchanged_not_read"] > 30
    result = materialize(built, ERASE)
    check = next(ev.event_specific_data for ev in result.all_events if ev.event_type_value == "ASSET_CHECK_EVALUATION")
    assert "verified it clean against every identifier" in check.metadata["scope"].value
    # the log still says what happened to every target in this run
    lake = built.resources["lake"]
    rows = [r for seg in lake.partitions("privacy", "erasure_log") for r in lake.read_table("privacy", "erasure_log", seg).to_pylist()]
    runs = {r["run_id"] for r in rows}
    assert len(runs) == 3 and all(sum(1 for r in rows if r["run_id"] == run) == len(rows) // 3 for run in runs)
    # the state holds no pseudonym (digests of the identifiers only)
    state = lake.read_table("privacy", "erasure_state")
    suppressed = set(lake.read_table("privacy", "suppression_list")["identifier"].to_pylist())
    values = set(state["value"].to_pylist())
    assert suppressed and not suppressed & values
    assert not any(re.match(r"^v[0-9]+:", v or "") for v in values)


def _log_rows(lake) -> list[dict]:
    return [r for seg in lake.partitions("privacy", "erasure_log") for r in lake.read_table("privacy", "erasure_log", seg).to_pylist()]


def _runs(rows) -> list[list[dict]]:
    """The log's rows grouped by run, in log order."""
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["seq"]):
        out.setdefault(r["run_id"], []).append(r)
    return list(out.values())


def test_the_log_names_a_request_in_the_run_that_first_verifies_it_not_in_every_run(built, data_dir):
    """Each run used to copy every request id into each of its rows (one per target): the log grew with requests ×
    runs at a tick every few minutes. A request is now named once, by the run that first verifies it; every run
    states how many requests it verified against and their digest, which an auditor recomputes from the list."""
    from personalization_assets.privacy.operations import requests_digest

    lake = built.resources["lake"]
    listed = sorted(set(lake.read_table("privacy", "suppression_list")["request_id"].to_pylist()))
    assert len(listed) >= 2
    _erase(built)  # a second run: nothing new
    user = _active_user(lake)
    _request(data_dir, "r-named-once", user)
    materialize(built, REQUESTS)
    md = _erase(built)
    assert md["requests_first_verified"] == 1
    _erase(built)
    runs = _runs(_log_rows(lake))
    assert len(runs) == 4
    for run in runs:
        assert len({(r["request_ids"], r["requests_in_force"], r["requests_digest"]) for r in run}) == 1, "one value per run"
        assert all(r["verified"] for r in run)
    first, idle, late, idle_again = (run[0] for run in runs)
    assert sorted(first["request_ids"].split(",")) == listed
    assert idle["request_ids"] == "" and idle_again["request_ids"] == ""
    assert late["request_ids"] == "r-named-once"
    assert [first["requests_in_force"], idle["requests_in_force"], late["requests_in_force"]] == [len(listed), len(listed), len(listed) + 1]
    assert first["requests_digest"] == idle["requests_digest"] == requests_digest(listed)
    assert late["requests_digest"] == idle_again["requests_digest"] == requests_digest(listed + ["r-named-once"])
    # what is named over the log is exactly the requests in force, each once
    named = [i for run in runs for i in run[0]["request_ids"].split(",") if i]
    assert sorted(named) == sorted(listed + ["r-named-once"])


def test_a_request_is_named_again_until_a_run_verifies_it(built, data_dir):
    """A run whose check fails (a residual) has not verified its new request: the next run names it again."""
    lake = built.resources["lake"]
    user = _active_user(lake)
    _request(data_dir, "r-unverified", user)
    materialize(built, REQUESTS)
    # a live writer's temp file (unsearchable) makes the run's residual non-zero
    from personalization_assets.core.storage import locked_temp_path

    hour = _hours(lake)[0]
    with locked_temp_path(lake.full_path(f"raw/events/date={hour['date']}/hour={hour['hour']}"), ".parquet.inprogress"):
        result = materialize(built, ERASE, raise_on_error=False)
    assert check_results(result)[CHECK] is False
    failed = materializations(result)["privacy/erasure_log"]
    assert failed["requests_first_verified"] == 0
    _erase(built)
    runs = _runs(_log_rows(lake))
    assert [run[0]["request_ids"] for run in runs[-2:]] == ["r-unverified", "r-unverified"]
    assert [run[0]["verified"] for run in runs[-2:]] == [False, True]


def test_the_consented_state_does_not_store_an_erased_pseudonym_again(built):
    """The consented step rewrites its state on every run; the signature of a suppressed identifier used to be
    written back each time, and the next erasure run rewrote the whole state (history-sized) to remove it again."""
    lake = built.resources["lake"]
    erased = set(lake.read_table("privacy", "suppression_list")["identifier"].to_pylist())
    assert erased
    materialize(built, "key:consented/events_state")  # a tick of the consented step: nothing to build, state committed
    state = lake.read_table("consented", "events_state", columns=["record", "key", "resolved_subject"])
    assert state.num_rows and not erased & (set(state["key"].to_pylist()) | set(state["resolved_subject"].to_pylist()))
    md = _erase(built)
    assert "consented/events_state" not in md["rows_removed_per_asset"]


def test_a_new_suppression_rebuilds_its_hours_once_and_the_state_forgets_it_after_the_erasure(built, data_dir):
    """Before the erasure run removes a newly suppressed subject, the consented step drops its rows (once, not on
    every run); after it, the state holds nothing of the subject and a consented run rebuilds nothing."""
    lake = built.resources["lake"]
    user = _active_user(lake)
    pz = _pz(user)
    assert _consented_rows(lake, pz) > 0
    _request(data_dir, "r-unerased", user)
    materialize(built, REQUESTS)
    built_hours = []
    for _ in range(2):  # the consented step alone, twice, no erasure run in between
        md = materializations(materialize(built, "key:consented/events_state"))["consented/events_state"]
        built_hours.append(md["hours_built"])
        assert _consented_rows(lake, pz) == 0
    assert built_hours[0] > 0 and built_hours[1] == 0
    _erase(built)
    # the first consented run after it rebuilds the raw hours the erasure rewrote; the next one has nothing to do
    reasons = materializations(materialize(built, "key:consented/events_state"))["consented/events_state"]["stale_hours_by_reason"]
    assert reasons["privacy_inputs_changed"] == 0
    assert materializations(materialize(built, "key:consented/events_state"))["consented/events_state"]["hours_built"] == 0
    state = lake.read_table("consented", "events_state", columns=["key", "resolved_subject"])
    assert pz not in set(state["key"].to_pylist()) | set(state["resolved_subject"].to_pylist())
    assert "consented/events_state" not in _erase(built)["rows_removed_per_asset"]


def test_a_new_request_removes_the_subject_from_old_unchanged_partitions(built, data_dir, reads):
    lake = built.resources["lake"]
    user = _active_user(lake)
    before = _raw_user_rows(lake, user)
    assert len(before) >= 2 and _consented_rows(lake, _pz(user)) > 0
    _request(data_dir, "r-late", user)
    materialize(built, REQUESTS)  # the request lands; no event partition is rewritten
    reads.clear()
    md = _erase(built)
    assert _raw_user_rows(lake, user) == {} and _consented_rows(lake, _pz(user)) == 0
    assert md["rows_removed_per_asset"]["raw/events"] >= sum(before.values())  # and rows of the linked ids
    scope = md["scope"]
    assert scope["state"] == "used" and scope["new_identifiers"] >= 1
    # old partitions were unchanged: checked for the new identifier only (the suppression list itself was rewritten)
    assert scope["partitions_checked_for_new_identifiers"] > 30
    assert scope["partitions_checked_against_whole_list"] <= scope["partitions_rewritten"] + 3
    # and the next run, with nothing new, reads nothing again
    reads.clear()
    assert _erase(built)["scope"]["partitions_checked_for_new_identifiers"] == 0
    assert _target_reads(reads) == []


def test_a_partition_rewritten_after_the_run_with_an_erased_subjects_row_is_caught(built, reads):
    lake = built.resources["lake"]
    erased = set(lake.read_table("privacy", "suppression_list")["identifier"].to_pylist())
    hours = _hours(lake, "consented", "events")
    victim, other = hours[3], hours[5]
    # another step rewrites a consented hour after the erasure run, and a row of an erased subject is in it
    table = lake.read_table("consented", "events", victim)
    planted = table.slice(0, 1).to_pylist()[0]
    planted["user_pseudonym"] = planted["consent_subject"] = sorted(erased)[0]
    planted["message_id"] = "planted-after-erasure"
    lake.write_table("consented", "events", pa.concat_tables([table, pa.Table.from_pylist([planted], schema=table.schema)]),
                     partition=victim)
    reads.clear()
    md = _erase(built)
    assert md["rows_removed_per_asset"] == {"consented/events": 1}
    assert "planted-after-erasure" not in lake.read_table("consented", "events", victim)["message_id"].to_pylist()
    path = f"date={victim['date']}/hour={victim['hour']}"
    target_reads = _target_reads(reads)
    assert ("consented", "events", path) in target_reads  # read, then read again after the rewrite
    assert ("consented", "events", f"date={other['date']}/hour={other['hour']}") not in target_reads
    assert {(layer, t) for layer, t, _ in target_reads} == {("consented", "events")}
    assert md["scope"]["partitions_checked_against_whole_list"] == 1 and md["scope"]["partitions_rewritten"] == 1


def test_retention_deleting_partitions_drops_them_from_the_state(built, reads):
    lake = built.resources["lake"]
    gone = _hours(lake)[0]
    lake.delete_partition("raw", "events", gone)
    md = _erase(built)
    assert _target_reads(reads) == [] and md["scope"]["partitions_checked_against_whole_list"] == 0
    state = lake.read_table("privacy", "erasure_state").to_pylist()
    raw = {r["partition"] for r in state if r["record"] == "partition" and r["table"] == "raw/events"}
    assert f"date={gone['date']}/hour={gone['hour']}" not in raw and len(raw) == len(_hours(lake))


def _full(md, lake_partitions: int) -> None:
    assert md["scope"]["partitions_checked_against_whole_list"] == lake_partitions
    assert md["scope"]["partitions_unchanged_not_read"] == 0


def test_a_new_key_version_invalidates_the_state(built, monkeypatch, reads):
    first = _erase(built)["scope"]["partitions_unchanged_not_read"]
    keys = json.loads(__import__("os").environ["PERSONALIZATION_PSEUDONYM_KEYS"])
    keys["2"] = secrets.token_hex(32)
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps(keys))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "2")
    defs = defs_for_env()
    materialize(defs, "key:privacy/key_rotation_log")
    md = _erase(defs)
    assert md["scope"]["state"] == "key_version_changed"
    _full(md, first)
    assert _erase(defs)["scope"]["state"] == "used"


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_missing_or_unreadable_state_means_a_full_scan(built, data_dir, damage):
    lake = built.resources["lake"]
    n = _erase(built)["scope"]["partitions_unchanged_not_read"]
    path = data_dir / "lake" / "privacy" / "erasure_state" / "data.parquet"
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"PAR1 not a parquet file")
    md = _erase(built)
    assert md["scope"]["state"] == ("missing" if damage == "deleted" else "unreadable")
    _full(md, n)
    assert lake.read_table("privacy", "erasure_state").num_rows > n  # rewritten whole and valid again
    assert _erase(built)["scope"]["state"] == "used"


def test_without_fingerprints_every_partition_is_read_and_none_recorded(built, monkeypatch, reads):
    n = _erase(built)["scope"]["partitions_unchanged_not_read"]

    def fails(self, layer, table):
        raise OSError("listing failed")

    monkeypatch.setattr(LakeStorage, "partition_fingerprints", fails)
    reads.clear()
    md = _erase(built)
    _full(md, n)
    assert len(_target_reads(reads)) == n
    assert "raw/events" in md["scope"]["tables_without_fingerprints"]
    state = built.resources["lake"].read_table("privacy", "erasure_state")
    assert "partition" not in state["record"].to_pylist()  # nothing verified by fingerprint: the next run reads all


def test_the_erasure_and_the_rotation_wait_for_a_build_holding_the_tables_they_rewrite(built, monkeypatch):
    """A build in progress (another run) holds its tables' writer lock while it reads and rewrites them; the erasure run
    and the key rotation rewrite those tables in place, and hold that lock too. Without it, a build writing between
    their read and their write lost its rows (a raw hour the ingestion merged into meanwhile) or kept a per-person
    state that later builds reuse (features/state_*: a withdrawn subject's events back in the features)."""
    from personalization_assets.consented.assets import CRM_LOCK
    from personalization_assets.consented.state import STATE_LOCK
    from personalization_assets.core.hash_chain import table_writer_lock
    from personalization_assets.privacy.assets import IDENTITY_LOCK
    from personalization_assets.features.assets import BUILD_LOCK
    from personalization_assets.privacy import operations
    from personalization_assets.raw.assets import INGESTION_LOCK

    lake = built.resources["lake"]
    # every table whose builder holds a lock declares it, for the erasure and the rotation to find
    locks = operations.table_writer_locks(built.resolve_asset_graph())
    assert locks["raw/events"] == locks["raw/events_quarantine"] == INGESTION_LOCK
    assert locks["consented/events_state"] == STATE_LOCK
    assert locks["features/events_clean"] == locks["features/state_persons"] == locks["features/state_subjects"] == BUILD_LOCK
    assert locks["privacy/identity_links"] == locks["privacy/identity_partials"] == IDENTITY_LOCK
    assert locks["consented/crm_profiles"] == CRM_LOCK
    monkeypatch.setattr(operations, "BUILDER_LOCK_TIMEOUT", 2.0)  # give up quickly instead of waiting for the build

    for spec, selection in ((INGESTION_LOCK, ERASE), (STATE_LOCK, "key:privacy/key_rotation_log")):
        with held_by_another_thread(lambda spec=spec: table_writer_lock(lake, spec)):  # a build in progress
            result = materialize(built, selection, raise_on_error=False)
        assert not result.success, f"{selection} rewrote tables while a build held {spec['layer']}/{spec['name']}"
        failure = "".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
        assert f"{spec['layer']}/{spec['name']}" in failure
        assert materialize(built, selection).success  # the build done, it goes through


def _consented_hours_of(lake, pseudonym: str) -> list[dict]:
    cols = ["user_pseudonym", "consent_subject"]
    return [p for p in _hours(lake, "consented", "events")
            if any(pseudonym in r.values() for r in lake.read_table("consented", "events", p, columns=cols).to_pylist())]


def test_the_builds_without_a_lock_for_their_whole_build_hold_one_now(built):
    """privacy/identity_links (and its hourly partials) and consented/crm_profiles were rewritten by their builds with
    no lock: a build that read a raw hour or the suppression list before an erasure wrote the erased subject back
    after the erasure had verified the table. Each build now holds its writer lock (declared for the erasure, above):
    while another holder has it, the build waits."""
    import threading

    from personalization_assets.consented.assets import CRM_LOCK
    from personalization_assets.core.hash_chain import table_writer_lock
    from personalization_assets.privacy.assets import IDENTITY_LOCK

    lake = built.resources["lake"]
    for spec, selection in ((IDENTITY_LOCK, "key:privacy/identity_links"), (CRM_LOCK, "key:consented/crm_profiles")):
        done: list = []
        with held_by_another_thread(lambda spec=spec: table_writer_lock(lake, spec)):  # an erasure rewriting the table
            build = threading.Thread(target=lambda selection=selection: done.append(materialize(built, selection).success))
            build.start()
            build.join(8)
            assert not done, f"{selection} was built while another holder had {spec['layer']}/{spec['name']}"
        build.join(120)
        assert done == [True]


def test_the_erasure_rewrites_a_consented_hour_under_the_hours_lock(built, data_dir, monkeypatch):
    """The consented hours are written by concurrent runs, each hour under its own lock: the erasure rewriting an
    hour holds that hour's lock (else a write between its read and its write is lost), and waits for it."""
    from personalization_assets.core.hash_chain import partition_writer_lock
    from personalization_assets.privacy import erasure

    lake = built.resources["lake"]
    user = _active_user(lake)
    hour = _consented_hours_of(lake, _pz(user))[0]
    _request(data_dir, "r-hour-lock", user)
    materialize(built, REQUESTS)
    monkeypatch.setattr(erasure, "PARTITION_LOCK_TIMEOUT", 2.0)
    with held_by_another_thread(lambda: partition_writer_lock(lake, "consented", "events", hour)):  # a build writing the hour
        result = materialize(built, ERASE, raise_on_error=False)
    assert not result.success, "the erasure rewrote a consented hour while a build held the hour's lock"
    failure = "".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
    assert f"_partition_locks/events/date={hour['date']}/hour={hour['hour']}" in failure
    _erase(built)
    assert _consented_rows(lake, _pz(user)) == 0


def test_a_build_that_read_the_list_before_an_erasure_does_not_write_the_subject_back(built, data_dir, monkeypatch):
    """Another run's consented step read the suppression list and decided its hours; an erasure then ran to the end
    (the subject removed from every hour, verified); the step writes its hours after that. Each hour's write re-checks
    the list under the hour's lock: the erased subject's rows decided before the erasure are not written."""
    import threading

    from personalization_assets.consented import assets as consented_assets

    lake = built.resources["lake"]
    user = _active_user(lake)
    pseudonym = _pz(user)
    assert _consented_hours_of(lake, pseudonym)
    real, reached, go = consented_assets.write_hour_checked, threading.Event(), threading.Event()

    def stalled(*args, **kwargs):  # the step has decided its first hour from the list it read; it stalls before the write
        if not reached.is_set():
            reached.set()
            assert go.wait(300)
        return real(*args, **kwargs)

    monkeypatch.setattr(consented_assets, "write_hour_checked", stalled)
    done: list = []
    build = threading.Thread(target=lambda: done.append(materialize(
        built, "key:consented/events_state", run_config={"ops": {"consented_events": {"config": {"full_refresh": True}}}})))
    build.start()
    try:
        assert reached.wait(300), "the consented step never wrote an hour"
        _request(data_dir, "r-during-build", user)
        materialize(built, REQUESTS)
        _erase(built)  # verified: the subject is in no hour now
        assert _consented_rows(lake, pseudonym) == 0
    finally:
        go.set()
        build.join(300)
    assert done and done[0].success
    md = [m for m in done[0].all_events if m.event_type_value == "ASSET_MATERIALIZATION"
          and m.event_specific_data.materialization.asset_key.to_user_string() == "consented/events"]
    removed = sum(v.value for m in md if (v := m.event_specific_data.materialization.metadata.get("excluded_erased_during_run")))
    assert _consented_rows(lake, pseudonym) == 0, "the build wrote back rows of a subject erased after it read the list"
    assert removed > 0  # and says so on the hours it wrote
    # nor its identifiers into the state it commits (under the state's lock, after the erasure verified the state)
    erased = set(lake.read_table("privacy", "suppression_list")["identifier"].to_pylist())
    state = lake.read_table("consented", "events_state", columns=["key", "resolved_subject"])
    assert not erased & (set(state["key"].to_pylist()) | set(state["resolved_subject"].to_pylist())), \
        "the build committed an erased subject's identifiers to consented/events_state"
    assert _erase(built)["rows_removed_per_asset"] == {}, "the next erasure found the subject again"
