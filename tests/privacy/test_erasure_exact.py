"""Erasure and suppression match exact, normalized identifiers everywhere — quarantine and temp files too.

Each test reproduces an item of issue #15 on a small hand-built landing zone (events, CRM, catalog and
privacy requests, with quarantined lines of the subjects and of bystanders):

* a request naming ``user_id: "a"`` or a blank email must erase nothing (it is itself quarantined);
* a quarantined line holding the subject's email in upper case is erased;
* a quarantined line holding only an erased subject's anonymousId is erased and does not come back
  when the landing zone is ingested again;
* the temp file of a write killed with SIGKILL is removed when the next run starts, and temp files are
  part of the erasure's verification.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa

from tests.helpers import check_results, defs_for_env, materialize, materializations
from tests.raw.hostile import FOLDER, PARTITION, line, msg

INGEST = "group:raw or key:privacy/identity_links or key:privacy/suppression_list"
ERASE = "key:privacy/suppression_list or key:privacy/erasure_log"
RECEIVED = "2026-11-28T12:00:00Z"

ALICE = {"user_id": "user-alice-01", "anonymous_id": "anon-alice-01", "email": "alice@example.com", "phone": "+49 170 1234567"}


def _event_lines() -> list[bytes]:
    return [
        # the subject: raw events linking her user id, device id and email
        line(msg(1, userId=ALICE["user_id"], anonymousId=ALICE["anonymous_id"])),
        line(msg(2, type="identify", event=None, userId=ALICE["user_id"], anonymousId=ALICE["anonymous_id"],
                 traits={"email": ALICE["email"]})),
        # her quarantined lines: upper-case email only (missing messageId), device id only (truncated JSON)
        line({k: v for k, v in msg(3, type="identify", event=None, userId=None, anonymousId="anon-unlinked-03",
                                       traits={"email": "ALICE@EXAMPLE.COM"}).items() if k != "messageId"}),
        b'{"messageId": "m-4", "type": "track", "event": "Content Viewed", "anonymousId": "anon-alice-01", "timestamp": "2026-11\n',
        # bystanders: a good event and quarantined lines full of letters, blanks and look-alike ids
        line(msg(5, userId="user-bob-05", anonymousId="anon-bob-05")),
        line(msg(6, userId="xuser-alice-012", anonymousId="anon-alice-01x", timestamp="yesterday-ish")),
        line(msg(7, userId="user-carla-07", properties={"note": "a   b   c", "price": "9.99"})),
        b'{"messageId": "m-8", "type": "track", "userId": "user-dan-08", "event": "a   a"\n',
        b"[1, 2, 3]\n",
    ]


def _write_landing(landing, requests: list[dict]) -> None:
    folder = landing / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_bytes(b"".join(_event_lines()))
    (landing / "crm").mkdir(exist_ok=True)
    (landing / "crm" / "export.csv").write_text(
        "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
        f"{ALICE['user_id']},{ALICE['email']},{ALICE['phone']},Alice,A,DE,1990-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n"
        "user-bob-05,bob@example.com,,Bob,B,DE,1980-01-02,2025-01-01T00:00:00Z,free,2025-01-01T00:00:00Z\n"
        f"{ALICE['user_id']},Alice@Example.com,too,few\n"  # her quarantined CRM row (wrong column count)
        "user-erin-09,erin@example.com,a,b\n"  # a bystander's quarantined CRM row
    )
    (landing / "catalog").mkdir(exist_ok=True)
    (landing / "catalog" / "c.jsonl").write_text(
        '{"content_id": "c1", "title": "A", "category": "news"}\n{"title": "a catalog line without id", "category": "a"}\n'
    )
    (landing / "privacy_requests").mkdir(exist_ok=True)
    (landing / "privacy_requests" / "r.jsonl").write_text(
        "".join(json.dumps({"received_at": RECEIVED, "jurisdiction": "EU", **r}) + "\n" for r in requests)
        + '{"request_id": "r-bad", "type": "forget-me", "user_id": "user-frank-10", "received_at": "2026-11-28T12:00:00Z"}\n'
    )


QUARANTINES = ("events_quarantine", "crm_profiles_quarantine", "content_catalog_quarantine", "privacy_requests_quarantine")


def _quarantine(lake, table):
    part = {"date": "2026-11-28", "hour": "13"} if table == "events_quarantine" else None
    return lake.read_table("raw", table, part).to_pylist()


def _snapshot(lake) -> dict:
    return {t: sorted((r["source_file"], r["line_no"]) for r in _quarantine(lake, t)) for t in QUARANTINES}


def _ingest(defs):
    result = materialize(defs, INGEST, (PARTITION, PARTITION))
    checks = check_results(result)
    assert all(v for k, v in checks.items() if k.endswith(":reconciliation")), checks
    return result


def _erasure_log_rows(lake) -> list[dict]:
    return [r for seg in lake.partitions("privacy", "erasure_log") for r in lake.read_table("privacy", "erasure_log", seg).to_pylist()]


BAD_REQUESTS = [
    {"request_id": "r-a", "type": "erasure", "user_id": "a"},
    {"request_id": "r-blank", "type": "erasure", "email": "   "},
    {"request_id": "r-blank-id", "type": "erasure", "user_id": " ", "email": None},
    {"request_id": "r-not-an-email", "type": "erasure", "email": "alice at example"},
]


def test_short_and_blank_identifier_requests_are_quarantined_with_their_reason(landing):
    _write_landing(landing, BAD_REQUESTS)
    defs = defs_for_env()
    lake = defs.resources["lake"]
    _ingest(defs)
    reasons = {json.loads(r["original_text"])["request_id"]: r["reason"] for r in _quarantine(lake, "privacy_requests_quarantine")}
    assert reasons == {"r-a": "identifier_too_short", "r-blank": "blank_identifier", "r-blank-id": "blank_identifier",
                       "r-not-an-email": "invalid_email", "r-bad": "invalid_type"}
    assert lake.read_table("raw", "privacy_requests").num_rows == 0
    assert lake.read_table("privacy", "suppression_list").num_rows == 0, "a quarantined request adds no suppression entry"


def test_erasure_of_short_or_blank_identifiers_deletes_nobody_else(landing):
    """Even if such requests sit in raw/privacy_requests (written before the tracking plan refused them),
    the erasure deletes no quarantined line, raw row or anything else of another person."""
    _write_landing(landing, BAD_REQUESTS)
    defs = defs_for_env()
    lake = defs.resources["lake"]
    _ingest(defs)
    schema = lake.read_table("raw", "privacy_requests").schema
    received = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
    legacy = [{**r, "received_at": received, "jurisdiction": "EU", "source_file": "privacy_requests/old.jsonl", "line_no": i + 1}
              for i, r in enumerate(BAD_REQUESTS)]
    lake.write_table("raw", "privacy_requests", pa.Table.from_pylist(legacy, schema=schema))
    before = _snapshot(lake)
    assert sum(len(v) for v in before.values()) >= 10
    raw_before = lake.read_table("raw", "events", {"date": "2026-11-28", "hour": "13"}).num_rows
    crm_before = lake.read_table("raw", "crm_profiles").num_rows

    result = materialize(defs, ERASE)
    assert _snapshot(lake) == before, "no quarantined line of anybody was deleted"
    assert lake.read_table("raw", "events", {"date": "2026-11-28", "hour": "13"}).num_rows == raw_before
    assert lake.read_table("raw", "crm_profiles").num_rows == crm_before
    assert lake.read_table("privacy", "suppression_list").num_rows == 0, "no suppression entry for a blank or 1-char id"
    assert check_results(result)["privacy/erasure_log:subjects_absent_everywhere"] is True


def test_quarantine_lines_match_exact_tokens_never_substrings(tmp_path):
    """The matcher alone, with the suppression pseudonyms of "a", "   " and the subject."""
    import duckdb

    from personalization_assets.core.pseudonymize import Pseudonymizer
    from personalization_assets.core.quarantine_match import quarantine_match_mask

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"1": "ab" * 32}))
    pz = Pseudonymizer(keys_file=str(keys))
    texts = [line.decode().rstrip("\n") for line in _event_lines()] + [
        "user-alice-01,Alice@Example.com,too,few",  # CSV
        '{"user_id": "a", "note": "exactly the id a"}',
        '{"traits": {"phone": "0049 170 123-4567"}}',
        '{"context": {"traits": {"email": "alice\\u0040example.com"}}}',  # escaped JSON still parses
        None,
    ]
    table = pa.table({"original_text": pa.array(texts, pa.string())})
    con = duckdb.connect()

    def match(*identifiers):
        targets = {pz.pseudonymize_values([v], k)[0] for v, k in identifiers}
        return [i for i, m in enumerate(quarantine_match_mask(con, table, targets, pz.pseudonymize_values).to_pylist()) if m]

    assert match(("a", "id")) == [10], "only the line whose identifier IS 'a'"
    assert match(("   ", "email")) == [], "a blank identifier has no pseudonym and matches nothing"
    assert match(("user-alice-01", "id")) == [0, 1, 9], "not xuser-alice-012"
    assert match(("anon-alice-01", "id")) == [0, 1, 3], "not anon-alice-01x; the truncated line is found"
    assert match((" Alice@Example.COM ", "email")) == [1, 2, 9, 12], "emails trimmed and case-folded"
    assert match(("+49 170 1234567", "phone")) == [11], "phones compared in E.164 form"


def _subject_lines(lake, table) -> list[str]:
    texts = [(r["original_text"] or "") for r in _quarantine(lake, table)]
    return [x for x in texts if "alice@example.com" in x.lower() or '"anon-alice-01"' in x or x.startswith("user-alice-01,")]


def _bystanders(lake) -> dict:
    """Quarantine rows of everybody but the subject (look-alike ids such as xuser-alice-012 included)."""
    mine = {t: set(_subject_lines(lake, t)) for t in QUARANTINES}
    return {t: [(r["source_file"], r["line_no"]) for r in _quarantine(lake, t) if (r["original_text"] or "") not in mine[t]] for t in QUARANTINES}


def test_upper_case_email_in_a_quarantined_line_is_erased_and_bystanders_stay(landing):
    _write_landing(landing, [{"request_id": "r-alice", "type": "erasure", "email": "  Alice@EXAMPLE.com "}])
    defs = defs_for_env()
    lake = defs.resources["lake"]
    _ingest(defs)
    q = {r["line_no"]: r for r in _quarantine(lake, "events_quarantine")}
    assert q[3]["reason"] == "missing_message_id" and "ALICE@EXAMPLE.COM" in q[3]["original_text"]
    assert len(_subject_lines(lake, "events_quarantine")) == 2 and len(_subject_lines(lake, "crm_profiles_quarantine")) == 1
    bystanders = _bystanders(lake)
    assert sum(len(v) for v in bystanders.values()) == 7

    result = materialize(defs, ERASE)
    assert check_results(result)["privacy/erasure_log:subjects_absent_everywhere"] is True
    for t in QUARANTINES:
        assert _subject_lines(lake, t) == [], t
        assert [(r["source_file"], r["line_no"]) for r in _quarantine(lake, t)] == bystanders[t], f"{t}: bystanders kept"
    removed = materializations(result)["privacy/erasure_log"]["rows_removed_per_asset"]
    assert removed["raw/events_quarantine"] == 2 and removed["raw/crm_profiles_quarantine"] == 1
    assert lake.read_table("raw", "events", {"date": "2026-11-28", "hour": "13"})["user_id"].to_pylist() == ["user-bob-05"]
    assert lake.read_table("raw", "crm_profiles")["user_id"].to_pylist() == ["user-bob-05"]


def test_anonymous_id_only_quarantined_line_of_an_erased_subject_does_not_come_back(landing):
    _write_landing(landing, [{"request_id": "r-alice", "type": "erasure", "user_id": ALICE["user_id"]}])
    defs = defs_for_env()
    lake = defs.resources["lake"]
    _ingest(defs)
    anon_only = [r for r in _quarantine(lake, "events_quarantine") if r["line_no"] == 4]
    assert anon_only and anon_only[0]["reason"] == "malformed_json" and '"anon-alice-01"' in anon_only[0]["original_text"]
    bystanders = _bystanders(lake)
    materialize(defs, ERASE)

    # the landing zone still holds her lines: ingesting it again keeps them out, counted as suppressed
    again = _ingest(defs)
    md = materializations(again)
    assert [r["line_no"] for r in _quarantine(lake, "events_quarantine") if r["line_no"] == 4] == [], "the line came back"
    for t in QUARANTINES:
        assert _subject_lines(lake, t) == [], t
        assert [(r["source_file"], r["line_no"]) for r in _quarantine(lake, t)] == bystanders[t], f"{t}: bystanders kept"
    assert md["raw/events"]["suppressed_erased_subjects"] == 4  # 2 raw events + 2 quarantined lines
    assert md["raw/crm_profiles"]["suppressed_erased_subjects"] == 2  # her raw row + her quarantined row
    assert lake.read_table("raw", "crm_profiles")["user_id"].to_pylist() == ["user-bob-05"]
    # and the next erasure run finds nothing left and says so
    second = materialize(defs, ERASE)
    assert check_results(second)["privacy/erasure_log:subjects_absent_everywhere"] is True
    assert not materializations(second)["privacy/erasure_log"]["rows_removed_per_asset"]
    assert all(r["verified"] for r in _erasure_log_rows(lake))


WRITER = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from personalization_assets.core.storage import LakeStorage

    lake = LakeStorage(url=sys.argv[1])
    schema = pa.schema([("user_id", pa.string()), ("anonymous_id", pa.string())])

    def batches():
        yield pa.record_batch([pa.array(["user-alice-01"] * 1000), pa.array(["anon-alice-01"] * 1000)], schema=schema)
        print("writing", flush=True)
        time.sleep(600)  # killed here, mid-write
        yield pa.record_batch([pa.array(["late"]), pa.array(["late"])], schema=schema)

    lake.write_table("raw", "events", batches(), partition={"date": "2026-11-28", "hour": "14"}, schema=schema)
    """
)


