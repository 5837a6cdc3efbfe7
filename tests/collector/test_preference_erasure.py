"""The preference center's store holds personal data: it keeps no raw identifier, an erasure reaches it, and it
orders decisions by time as the consent ledger does.

The end-to-end test runs a real collector on loopback fed by the Segment SDK, a privacy request landed as a file and
the platform's own assets (raw/events, raw/privacy_requests, privacy/identity_links, privacy/suppression_list)
materialized by Dagster; the collector then forgets every identifier the platform linked to the erased subject —
including an anonymous id linked only by a later `identify` it never saw in a consent event — and nobody else.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from datetime import datetime, timedelta, timezone

import duckdb
import requests
from segment.analytics.client import Client as SegmentClient

from personalization_assets.collector.preference_store import PreferenceStore
from personalization_assets.core.policies import get_policy
from personalization_assets.core.pseudonymize import KeyChain, normalize
from personalization_assets.core.tracking_plan import CONSENT_EVENT
from tests.collector.conftest import WRITE_KEY, start_collector, stored_choices
from tests.helpers import defs_for_env, materialize

ALL_GRANTED = {c: True for c in ("personalization", "analytics", "performance", "advertising", "marketing", "data_sharing")}
EVERYTHING = {"personalization", "analytics", "advertising", "sale_share"}


def _on_disk(state_dir) -> bytes:
    """Every byte of the store's files (database, write-ahead log, shared memory)."""
    return b"".join(p.read_bytes() for p in state_dir.glob("preferences.sqlite*"))


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_an_erasure_reaches_the_preference_store_through_the_platforms_identity_links(data_dir, tmp_path):
    tag = uuid.uuid4().hex[:8]
    erased, email, anon, late_anon = f"erased-{tag}", f"erased-{tag}@example.com", f"anon-e-{tag}", f"anon-late-{tag}"
    kept, kept_anon = f"kept-{tag}", f"anon-k-{tag}"
    state_dir = data_dir / "collector"
    c = start_collector(tmp_path / "collector.log", extra_env={"PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS": "1"})
    try:
        client = SegmentClient(write_key=WRITE_KEY, host=c.url, upload_size=100, upload_interval=0.05, max_retries=3)
        now = datetime.now(timezone.utc) - timedelta(minutes=30)
        consent = {"consent": {"categoryPreferences": ALL_GRANTED}, "location": {"country": "DE"}}
        for user, a in ((erased, anon), (kept, kept_anon)):
            client.identify(user_id=user, anonymous_id=a, traits={"email": email if user == erased else f"{user}@example.com"},
                            timestamp=now, message_id=f"{user}-identify")
            client.track(user_id=user, anonymous_id=a, event=CONSENT_EVENT, context=consent, timestamp=now + timedelta(seconds=1),
                         message_id=f"{user}-cmp")
        # a second device: consent recorded anonymously; it is linked to the user only by a later identify
        client.track(anonymous_id=late_anon, event=CONSENT_EVENT, context=consent, timestamp=now + timedelta(seconds=2),
                     message_id=f"{late_anon}-cmp")
        client.identify(user_id=erased, anonymous_id=late_anon, timestamp=now + timedelta(seconds=3), message_id=f"{late_anon}-identify")
        client.flush()
        stored = stored_choices(state_dir, data_dir)
        for subject in (f"user:{erased}", f"anon:{anon}", f"anon:{late_anon}", f"user:{kept}", f"anon:{kept_anon}"):
            assert stored[subject][0] == dict.fromkeys(EVERYTHING, "granted"), subject
        raw = _on_disk(state_dir)
        assert all(v.encode() not in raw for v in (erased, email, anon, late_anon, kept, kept_anon))  # pseudonyms only

        # the data-subject request arrives as a file, by email only; the platform resolves who that is
        requests_dir = data_dir / "landing" / "privacy_requests"
        requests_dir.mkdir(parents=True)
        (requests_dir / "dsr.jsonl").write_text(json.dumps({"request_id": f"dsr-{tag}", "type": "erasure", "email": email,
                                                            "received_at": datetime.now(timezone.utc).isoformat(), "jurisdiction": "EU"}) + "\n")
        from personalization_assets.cli import landing_partition_keys

        defs = defs_for_env()
        keys = landing_partition_keys(defs, None)
        materialize(defs, "key:raw/events", (keys[0], keys[-1]))
        materialize(defs, "key:raw/privacy_requests or key:privacy/identity_links or key:privacy/suppression_list")

        gone = (f"user:{erased}", f"anon:{anon}", f"anon:{late_anon}")
        assert _wait(lambda: not any(s in stored_choices(state_dir, data_dir) for s in gone)), c.log.read_text()[-2000:]
        stored = stored_choices(state_dir, data_dir)
        assert stored[f"user:{kept}"][0] == stored[f"anon:{kept_anon}"][0] == dict.fromkeys(EVERYTHING, "granted")
        pz = defs.resources["pseudonymizer"]
        erased_pseudonyms = pz.pseudonymize_values([erased, anon, late_anon], "id")
        time.sleep(0.5)
        raw = _on_disk(state_dir)
        assert all(p.encode() not in raw for p in erased_pseudonyms)  # overwritten, not left in free pages or the log

        # the center shows the erased visitor nothing of theirs
        page = requests.get(c.url + "/privacy/preferences", cookies={"ajs_anonymous_id": json.dumps(anon)}, timeout=10)
        assert page.status_code == 200 and re.findall(r"<input[^>]*\bchecked\b", page.text) == []
        kept_page = requests.get(c.url + "/privacy/preferences", cookies={"ajs_anonymous_id": json.dumps(kept_anon)}, timeout=10)
        assert len(re.findall(r"<input[^>]*\bchecked\b", kept_page.text)) == len(EVERYTHING)  # the check can see a choice
        # the read of the suppression list is in the access audit log, under the collector's declared purpose
        con = duckdb.connect()
        defs.resources["lake"].register(con, "audit", "privacy", "access_audit_log")
        assert con.execute("select purpose from audit where reader = 'collector/preference_center' "
                           "and asset = 'privacy/suppression_list'").fetchall()[:1] == [("privacy_request",)]

        # a later consent event of the erased subject is not recorded (ingestion drops it likewise)
        client.track(user_id=erased, anonymous_id=anon, event=CONSENT_EVENT, context=consent, message_id=f"{erased}-again")
        client.track(user_id=kept, event=CONSENT_EVENT, context={"consent": {"categoryPreferences": {**ALL_GRANTED, "analytics": False}}},
                     message_id=f"{kept}-again")
        client.flush()
        client.shutdown()
        stored = stored_choices(state_dir, data_dir)
        assert stored[f"user:{kept}"][0]["analytics"] == "denied"  # written after the erased subject's event
        assert f"user:{erased}" not in stored and f"anon:{anon}" not in stored
    finally:
        c.stop()
    # a restarted collector forgets them before its first request too (its first poll is at start)
    c = start_collector(tmp_path / "collector2.log", extra_env={"PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS": "3600"})
    try:
        assert f"user:{erased}" not in stored_choices(state_dir, data_dir)
    finally:
        c.stop()


