"""privacy/consent_state folded forward: only the subjects whose inputs changed are recomputed.

`consent.build_consent_state` is a union over consent subjects: a subject's rows depend only on the ledger rows
that resolve to it (`coalesce(identity.consent_subject, identifier)`), on the identity rows whose consent_subject it
is (its jurisdiction) and on the policy. So between two builds the subjects whose rows can change are:

* the subjects the NEW ledger rows (seq above the one the previous build consumed) resolve to;
* for every identifier whose identity row changed, appeared or disappeared (a login stitching an anonymous id to a
  user, a jurisdiction change, an erasure removing it): the subject(s) it resolved to before AND after (an
  identifier absent from identity resolves to itself).

Those subjects (`affected`) are recomputed with `build_consent_state` over the ledger rows of the identifiers that
resolve to them and their identity rows; every other subject keeps its rows from the previous state. The result is
the full rebuild's, row for row (tests/privacy/test_consent_state_incremental.py compares them).

Bookkeeping: `privacy/consent_state_inputs`, written after the state: the identity rows the state was built with
(identifier, kind, consent subject, jurisdiction and its source: pseudonyms, so it is declared to the erasure plan
next to consent_state and re-keyed by the rotation job) and, in its schema metadata, the ledger seq and row hash it
consumed up to, the key version and the policy version. It is removed before the state is replaced and written
after it, so a run that dies in between leaves no inputs (next run: full rebuild). A full rebuild happens on `full_refresh`, a missing or
unreadable previous state or inputs table, another key version or policy version, or a ledger whose row at the
consumed seq no longer has the consumed hash (rewritten).

Erased subjects: both the full rebuild and the fold-forward leave out every consent subject on the suppression list
(privacy/suppression_list). The ledger keeps an erased subject's decisions as evidence; without this filter a
rebuild (or a recompute of a subject the erasure touched) would bring the subject back into consent_state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa

from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.storage import ROW_GROUP_ROWS, LakeStorage
from personalization_assets.privacy import consent as consent_lib
from personalization_assets.privacy.ledger_lookup import register_ledger, rekey_map

log = logging.getLogger(__name__)

LAYER, TABLE, INPUTS = "privacy", "consent_state", "consent_state_inputs"
FORMAT = "1"
_META = "personalization."
INPUTS_SCHEMA = pa.schema([
    ("identifier", pa.string()),
    ("identifier_kind", pa.string()),
    ("consent_subject", pa.string()),
    ("jurisdiction", pa.string()),
    ("jurisdiction_source", pa.string()),
])
_ID_COLS = ", ".join(INPUTS_SCHEMA.names)


STATE_TABLE = "__cs_state"  # the DuckDB temp table `build` leaves the state in
_STATE_COLS = ", ".join(consent_lib.STATE_SCHEMA.names)


@dataclass
class Outcome:
    table: str  # DuckDB temp table holding the state (STATE_SCHEMA columns): stream it, never hold it in Python
    mode: str  # incremental | full
    reason: str
    subjects_recomputed: int = 0
    subjects_kept: int = 0
    ledger_rows_new: int = 0
    identifiers_changed: int = 0
    settings: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        return {"build_mode": self.mode, "build_reason": self.reason, "subjects_recomputed": self.subjects_recomputed,
                "subjects_kept": self.subjects_kept, "ledger_rows_new": self.ledger_rows_new,
                "identifiers_changed": self.identifiers_changed}


def _load_previous(con, lake: LakeStorage, settings: dict[str, str]) -> tuple[dict, str]:
    """Copy the previous state and inputs into temp tables `__cs_prev` and `__id_old`; returns (their recorded
    settings, "previous_state"), or ({}, why not) when there is nothing to fold onto (then: full rebuild)."""
    if not lake.exists(LAYER, TABLE):
        return {}, "no_previous_state"
    if not lake.exists(LAYER, INPUTS):
        return {}, "no_previous_inputs"
    try:
        schema = lake.schema(LAYER, INPUTS)
        meta = {k.decode()[len(_META):]: v.decode() for k, v in (schema.metadata or {}).items() if k.decode().startswith(_META)}
        for name, want in settings.items():
            if meta.get(name) != want:
                return {}, f"{name}_changed"
        lake.register(con, "__cs_prev_inputs_lake", LAYER, INPUTS)
        con.execute(f"create or replace temp table __id_old as select {_ID_COLS} from __cs_prev_inputs_lake")
        lake.register(con, "__cs_prev_state_lake", LAYER, TABLE)
        con.execute(f"create or replace temp table __cs_prev as select {_STATE_COLS} from __cs_prev_state_lake")
    except Exception as exc:  # noqa: BLE001 - never fold onto something unreadable: rebuild
        log.warning("privacy/consent_state or its inputs are unreadable (%s): full rebuild", exc)
        return {}, "previous_unreadable"
    return meta, "previous_state"


def _suppressed(con, lake: LakeStorage) -> None:
    from personalization_assets.privacy.suppression import SUPPRESSION_SCHEMA

    lake.register(con, "__cs_suppression_lake", "privacy", "suppression_list", empty_schema=SUPPRESSION_SCHEMA)
    con.execute("create or replace temp table __cs_suppressed as select distinct identifier from __cs_suppression_lake where identifier is not null")


def _count_subjects(con, table: str) -> int:
    return int(con.execute(f"select count(distinct consent_subject) from {table}").fetchall()[0][0])


def build(con, lake: LakeStorage, hlog: HashChainedLog, chain, policy, identity_view: str, full_refresh: bool) -> Outcome:
    """The consent state (STATE_SCHEMA), folded forward from the previous one when it can be, left in DuckDB temp
    table STATE_TABLE. `identity_view`: a DuckDB view of privacy/identity_links. Registers temp views `ledger` and
    `identity` (what build_consent_state reads)."""
    settings = {"format": FORMAT, "key_version": str(chain.active), "policy_version": policy.version}
    register_ledger(con, hlog)
    n_rekey = rekey_map(con, chain, "__ledger_all")
    ident = "coalesce(m.new, l.identifier_pseudonym)" if n_rekey else "l.identifier_pseudonym"
    join = 'left join "__ledger_rekey" m on m.old = l.identifier_pseudonym' if n_rekey else ""
    con.execute(f"""create or replace temp view __ledger_keyed as
                    select l.seq, {ident} as identifier_pseudonym, l.purpose, l.decision, l.effective_at, l.source, l.row_hash
                    from __ledger_all l {join}""")
    con.execute(f"create or replace temp table __id_new as select {_ID_COLS} from \"{identity_view}\"")
    _suppressed(con, lake)
    head = con.execute("select max(seq) from __ledger_all").fetchall()[0][0] or 0
    head_hash = con.execute("select row_hash from __ledger_all where seq = ?", [head]).fetchall() if head else []
    settings_out = {**settings, "ledger_seq": str(head), "ledger_head_hash": head_hash[0][0] if head_hash else ""}

    meta, reason = ({}, "full_refresh") if full_refresh else _load_previous(con, lake, settings)
    previous = reason == "previous_state"
    consumed = 0
    if previous:
        try:
            consumed = int(meta.get("ledger_seq", ""))
        except ValueError:
            previous, reason = False, "inputs_without_ledger_seq"
    if previous and consumed:
        stored = con.execute("select row_hash from __ledger_all where seq = ?", [consumed]).fetchall()
        if len(stored) != 1 or stored[0][0] != meta.get("ledger_head_hash"):
            previous, reason = False, "ledger_rewritten"
    not_erased = "consent_subject not in (select identifier from __cs_suppressed)"

    if not previous:
        con.execute("create or replace temp view ledger as select seq, identifier_pseudonym, purpose, decision, effective_at, source from __ledger_keyed")
        con.execute(f'create or replace temp view identity as select * from "{identity_view}"')
        consent_lib.create_consent_state(con, policy, "__cs_built")
        con.execute(f"create or replace temp table {STATE_TABLE} as select * from __cs_built where {not_erased}")
        con.execute("drop table __cs_built")
        return Outcome(STATE_TABLE, "full", reason, subjects_recomputed=_count_subjects(con, STATE_TABLE),
                       ledger_rows_new=head, settings=settings_out)

    con.execute(f"""create or replace temp table __id_changed as
                    select distinct identifier from (
                        (select {_ID_COLS} from __id_new except select {_ID_COLS} from __id_old)
                        union all
                        (select {_ID_COLS} from __id_old except select {_ID_COLS} from __id_new))""")
    con.execute("create or replace temp table __new_ids as select distinct identifier_pseudonym as identifier from __ledger_keyed where seq > ?",
                [consumed])
    # resolution of an identifier: its consent subject(s) in the identity rows, else itself
    con.execute(
        """create or replace temp table __affected as
           with res_new as (select x.identifier, coalesce(i.consent_subject, x.identifier) as subject
                            from (select identifier from __new_ids union select identifier from __id_changed) x
                            left join __id_new i using (identifier)),
                res_old as (select x.identifier, coalesce(i.consent_subject, x.identifier) as subject
                            from __id_changed x left join __id_old i using (identifier))
           select distinct subject from (select subject from res_new union all select subject from res_old)
           where subject is not null"""
    )
    # identifiers whose ledger rows resolve into the affected subjects: in identity with such a subject, or not in
    # identity at all and an affected subject themselves
    con.execute(
        """create or replace temp table __affected_ids as
           select distinct identifier from __id_new where consent_subject in (select subject from __affected)
           union
           select subject from __affected where subject not in (select identifier from __id_new)"""
    )
    con.execute("""create or replace temp view ledger as
                   select seq, identifier_pseudonym, purpose, decision, effective_at, source from __ledger_keyed
                   where identifier_pseudonym in (select identifier from __affected_ids)""")
    con.execute("create or replace temp view identity as select * from __id_new where consent_subject in (select subject from __affected)")
    n_affected = con.execute("select count(*) from __affected").fetchall()[0][0]
    changed = con.execute("select count(*) from __id_changed").fetchall()[0][0]
    new_rows = con.execute("select count(*) from __ledger_all where seq > ?", [consumed]).fetchall()[0][0]
    # every other subject keeps its rows, the affected ones are recomputed; all in DuckDB, the kept rows not copied
    kept_rows = "select * from __cs_prev where consent_subject not in (select subject from __affected)"
    if n_affected:
        consent_lib.create_consent_state(con, policy, "__cs_recomputed")
    else:
        con.execute("create or replace temp table __cs_recomputed as select * from __cs_prev limit 0")
    con.execute(f"""create or replace temp table {STATE_TABLE} as
                    select {_STATE_COLS} from ({kept_rows} union all select * from __cs_recomputed) where {not_erased}""")
    recomputed, kept = _count_subjects(con, "__cs_recomputed"), _count_subjects(con, f"({kept_rows})")
    con.execute("drop table __cs_prev; drop table __cs_recomputed")
    return Outcome(STATE_TABLE, "incremental", "previous_state", subjects_recomputed=recomputed, subjects_kept=kept,
                   ledger_rows_new=int(new_rows), identifiers_changed=int(changed), settings=settings_out)


def invalidate_inputs(lake: LakeStorage) -> None:
    """Remove the inputs record before the state is replaced: never a new state next to older inputs."""
    lake.delete_partition(LAYER, INPUTS)


def write_inputs(con, lake: LakeStorage, outcome: Outcome) -> int:
    """Record what the state was built from. Call only after the state is written.

    Streamed in row groups: at 100M events the inputs are 8.4M identifiers, 1.3 GB as one Arrow table on top of
    DuckDB's sort, which made this the step's peak (4.0 GB)."""
    schema = INPUTS_SCHEMA.with_metadata({f"{_META}{k}": str(v) for k, v in outcome.settings.items()})
    reader = con.sql(f"select {_ID_COLS} from __id_new order by identifier, identifier_kind").to_arrow_reader(ROW_GROUP_ROWS)
    return lake.write_table(LAYER, INPUTS, reader.cast(schema)).rows