def _start_writer(lake_dir) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(lake_dir)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temp_files(lake_dir) -> list[str]:
    """`_tmp-*` files under the lake, found by walking the disk (not through the code under test)."""
    return sorted(str(p.relative_to(lake_dir)) for p in lake_dir.rglob("_tmp-*"))


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_temp_file_of_a_killed_write_is_removed_at_next_run_start_and_verified_by_erasure(landing, data_dir):
    _write_landing(landing, [{"request_id": "r-alice", "type": "erasure", "email": ALICE["email"]}])
    defs = defs_for_env()
    lake = defs.resources["lake"]
    _ingest(defs)
    lake_dir = data_dir / "lake"

    killed = _start_writer(lake_dir)
    _kill(killed)
    leftovers = _temp_files(lake_dir)
    assert len(leftovers) == 1 and leftovers[0].startswith("raw/events/date=2026-11-28/hour=14/_tmp-")
    assert leftovers[0].endswith(".parquet.inprogress")
    assert b"user-alice-01" in (lake_dir / leftovers[0]).read_bytes(), "the orphan holds raw event data"
    assert not lake.exists("raw", "events", {"date": "2026-11-28", "hour": "14"})

    live = _start_writer(lake_dir)  # a concurrent run still writing: its file must survive every sweep
    try:
        live_files = [f for f in _temp_files(lake_dir) if f != leftovers[0]]
        assert len(live_files) == 1
        materialize(defs, "key:raw/content_catalog")  # any run start sweeps
        assert _temp_files(lake_dir) == live_files, "the killed write's file is gone, the live one stays"

        # erasure verification covers temp files: a live writer's unsearchable file is residue, not "verified"
        result = materialize(defs, ERASE, raise_on_error=False)
        assert check_results(result)["privacy/erasure_log:subjects_absent_everywhere"] is False
        rows = _erasure_log_rows(lake)
        from personalization_assets.privacy.operations import TEMP_FILES

        temp_row = [r for r in rows if r["asset"] == TEMP_FILES]
        assert temp_row and temp_row[-1]["residual_rows"] == 1
        assert not any(r["verified"] for r in rows), "the log never says verified while residue remains"
    finally:
        if live.poll() is None:
            _kill(live)
    # the writer died: the next erasure run removes its file and verifies
    result = materialize(defs, ERASE)
    assert check_results(result)["privacy/erasure_log:subjects_absent_everywhere"] is True
    assert _temp_files(lake_dir) == []
    rows = [r for r in _erasure_log_rows(lake) if r["run_id"] == result.run_id]
    assert rows and all(r["verified"] for r in rows)
    assert [r["residual_rows"] for r in rows if r["asset"] == TEMP_FILES] == [0]