def _chain(*versions: str, active: str | None = None) -> KeyChain:
    keys = {v: bytes([int(v)]) * 32 for v in versions}
    return KeyChain(keys, active or max(versions, key=int))


def _consent(user: str, at: datetime, categories: dict, received: datetime | None = None, gpc: bool = False) -> dict:
    context = {"consent": {"categoryPreferences": categories}}
    if gpc:
        context["gpc"] = True
    return {"type": "track", "event": CONSENT_EVENT, "userId": user, "timestamp": at.isoformat(),
            "receivedAt": (received or at).isoformat(), "context": context}


T0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
DENY_P = {**ALL_GRANTED, "personalization": False}


def test_the_store_orders_decisions_by_time_not_arrival(tmp_path):
    store = PreferenceStore(tmp_path / "p.sqlite", get_policy(), _chain("1"))
    store.forget(set())  # the suppression list read (empty): the store records from now on
    store.observe([_consent("u", T0 + timedelta(minutes=10), DENY_P)])
    store.observe([_consent("u", T0, ALL_GRANTED)])  # older, arrives late: changes nothing
    assert store.current("u", None)[0]["personalization"] == "denied"
    # a client clock ahead: the grant takes effect when it was received, before the withdrawal at +10 min
    store.observe([_consent("v", T0 + timedelta(hours=20), ALL_GRANTED, received=T0 + timedelta(minutes=5))])
    store.observe([_consent("v", T0 + timedelta(minutes=10), DENY_P)])
    assert store.current("v", None)[0]["personalization"] == "denied"
    # the same instant, either order: the denial wins (the consent state's rule)
    for first, second, who in ((ALL_GRANTED, DENY_P, "w1"), (DENY_P, ALL_GRANTED, "w2")):
        store.observe([_consent(who, T0, first)])
        store.observe([_consent(who, T0, second)])
        assert store.current(who, None)[0]["personalization"] == "denied", who
    # GPC stays: a later grant does not lift it
    store.observe([_consent("g", T0, {}, gpc=True)])
    store.observe([_consent("g", T0 + timedelta(minutes=1), ALL_GRANTED)])
    view, gpc = store.current("g", None)
    assert gpc and view["sale_share"] == "denied" and view["personalization"] == "granted"
    store.close()


