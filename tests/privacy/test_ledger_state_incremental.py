"""The consent ledger is verified from a checkpoint and privacy/consent_state is folded forward, and both stay exact.

Ledger (privacy/ledger_checkpoint.py): a steady run re-verifies only the segment it appended; a row edited in an OLD
(checkpointed) segment — even with the file's mtime put back — and a removed segment (the newest one too, which
leaves a valid shorter chain) still fail the blocking `hash_chain_intact` check.

State (privacy/consent_state_incremental.py): after each of several arrival batches — a login stitching an
anonymous id (with its own denial) to a consented user, a late grant and a withdrawal, an erasure after the
subject's events, a key rotation, then a batch under the new key while the ledger holds old-key rows — the folded
state equals a rebuild from scratch (the original algorithm over the whole ledger) row for row, only the touched
subjects were recomputed, and an erased subject never comes back.

Real assets on a real local lake with small hand-written landings (tests/privacy/test_consented_incremental.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import check_results, defs_for_env, materialize, materializations
from tests.privacy.test_consented_incremental import (
    ERASURE, FIRST, H10, H11, H12, KEY_V1, NONE, PRIVACY, RAW, SECOND, _env, _grant, _msg, _pz, _write,
)

LEDGER = "key:raw/events or key:raw/crm_profiles or key:raw/privacy_requests or key:privacy/consent_ledger"
CHAIN = "privacy/consent_ledger:hash_chain_intact"
H13, H14, H15 = "2026-11-28-13:00", "2026-11-28-14:00", "2026-11-28-15:00"
ANON_DENIAL = {11: {"c.jsonl": [_msg("d-anon", 11, 5, anon="anon-s", event="Segment Consent Preference Updated", prefs=NONE)]}}


def _ok(result):
    checks = check_results(result)
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}
    return result


# ------------------------------------------------------------------------------------------------ the ledger


@pytest.fixture(scope="module")
def ledger_template(tmp_path_factory, clean_env_module):
    """A ledger of several segments (3 rows per segment), built once per module; each test works on a copy."""
    from personalization_assets.privacy import assets as privacy_assets

    mp = clean_env_module
    root = tmp_path_factory.mktemp("ledger-template")
    data = root / "data"
    for name, value in {"PERSONALIZATION_DATA_DIR": str(data), "PERSONALIZATION_EVENTS_START": "2026-01-01",
                        "PERSONALIZATION_PSEUDONYM_KEYS": json.dumps({"1": KEY_V1})}.items():
        mp.setenv(name, value)
    mp.setattr(privacy_assets, "LEDGER_SEGMENT_ROWS", 3)
    _write(data / "landing", FIRST, [])
    md = materializations(_ok(materialize(defs_for_env(), LEDGER, (H10, H11))))["privacy/consent_ledger"]
    assert md["segments"] >= 3
    return data


@pytest.fixture
def ledger_lake(ledger_template, data_dir, monkeypatch):
    from personalization_assets.privacy import assets as privacy_assets

    shutil.rmtree(data_dir)
    shutil.copytree(ledger_template, data_dir)
    _env(monkeypatch, data_dir, {"1": KEY_V1})
    monkeypatch.setattr(privacy_assets, "LEDGER_SEGMENT_ROWS", 3)
    defs = defs_for_env()
    # the copy's files are new files: the first run verifies everything and checkpoints it
    md = materializations(_ok(materialize(defs, "key:privacy/consent_ledger")))["privacy/consent_ledger"]
    assert md["appended"] == 0 and md.get("verify_mode", "full") == "full"
    return defs


@pytest.fixture
def hashed(monkeypatch):
    """Every (segment, rows) whose chain hashes a verification recomputed during the test."""
    from personalization_assets.core.hash_chain import HashChainedLog

    seen: list[tuple[str, int]] = []
    real = HashChainedLog._rows_in_storage_order

    def spy(self, segments, batch_rows):
        for segment in segments:
            n = 0
            for row in real(self, [segment], batch_rows):
                n += 1
                yield row
            seen.append((segment, n))

    monkeypatch.setattr(HashChainedLog, "_rows_in_storage_order", spy)
    return seen


def _segment_path(defs, index: int) -> str:
    from personalization_assets.privacy.assets import ledger_log

    log = ledger_log(defs.resources["lake"], defs.resources["platform"])
    seg = log.segments()[index]
    return log.lake.full_path(log.lake.data_file("privacy", "consent_ledger", {"segment": seg}))


def _ledger_run(defs, selection="key:privacy/consent_ledger") -> tuple[bool, dict]:
    result = materialize(defs, selection, raise_on_error=False)
    return check_results(result)[CHAIN], materializations(result).get("privacy/consent_ledger", {})


def test_a_steady_run_verifies_only_the_segment_it_appends(ledger_lake, data_dir, hashed):
    defs = ledger_lake
    ok, md = _ledger_run(defs)
    assert ok and md["appended"] == 0
    assert hashed == [], "nothing new: no row hashed again"
    assert md["verify_mode"] == "incremental" and md["segments_verified"] == 0
    _write(data_dir / "landing", {12: {"a.jsonl": [_grant("g-new", 12, 0, "u-new")]}}, [])
    _ok(materialize(defs, RAW, (H12, H12)))
    hashed.clear()
    ok, md = _ledger_run(defs)
    assert ok and md["appended"] > 0  # one grant -> a decision per purpose, 3 rows per segment
    assert sum(n for _, n in hashed) == md["appended"], "only the appended rows are hashed"
    assert md["segments_verified"] == 0 and md["segments_verified_after_append"] == -(-md["appended"] // 3)
    assert md["rows_verified"] == 0


def test_an_edited_row_in_an_old_segment_fails_even_with_its_mtime_put_back(ledger_lake):
    defs = ledger_lake
    path = _segment_path(defs, 0)
    st = os.stat(path)
    rows = pq.read_table(path)
    decision = rows["decision"].to_pylist()
    decision[1] = "denied" if decision[1] != "denied" else "granted"
    pq.write_table(rows.set_column(rows.schema.get_field_index("decision"), "decision", pa.array(decision, pa.string())), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ok, md = _ledger_run(defs)
    assert ok is False and "edited" in md["chain_problem"] and md["appended"] == 0
    assert md["verify_reason"] == "segment_rewritten" and md["verify_mode"] == "full"


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_removed_segment_fails(ledger_lake, which):
    defs = ledger_lake
    from personalization_assets.privacy.assets import ledger_log

    segments = ledger_log(defs.resources["lake"], defs.resources["platform"]).segments()
    index = {"first": 0, "middle": len(segments) // 2, "last": len(segments) - 1}[which]
    os.remove(_segment_path(defs, index))
    ok, md = _ledger_run(defs)
    assert ok is False and md["appended"] == 0
    assert md["verify_reason"] == "segment_missing" and "missing" in md["chain_problem"] and md["rows_verified"] == 0


def test_an_unreadable_checkpoint_means_a_full_verification(ledger_lake):
    defs = ledger_lake
    lake = defs.resources["lake"]
    with open(lake.full_path(lake.data_file("privacy", "consent_ledger_checkpoint")), "wb") as f:
        f.write(b"not parquet")
    ok, md = _ledger_run(defs)
    assert ok and md["verify_mode"] == "full" and md["verify_reason"] == "checkpoint_unreadable"
    ok, md = _ledger_run(defs)
    assert ok and md["verify_mode"] == "incremental" and md["segments_verified"] == 0


# ------------------------------------------------------------------------------------------------ consent state


def _reference(defs) -> list[tuple]:
    """consent_state rebuilt from scratch the original way: the whole ledger re-keyed, every identity row; then
    without erased subjects."""
    from personalization_assets.core.policies import get_policy
    from personalization_assets.privacy import consent as consent_lib
    from personalization_assets.privacy.assets import ledger_log
    from personalization_assets.privacy.operations import rekey_table
    from personalization_assets.core.pseudonymize import Pseudonymizer

    lake = defs.resources["lake"]
    pz = Pseudonymizer(keys_json=os.environ["PERSONALIZATION_PSEUDONYM_KEYS"],
                       active_version=os.environ.get("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION"))
    chain = pz.chain()
    ledger, _ = rekey_table(ledger_log(lake, defs.resources["platform"]).read_all(
        ["seq", "identifier_pseudonym", "purpose", "decision", "effective_at", "source"]), chain, chain.active)
    con = duckdb.connect()
    con.register("ledger", ledger)
    lake.register(con, "identity", "privacy", "identity_links")
    state = consent_lib.build_consent_state(con, get_policy())
    erased = set(lake.read_table("privacy", "suppression_list")["identifier"].to_pylist()) if lake.exists("privacy", "suppression_list") else set()
    return sorted(tuple(repr(v) for v in r.values()) for r in state.to_pylist() if r["consent_subject"] not in erased)


def _state(defs) -> list[tuple]:
    return sorted(tuple(repr(v) for v in r.values()) for r in defs.resources["lake"].read_table("privacy", "consent_state").to_pylist())


def _tick(defs, hours: tuple[str, str] | None) -> dict:
    if hours:
        _ok(materialize(defs, RAW, hours))
    md = materializations(_ok(materialize(defs, PRIVACY)))["privacy/consent_state"]
    assert _state(defs) == _reference(defs), md
    return md


def _subjects(defs) -> set[str]:
    return set(defs.resources["lake"].read_table("privacy", "consent_state")["consent_subject"].to_pylist())


def test_consent_state_folded_over_batches_equals_a_full_rebuild(data_dir, monkeypatch):
    _env(monkeypatch, data_dir, {"1": KEY_V1})
    landing = data_dir / "landing"
    _write(landing, {**FIRST, 11: {**FIRST[11], **ANON_DENIAL[11]}}, [])
    defs = defs_for_env()
    md = _tick(defs, (H10, H11))
    assert md["build_mode"] == "full" and md["build_reason"] == "no_previous_state"
    anon_s, u_stitch, u_erase = _pz("anon-s"), _pz("u-stitch"), _pz("u-erase")
    assert anon_s in _subjects(defs), "the anonymous visitor is its own subject (its own denial)"
    total = len(_subjects(defs))

    # nothing new: nothing recomputed
    md = _tick(defs, None)
    assert md["build_mode"] == "incremental" and md["subjects_recomputed"] == 0 and md["subjects_kept"] == total

    # batch 2: the login stitching anon-s (denied) to u-stitch (granted), a late grant and a withdrawal
    _write(landing, SECOND, [])
    md = _tick(defs, (H11, H12))
    assert md["build_mode"] == "incremental" and md["ledger_rows_new"] > 0 and md["identifiers_changed"] > 0
    assert anon_s not in _subjects(defs) and u_stitch in _subjects(defs)
    assert 0 < md["subjects_recomputed"] < total and md["subjects_kept"] > 0

    # an erasure after the subject's events, then a batch that touches other subjects
    _write(landing, {}, ERASURE)
    _ok(materialize(defs, PRIVACY))
    erased = materialize(defs, "key:privacy/erasure_log")
    assert check_results(erased)["privacy/erasure_log:subjects_absent_everywhere"] is True
    assert u_erase not in _subjects(defs)
    inputs = defs.resources["lake"].read_table("privacy", "consent_state_inputs")
    assert u_erase not in set(inputs["consent_subject"].to_pylist()) | set(inputs["identifier"].to_pylist()), \
        "the state's bookkeeping (pseudonyms) is an erasure target too"
    _write(landing, {13: {"a.jsonl": [_grant("g-new", 13, 0, "u-new"), _msg("m-steady-13", 13, 5, user="u-steady")]}}, ERASURE)
    md = _tick(defs, (H13, H13))
    assert md["build_mode"] == "incremental" and u_erase not in _subjects(defs), "the erased subject came back"
    md = materializations(_ok(materialize(defs, "key:privacy/consent_state", run_config={
        "ops": {"privacy__consent_state": {"config": {"full_refresh": True}}}})))["privacy/consent_state"]
    assert md["build_mode"] == "full" and md["build_reason"] == "full_refresh"
    assert u_erase not in _subjects(defs), "a full rebuild brought the erased subject back from the ledger"
    assert _state(defs) == _reference(defs)

    # a key rotation: the next build is a full one under the new key; the one after folds over old-key ledger rows
    keys = {"1": KEY_V1, "2": secrets.token_hex(32)}
    _env(monkeypatch, data_dir, keys, active="2")
    defs = defs_for_env()
    _ok(materialize(defs, "key:privacy/key_rotation_log"))
    _write(landing, {14: {"a.jsonl": [_grant("w-steady", 14, 0, "u-steady", prefs=NONE)]}}, ERASURE)
    md = _tick(defs, (H14, H14))
    assert md["build_mode"] == "full" and md["build_reason"] == "key_version_changed"
    _write(landing, {15: {"a.jsonl": [_grant("w-late", 15, 0, "u-late", prefs=NONE), _grant("g-wd", 15, 1, "u-wd")]}}, ERASURE)
    md = _tick(defs, (H15, H15))
    assert md["build_mode"] == "incremental" and 0 < md["subjects_recomputed"] <= 3
    assert not any(s.startswith("v1:") for s in _subjects(defs))


def test_a_second_consent_state_build_waits_for_the_one_in_progress(ledger_lake):
    """The state and its inputs table are rewritten as a pair: a build started while another holds consent_state's
    writer lock waits, then runs on what the first one left."""
    import os

    from personalization_assets.privacy.assets import consent_state_lock
    from tests.helpers import build_waits_behind

    defs = ledger_lake
    lake = defs.resources["lake"]
    _ok(materialize(defs, "key:privacy/identity_links or key:privacy/suppression_list"))
    result, released = build_waits_behind(consent_state_lock(lake), lambda: materialize(defs, "key:privacy/consent_state", raise_on_error=False),
                                          lambda: lake.exists("privacy", "consent_state"))
    assert result.success
    assert os.path.getmtime(lake.full_path(lake.data_file("privacy", "consent_state"))) >= released