def test_a_store_of_raw_ids_is_pseudonymized_when_opened_and_a_rotation_keeps_it(tmp_path):
    path = tmp_path / "p.sqlite"
    old = sqlite3.connect(path)
    old.execute("create table subjects (subject text primary key, purposes text not null, gpc integer not null, updated_at text not null)")
    old.execute("insert into subjects values ('user:jane.raw@example.com', ?, 0, ?)",
                (json.dumps({"personalization": "granted"}), T0.isoformat()))
    old.commit()
    old.close()
    store = PreferenceStore(path, get_policy(), _chain("1"))
    store.forget(set())  # the first sync: the old store is pseudonymized before the center serves it
    assert store.current("jane.raw@example.com", None)[0] == {"personalization": "granted"}
    store.close()
    assert b"jane.raw" not in b"".join(p.read_bytes() for p in tmp_path.glob("p.sqlite*"))

    # the key rotates (version 2 active): the row is forwarded along the chain, no raw id needed
    store = PreferenceStore(path, get_policy(), _chain("1", "2"))
    store.forget(set())
    assert store.current("jane.raw@example.com", None)[0] == {"personalization": "granted"}
    v1 = _chain("1").pseudonym(normalize("jane.raw@example.com", "id"))
    assert store.forget({v1}) == 1  # a suppression list still under the old version reaches it too
    assert store.current("jane.raw@example.com", None) == ({}, False)
    store.observe([_consent("jane.raw@example.com", T0 + timedelta(days=1), ALL_GRANTED)])
    assert store.current("jane.raw@example.com", None) == ({}, False)  # erased: not recorded again
    store.close()


def test_a_message_ingestion_drops_as_an_erased_subjects_is_not_recorded_under_any_of_its_ids(tmp_path):
    """Ingestion drops a whole message when any of its identifiers is erased (userId, anonymousId, previousId,
    traits.email). The store skipped only the erased id: an erased user's new device, or a new device sending the
    erased email in context.traits, got a row no erasure would ever reach (ingestion never links that device)."""
    chain = _chain("1")
    store = PreferenceStore(tmp_path / "p.sqlite", get_policy(), chain)
    erased_user, erased_email = chain.pseudonym(normalize("gone", "id")), chain.pseudonym(normalize("Gone@Example.com", "email"))
    store.forget({erased_user, erased_email})
    new_device = {**_consent("gone", T0, ALL_GRANTED), "anonymousId": "fresh-device"}
    by_email = {**_consent("x", T0, ALL_GRANTED), "anonymousId": "other-device"}
    del by_email["userId"]
    by_email["context"]["traits"] = {"email": " gone@example.com "}
    previous = {**_consent("y", T0, ALL_GRANTED), "anonymousId": "third-device", "previousId": "gone"}
    store.observe([new_device, by_email, previous, _consent("kept", T0, ALL_GRANTED)])
    for anon in ("fresh-device", "other-device", "third-device"):
        assert store.current(None, anon) == ({}, False), anon
    assert store.current("y", None) == ({}, False)
    assert store.current("kept", None)[0]["personalization"] == "granted"
    # a timestamp ingestion quarantines (no offset) is not shown either
    store.observe([{**_consent("naive", T0, ALL_GRANTED), "timestamp": "2026-12-01T11:00:00"}])
    assert store.current("naive", None) == ({}, False)
    # nor one with an id of another JSON type (ingestion quarantines it as wrong_type, whole)
    store.observe([{**_consent("typed", T0, ALL_GRANTED), "anonymousId": 12345}, {**_consent(None, T0, ALL_GRANTED), "anonymousId": "dev-n",
                                                                                  "userId": 42}])
    assert store.current("typed", None) == ({}, False) and store.current(None, "dev-n") == ({}, False)
    store.close()


def test_consent_events_wait_until_the_list_was_read_and_a_failed_apply_is_retried(tmp_path):
    """Before the suppression list was read the store does not know who is erased: consent events wait (then apply,
    the erased ones skipped). A sync whose apply failed (a locked store, a storage error) is retried at the next one:
    the feed counted the list as seen before applying it, so a failure left erased subjects shown until a restart."""
    import pyarrow as pa

    from personalization_assets.collector.preference_store import SuppressionFeed
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA

    chain = _chain("1")
    store = PreferenceStore(tmp_path / "p.sqlite", get_policy(), chain)
    store.observe([_consent("gone", T0, ALL_GRANTED), _consent("kept", T0, ALL_GRANTED)])
    assert not store.ready and store.current("kept", None) == ({}, False)
    lake = LakeStorage(url=str(tmp_path / "lake"), lock_dir=str(tmp_path / "locks"))
    lake.write_table("privacy", "suppression_list", pa.Table.from_pylist(
        [{"request_id": "r", "identifier": chain.pseudonym("gone"), "identifier_kind": "user", "requested_at": T0}],
        schema=SUPPRESSION_SCHEMA))
    reads = []
    feed = SuppressionFeed(lake, lambda: reads.append(1))

    def failing(ids):
        raise OSError("database is locked")

    try:
        feed.sync(failing)
    except OSError:
        pass
    assert not store.ready
    assert feed.sync(store.forget) is True  # the same list, applied now
    assert store.current("gone", None) == ({}, False) and store.current("kept", None)[0]["personalization"] == "granted"
    assert feed.sync(store.forget) is False and len(reads) == 2  # unchanged: listed, not read again
    store.close()


def test_a_list_rekeyed_past_the_collectors_keys_is_refused_and_the_old_refusals_stay(tmp_path):
    """The rotation job re-keys the suppression list; a collector still on the old key map cannot match those
    pseudonyms: applying them would empty its refusals and record erased subjects again."""
    import pytest

    from personalization_assets.collector.preference_store import NewerKeyError

    old = _chain("1")
    store = PreferenceStore(tmp_path / "p.sqlite", get_policy(), old)
    store.forget({old.pseudonym("gone")})
    with pytest.raises(NewerKeyError, match="PERSONALIZATION_PSEUDONYM_KEYS"):
        store.forget({_chain("1", "2").pseudonym("gone")})
    store.observe([_consent("gone", T0, ALL_GRANTED)])
    assert store.current("gone", None) == ({}, False)
    store.close()


def test_events_are_collected_while_the_lake_cannot_be_read_and_the_center_waits_for_it(data_dir, tmp_path):
    """The store's reads of the lake never stop the collection of events: with an unreadable suppression list the
    tracking API answers 200, /health says what the center waits for, the center answers 503, and the consent events
    received meanwhile are applied once the list can be read."""
    lake_list = data_dir / "lake" / "privacy" / "suppression_list"
    lake_list.mkdir(parents=True)
    (lake_list / "data.parquet").write_bytes(b"not parquet at all")
    c = start_collector(tmp_path / "collector.log", wait=False,
                        extra_env={"PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS": "1"})
    try:
        assert _wait(lambda: _health(c) is not None and "waiting" in _health(c)["preference_center"]), c.log.read_text()[-2000:]
        client = SegmentClient(write_key=WRITE_KEY, host=c.url, upload_size=10, upload_interval=0.05, max_retries=3)
        client.track(user_id="meanwhile", event=CONSENT_EVENT, context={"consent": {"categoryPreferences": ALL_GRANTED}},
                     message_id="meanwhile-cmp")
        client.flush()
        client.shutdown()
        assert any(p.name.endswith(".jsonl.gz") for p in (data_dir / "landing" / "events").rglob("*"))  # collected
        page = requests.get(c.url + "/privacy/preferences", timeout=10)
        assert page.status_code == 503 and "not available" in page.text
        assert c.metrics()["collector_preference_sync_failures_total"] >= 1

        (lake_list / "data.parquet").unlink()  # the list readable again (none yet)
        assert _wait(lambda: (_health(c) or {}).get("preference_center") == "ready"), c.log.read_text()[-2000:]
        assert stored_choices(data_dir / "collector", data_dir)["user:meanwhile"][0]["personalization"] == "granted"
        assert requests.get(c.url + "/privacy/preferences", timeout=10).status_code == 200
    finally:
        c.stop()


def _health(c) -> dict | None:
    try:
        return requests.get(c.url + "/health", timeout=2).json()
    except (requests.RequestException, ValueError):
        return None


def test_an_erased_users_other_device_goes_with_them(tmp_path):
    """A consent event carrying the user and a new device landed before the erasure reached the list, and is ingested
    after: ingestion drops it, so the platform never links that device and the list never names it. The store
    deleted only the rows of listed ids: the device kept its row for good. Every row a message wrote is linked to
    each of the message's identifiers (pseudonyms), and goes when any of them is listed."""
    chain = _chain("1")
    store = PreferenceStore(tmp_path / "p.sqlite", get_policy(), chain)
    store.forget(set())
    store.observe([{**_consent("user-u", T0, ALL_GRANTED), "anonymousId": "new-device-a2"},
                   {**_consent("other", T0, ALL_GRANTED), "anonymousId": "other-device"}])
    assert store.current(None, "new-device-a2")[0]["analytics"] == "granted"
    assert store.forget({chain.pseudonym("user-u")}) == 2
    assert store.current(None, "new-device-a2") == ({}, False) and store.current("user-u", None) == ({}, False)
    assert store.current(None, "other-device")[0]["analytics"] == "granted"
    store.close()


def test_the_store_opens_at_once_and_its_slow_work_runs_in_the_sync_thread(tmp_path):
    """Re-keying every row after a rotation (70 s for 1M rows) ran in the constructor, before the server listened:
    past the startup probe the pod was killed and redid it from the start. It runs in `prepare` (the sync thread), in
    batches of their own transactions; a flush without a consent event does not wait for the lock either."""
    import threading

    path = tmp_path / "p.sqlite"
    store = PreferenceStore(path, get_policy(), _chain("1"))
    store.forget(set())
    store.observe([_consent(f"u{i}", T0, ALL_GRANTED) for i in range(2500)])
    store.close()
    rotated = PreferenceStore(path, get_policy(), _chain("1", "2"))
    versions = {s.split(":", 2)[1] for (s,) in rotated._conn.execute("select subject from choices")}
    assert versions == {"v1"} and not rotated.ready  # nothing re-keyed yet: the center waits, the tracking API serves
    rotated.observe([{"type": "track", "event": "Page Viewed", "userId": "u1"}])  # no consent event: returns
    with rotated._lock:  # held (a batch of the sync thread's work): a flush without a consent event does not wait
        done = threading.Event()
        threading.Thread(target=lambda: (rotated.observe([{"type": "identify", "userId": "x"}]), done.set())).start()
        assert done.wait(2)
    rotated.forget(set())
    assert {s.split(":", 2)[1] for (s,) in rotated._conn.execute("select subject from choices")} == {"v2"}
    assert rotated.current("u7", None)[0]["analytics"] == "granted"
    # pending events keep no raw identifier (a few hundred bytes each, not the whole message)
    fresh = PreferenceStore(tmp_path / "q.sqlite", get_policy(), _chain("1"))
    fresh.observe([{**_consent("raw-user-id", T0, ALL_GRANTED), "properties": {"blob": "x" * 20_000}}])
    assert "raw-user-id" not in repr(fresh._pending) and len(repr(fresh._pending)) < 2_000
    rotated.close()
    fresh.close()


def test_a_list_refused_for_its_key_version_is_not_read_again_until_it_changes(tmp_path):
    """Each poll read and audited the same re-keyed list again (a write-once audit segment a minute, locked 6 years)."""
    import pyarrow as pa
    import pytest

    from personalization_assets.collector.preference_store import NewerKeyError, SuppressionFeed
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA

    lake = LakeStorage(url=str(tmp_path / "lake"), lock_dir=str(tmp_path / "locks"))
    lake.write_table("privacy", "suppression_list", pa.Table.from_pylist(
        [{"request_id": "r", "identifier": _chain("1", "2").pseudonym("gone"), "identifier_kind": "user", "requested_at": T0}],
        schema=SUPPRESSION_SCHEMA))
    store = PreferenceStore(tmp_path / "p.sqlite", get_policy(), _chain("1"))
    reads = []
    feed = SuppressionFeed(lake, lambda: reads.append(1))
    for _ in range(3):
        with pytest.raises(NewerKeyError):
            feed.sync(store.forget)
    assert len(reads) == 1
    store.close()
