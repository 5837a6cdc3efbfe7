"""What `consented/events` was built from, so that an unpartitioned step can find its own stale hours.

One small Parquet table, `consented/events_state` (the `consented/events_state` asset), written whole by each
run. Its rows have a `record` kind:

* ``hour``: one per built consented hour — the partition key and the fingerprint of the raw/events
  partition file it was built from (size + mtime, from the lake API's listing: no data read). `raw_size = -1` marks an hour as dirty (must be rebuilt on the next run).
* ``key``: the identifier -> hours index: per built hour, every pseudonym its raw rows carry in the columns
  consent resolution and suppression look at (user, anonymous, email pseudonyms) and the consent subject
  each row resolved to. Maintained from the rebuilt hours only.
* ``sig``: per identifier of the privacy inputs (identity links, consent state, suppression list), what a
  build depends on: `resolved_subject` (an anonymous identifier's consent subject in identity_links) and
  `digest` = md5 of (the subject's jurisdiction, its GRANTED consent intervals with touching ones merged, suppressed
  or not) — exactly what its rows depend on: a decision re-asserting the status in force changes no signature. Values that are
  pseudonyms are stored as such (never hashed), and the digest holds none: the key rotation job re-keys
  this table with the rest of the consented tier, and a rotation then changes no signature.
  The signature of a suppressed identifier (an erasure request named it) is stored only while an index row
  still holds the identifier (then it works as before: a newly suppressed identifier changes signature and its
  hours are rebuilt without its rows, once). Once the erasure run has removed its rows and index entries, the
  state no longer stores it: before, the consented step wrote the erased pseudonym back on every run and the
  erasure run rewrote the whole state to remove it again.
* ``meta``: the fingerprint of the events column policy (classification.yaml) the hours were built with.

A run compares the current signatures with the stored ones (a DuckDB join over identifiers, no event read),
and the hours to rebuild are (an hour stale only through a changed signature is patched instead: `Plan.patch`): raw hours new or changed, hours holding an identifier whose signature changed,
every hour when the pseudonym key version changed without the rotation job (the index still holds
pseudonyms of another version) or the column policy changed. Raw hours gone are deleted from the
consented tier (unless the raw retention removed them: then the consented hour lives on to its own
retention and leaves the state).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import pyarrow as pa

from personalization_assets.core.partitions import PARTITION_FMT, partition_key_for_path
from personalization_assets.core.retention import hour_before, read_cutoffs
from personalization_assets.core.storage import ROW_GROUP_ROWS, LakeStorage

LAYER, TABLE = "consented", "events_state"
# how the erasure finds a subject's rows in the state (its `privacy/erasure` handler), and the commit those of a
# subject erased while the run was deciding
ERASURE_COLUMNS = ["key", "resolved_subject"]
STATE_LOCK = {"layer": LAYER, "name": TABLE}  # held by every commit, and by the erasure and key rotation rewriting the state
STATE_SCHEMA = pa.schema([
    ("record", pa.string()),
    ("hour", pa.string()),
    ("key", pa.string()),
    ("resolved_subject", pa.string()),
    ("digest", pa.string()),
    ("raw_size", pa.int64()),
    ("raw_version", pa.string()),
    # sig: md5 of what a row takes from its subject besides consent (jurisdiction, suppressed), and the subject's
    # GRANTED intervals themselves (epoch µs, valid_to null = open): a change of these alone reaches only rows
    # whose event time is at or after the first instant where the old and the new intervals differ
    ("base_digest", pa.string()),
    ("intervals", pa.list_(pa.struct([("purpose", pa.string()), ("valid_from", pa.int64()), ("valid_to", pa.int64())]))),
    # key: the latest event time (epoch µs) among the hour's rows carrying the key
    ("max_ts", pa.int64()),
])
DIRTY = -1


@dataclass(frozen=True)
class RawHour:
    size: int
    version: str  # mtime in ns (S3: LastModified)


def raw_fingerprints(lake: LakeStorage) -> dict[str, RawHour]:
    """Partition key -> fingerprint (size, mtime) of each raw/events partition file, from the listing alone
    (the lake API's listing: local stat, S3 ListObjects size + LastModified). A partition is one object
    replaced atomically, so a rewrite changes its mtime."""
    out: dict[str, RawHour] = {}
    for f in lake.partition_files("raw", "events"):
        pk = partition_key_for_path(f.path)
        if pk:
            out[pk] = RawHour(f.size, str(f.mtime_ns))
    return out


def consented_hours(lake: LakeStorage) -> set[str]:
    return {pk for f in lake.partition_files("consented", "events") if (pk := partition_key_for_path(f.path))}


def policy_fingerprint(policy) -> str:
    cols = policy.columns["events"]
    text = policy.version + "|" + repr(sorted((name, repr(cp)) for name, cp in cols.items()))
    return hashlib.md5(text.encode()).hexdigest()


SIGNATURES_SQL = """
with anon as (select identifier as key, any_value(consent_subject) as resolved_subject
              from identity where identifier_kind = 'anonymous' and {bucket:identifier} group by 1),
     jur as (select consent_subject as key, any_value(jurisdiction) as jurisdiction from identity where {bucket:consent_subject} group by 1),
     -- what a consented row takes from consent_state is the purposes GRANTED at the event's time: the digest covers the
     -- granted intervals only, with touching ones merged. A decision that re-asserts the status in force (a re-grant, a
     -- repeated denial) splits an interval without changing any row, and changes no signature.
     granted as (select consent_subject, purpose, valid_from, valid_to,
                        case when lag(valid_to) over w is not distinct from valid_from then 0 else 1 end as brk
                 from consent_state where status = 'granted' and {bucket:consent_subject}
                 window w as (partition by consent_subject, purpose order by valid_from, valid_to nulls last)),
     islands as (select *, sum(brk) over (partition by consent_subject, purpose order by valid_from, valid_to nulls last
                                          rows between unbounded preceding and current row) as island
                 from granted),
     merged as (select consent_subject, purpose, min(valid_from) as valid_from,
                       case when bool_or(valid_to is null) then null else max(valid_to) end as valid_to
                from islands group by consent_subject, purpose, island),
     cs as (select s.key, m.intervals, m.iv
            from (select distinct consent_subject as key from consent_state where {bucket:consent_subject}) s
            left join (select consent_subject as key,
                              md5(string_agg(concat_ws('|', purpose, epoch_us(valid_from)::varchar, coalesce(epoch_us(valid_to)::varchar, '-')), ';'
                                             order by purpose, valid_from, valid_to)) as intervals,
                              list({'purpose': purpose, 'valid_from': epoch_us(valid_from), 'valid_to': epoch_us(valid_to)}
                                   order by purpose, valid_from, valid_to) as iv
                       from merged group by 1) m using (key)),
     sup as (select distinct identifier as key from suppression where {bucket:identifier}),
     keys as (select key from anon union select key from jur union select key from cs union select key from sup)
select k.key, a.resolved_subject,
       md5(concat_ws('|', coalesce(j.jurisdiction, '-'), coalesce(cs.intervals, '-'), (s.key is not null)::varchar)) as digest,
       md5(concat_ws('|', coalesce(j.jurisdiction, '-'), (s.key is not null)::varchar)) as base_digest,
       coalesce(cs.iv, []) as intervals
from keys k left join anon a using (key) left join jur j using (key) left join cs using (key) left join sup s using (key)
where k.key is not null
"""

# Hours holding a key whose signature changed (`__state` the stored state, `__sig_new` the current signatures).
# A key whose resolution, jurisdiction or suppression changed (or that appeared, left, or has no stored intervals:
# a state written before they were kept) reaches every hour holding it. A key whose GRANTED intervals alone
# changed reaches only the hours holding one of its rows at or after `t`, the first instant where the old and the
# new intervals differ: a row's purposes are the intervals containing its event time (`ASOF_PURPOSES_SQL`), so a
# row before `t` is unchanged. Merged intervals of one purpose are disjoint, so a differing interval starts to
# differ at its valid_from, unless the other side has one with the same start: then at the earlier end.
# A key whose stored signature (`o`) differs from the current one (`n`), or that is on one side only
SIGNATURE_CHANGED = ("n.key is null or o.key is null or n.resolved_subject is distinct from o.resolved_subject "
                     "or n.digest is distinct from o.digest")
CHANGED_HOURS_SQL = """
with old as (select key, resolved_subject, digest, base_digest, intervals from __state where record = 'sig'),
     changed as (select coalesce(n.key, o.key) as key,
                        n.key is null or o.key is null or n.resolved_subject is distinct from o.resolved_subject
                        or o.base_digest is null or o.intervals is null or n.base_digest is distinct from o.base_digest as hard,
                        n.intervals as n_iv, o.intervals as o_iv
                 from __sig_new n full outer join old o on n.key = o.key
                 where {changed}),
     soft as (select key, n_iv, o_iv from changed where not hard),
     side as (select key, unnest(n_iv) as iv, 'n' as side from soft union all select key, unnest(o_iv), 'o' from soft),
     -- the intervals of one side that the other side does not have
     unmatched as (select * from side anti join side o on o.key = side.key and o.side <> side.side
                                                          and o.iv is not distinct from side.iv),
     points as (select d.key, case when x.key is null then d.iv.valid_from else least(d.iv.valid_to, x.iv.valid_to) end as t
                from unmatched d
                left join side x on x.key = d.key and x.side <> d.side and x.iv.purpose = d.iv.purpose
                                and x.iv.valid_from = d.iv.valid_from),
     -- a soft key without a point (cannot happen: its intervals differ) would have t null: every hour, fail closed
     reach as (select key, true as hard, null::bigint as t from changed where hard
               union all select soft.key, false, min(points.t) from soft left join points using (key) group by soft.key)
select distinct s.hour from __state s join reach r on s.key = r.key
where s.record = 'key' and (r.hard or r.t is null or s.max_ts is null or s.max_ts >= r.t)
""".replace("{changed}", SIGNATURE_CHANGED)

# The keys whose signature changed (any reach): a patched hour re-decides the rows carrying one of them (`Plan.patch`)
CHANGED_KEYS_SQL = f"""
with old as (select key, resolved_subject, digest from __state where record = 'sig')
select coalesce(n.key, o.key) as key from __sig_new n full outer join old o on n.key = o.key where {SIGNATURE_CHANGED}
"""
CHANGED_KEYS = "__sig_changed_keys"


# consent_state rows per bucket of the signature query. Its per-subject ordered aggregates (`string_agg`, `list`) keep
# their state in memory, which DuckDB cannot spill: at 100M events (3.33M subjects, 31M state rows) one pass ran out
# of a 2 GB memory limit. Every join of the query is on the key, so the keys of one `hash(key) % n` bucket are
# computed exactly from the rows of that bucket.
SIGNATURE_BUCKET_ROWS = 2_000_000


def _signatures_sql(bucket: int, buckets: int) -> str:
    def pred(column: str) -> str:
        return "true" if buckets == 1 else f"hash({column}) % {buckets} = {bucket}"

    sql = SIGNATURES_SQL
    for column in ("identifier", "consent_subject"):
        sql = sql.replace("{bucket:" + column + "}", pred(column))
    return sql


SUPPRESSED_KEYS = "__sig_suppressed"


def current_signatures(con: duckdb.DuckDBPyConnection, bucket_rows: int = SIGNATURE_BUCKET_ROWS) -> None:
    """Temp table `__sig_new(key, resolved_subject, digest, base_digest, intervals)` from the views identity,
    consent_state, suppression; in buckets of keys when consent_state is large (SIGNATURE_BUCKET_ROWS)."""
    rows = con.execute("select count(*) from consent_state").fetchall()[0][0]
    buckets = max(1, -(-rows // bucket_rows))
    con.execute(f"create or replace temp table __sig_new as {_signatures_sql(0, buckets)}")
    for b in range(1, buckets):
        con.execute(f"insert into __sig_new {_signatures_sql(b, buckets)}")
    # suppressed keys: the commit stores their signatures only while an index row holds them (module doc)
    con.execute(f"create or replace temp table {SUPPRESSED_KEYS} as select distinct identifier as key from suppression where identifier is not null")


@dataclass
class Plan:
    """What one run does."""

    mode: str  # incremental | range | full_refresh
    build: list[str]  # hours to (re)build, sorted
    delete: list[str]  # consented hours to delete (their raw hour is gone)
    retire: list[str]  # hours leaving the state (raw removed by retention; the consented hour stays)
    dirty: list[str]  # stale hours outside an explicit range: rebuilt by the next run
    raw: dict[str, RawHour]
    reasons: dict[str, int] = field(default_factory=dict)  # why hours were stale (counts, for metadata)
    # hours of `build` stale only because keys' signatures changed (raw hour unchanged, consented hour present, same key
    # version and column policy): only the rows carrying a changed key (CHANGED_KEYS) are decided again and merged into
    # the stored hour; their index rows are merged with the stored ones (`new_state_table`)
    patch: list[str] = field(default_factory=list)


def load_state(lake: LakeStorage) -> pa.Table:
    if not lake.exists(LAYER, TABLE):
        return STATE_SCHEMA.empty_table()
    table = lake.read_table(LAYER, TABLE)
    for f in STATE_SCHEMA:  # written before the column existed: unknown (null), which the plan treats conservatively
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(STATE_SCHEMA.names).cast(STATE_SCHEMA)


# the DuckDB type of each state column (a state written before a column existed gets it as null)
_DUCKDB_TYPES = {"raw_size": "bigint", "max_ts": "bigint",
                 "intervals": "struct(purpose varchar, valid_from bigint, valid_to bigint)[]"}


def load_state_into(con: duckdb.DuckDBPyConnection, lake: LakeStorage, name: str, copy: bool = True) -> str:
    """The stored state as DuckDB temp table `name` (STATE_SCHEMA columns); returns `name`. At 100M events the index
    has tens of millions of rows: the step keeps it in DuckDB (spilled under its memory limit), never in Python.
    `copy=False`: a view over the file instead (only under the state's lock, where no other run replaces it)."""
    if not lake.exists(LAYER, TABLE):
        cols = ", ".join(f"null::{_DUCKDB_TYPES.get(f.name, 'varchar')} as {f.name}" for f in STATE_SCHEMA)
        con.execute(f"create or replace temp table {name} as select {cols} limit 0")
        return name
    lake.register(con, f"{name}_lake", LAYER, TABLE)
    present = {r[0] for r in con.execute(f"describe {name}_lake").fetchall()}
    cols = ", ".join(f.name if f.name in present else f"null::{_DUCKDB_TYPES.get(f.name, 'varchar')} as {f.name}" for f in STATE_SCHEMA)
    con.execute(f"create or replace temp {'table' if copy else 'view'} {name} as select {cols} from {name}_lake")
    return name


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("select 1 from duckdb_tables() where temporary and table_name = ?", [name]).fetchall())


def _drop(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop temp table or view `name` (`load_state_into` makes either)."""
    views = con.execute("select 1 from duckdb_views() where temporary and view_name = ?", [name]).fetchall()
    con.execute(f"drop {'view' if views else 'table'} if exists {name}")


def snapshot_hours(con: duckdb.DuckDBPyConnection, snapshot: str) -> str:
    """Once the plan is made, all the commit needs of the snapshot is its hour rows (`concurrently_dirty`): keep
    those, drop the rest (the index and signatures: most of the state). Returns the new table's name."""
    con.execute("drop view if exists __state")
    con.execute(f"create or replace temp table {snapshot}_hours as select * from {snapshot} where record = 'hour'")
    _drop(con, snapshot)
    return f"{snapshot}_hours"


def _bind(con: duckdb.DuckDBPyConnection, name: str, data: pa.Table | str) -> None:
    """View `name` over an Arrow table or a DuckDB table (by its name)."""
    if isinstance(data, str):
        con.execute(f"create or replace temp view {name} as select * from {data}")
    else:
        con.register(f"{name}_arrow", data)
        con.execute(f"create or replace temp view {name} as select * from {name}_arrow")


def _unbind(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    for name in names:
        con.execute(f"drop view if exists {name}")
        try:
            con.unregister(f"{name}_arrow")
        except Exception:  # noqa: BLE001 - bound to a DuckDB table: nothing registered
            pass


RECORDED = object()  # `plan`'s raw_cutoff default: the one the retention run recorded, read after the raw listing


def plan(con: duckdb.DuckDBPyConnection, lake: LakeStorage, state: pa.Table | str, *, policy, active_key_version: str,
         requested: list[str] | None, full_refresh: bool, valid_key, raw_cutoff: datetime | None | object = RECORDED) -> Plan:
    """Decide the hours to build/delete. Needs the privacy views loaded and `__sig_new` computed. `raw_cutoff`: the
    raw cutoff the retention run recorded (core/retention.py): a raw hour gone before it was removed by retention.
    Default: read from the lake AFTER raw is listed (read before, a retention run in between deleted raw hours the
    plan would see gone and not before the cutoff it had read: deleted, not retired)."""
    raw = {pk: fp for pk, fp in raw_fingerprints(lake).items() if valid_key(pk)}
    if raw_cutoff is RECORDED:
        raw_cutoff = read_cutoffs(lake).get("raw")
    _bind(con, "__state", state)
    stored_hours = {h: RawHour(s, v) for h, s, v in con.execute(
        "select hour, raw_size, raw_version from __state where record = 'hour'").fetchall()}
    present = consented_hours(lake)
    reasons: dict[str, int] = {}

    stale: set[str] = set()
    new_or_changed = {pk for pk, fp in raw.items() if stored_hours.get(pk) != fp}
    reasons["raw_new_or_changed"] = len(new_or_changed)
    stale |= new_or_changed
    # signatures that changed since the hours holding them were built: resolution, jurisdiction, consent, suppression
    # (a consent change only from its first differing instant on: CHANGED_HOURS_SQL)
    changed_hours = {h for (h,) in con.execute(CHANGED_HOURS_SQL).fetchall()}
    reasons["privacy_inputs_changed"] = len(changed_hours - new_or_changed)
    stale |= changed_hours
    # pseudonyms of another key version in the index: the key changed without the rotation job re-keying this tier
    other_version = con.execute(
        "select count(*) from __state where record in ('key', 'sig') and key not like ?", [f"v{active_key_version}:%"]
    ).fetchall()[0][0]
    meta = [d for (d,) in con.execute("select digest from __state where record = 'meta'").fetchall()]
    policy_changed = bool(stored_hours) and meta != [policy_fingerprint(policy)]
    if other_version or policy_changed:
        reasons["key_version_changed" if other_version else "column_policy_changed"] = len(raw)
        stale |= set(raw)
    stale &= set(raw)

    gone = (set(stored_hours) | present) - set(raw)
    retire: set[str] = set()
    if raw_cutoff is not None:  # what retention removed, from the cutoff it recorded: the data decides, not the clock
        expired = {h for h in gone if hour_before(datetime.strptime(h, PARTITION_FMT), raw_cutoff)}
        retire = expired & set(stored_hours)  # leave the state once; the consented hour stays to its own retention
        gone -= expired
    delete = gone

    patch: set[str] = set()
    if not (full_refresh or requested is not None or other_version or policy_changed):
        patch = (changed_hours - new_or_changed) & set(stored_hours) & present & set(raw)
    if patch:
        con.execute(f"create or replace temp table {CHANGED_KEYS} as {CHANGED_KEYS_SQL}")
    if full_refresh:
        mode, build = "full_refresh", set(raw)
    elif requested is not None:
        # exactly the requested hours: built, or deleted when their raw hour is gone
        mode, build = "range", set(requested) & set(raw)
        delete, retire = delete & set(requested), retire & set(requested)
    else:
        mode, build = "incremental", stale
    dirty = stale - build if mode == "range" else set()
    return Plan(mode=mode, build=sorted(build), delete=sorted(delete), retire=sorted(retire - set(build)),
                dirty=sorted(dirty), raw=raw, reasons=reasons, patch=sorted(patch & build))


def hour_keys_sql(user_col: str, anon_col: str, email_col: str | None, consent_time: str = '"timestamp"') -> str:
    """(landing_hour epoch µs, key, max_ts) of the rows `consent_events` just processed (temp tables __cev, __cev_subject).
    `consent_time`: the SQL of a __cev row's consent lookup instant (consented/transform.py consent_time_sql, unqualified):
    max_ts is compared with the instant a subject's consent changed, so both are on the same clock."""
    cols = [user_col, anon_col] + ([email_col] if email_col else [])
    parts = [f'select landing_hour, "{c}" as key, {consent_time} as timestamp from __cev' for c in cols]
    parts.append("select c.landing_hour, s.consent_subject, s.timestamp from __cev c join __cev_subject s using (__row)")
    return ("select epoch_us(landing_hour) as hour_us, key, max(epoch_us(timestamp)) as max_ts from ("
            + " union all ".join(parts) + ") where key is not null group by all")


def state_lock(lake: LakeStorage):
    """The state's writer lock (fcntl locally, an S3 lease in the lake): runs build their hours in parallel,
    and commit their part of the state one at a time (`commit`)."""
    from personalization_assets.core.hash_chain import table_writer_lock

    return table_writer_lock(lake, STATE_LOCK)


def concurrently_dirty(con: duckdb.DuckDBPyConnection, snapshot: pa.Table | str, fresh: pa.Table | str, p: Plan, policy) -> list[str]:
    """Hours of the state as committed meanwhile by other runs (`fresh`) that this run must mark dirty, beyond
    its own plan: the state's invariant is that a clean hour was built with the signatures the state stores.

    * an hour of this run's `dirty` list stays dirty only if no other run rebuilt it since this run's snapshot;
    * an hour another run built (clean in `fresh`) holding a key whose stored signature differs from this
      run's `__sig_new` was built with other privacy inputs than the ones this commit stores: dirty;
    * every clean hour, if the state was committed under another column policy meanwhile.
    Sequentially (`fresh` is the snapshot) this is exactly the plan's `dirty` list."""
    replaced = set(p.build) | set(p.delete) | set(p.retire)
    _bind(con, "__snap", snapshot)
    _bind(con, "__fresh", fresh)
    try:
        rebuilt = {h for (h,) in con.execute(
            """select f.hour from __fresh f left join __snap s on s.record = 'hour' and s.hour = f.hour
               where f.record = 'hour' and (s.hour is null or s.raw_size is distinct from f.raw_size
                                            or s.raw_version is distinct from f.raw_version)""").fetchall()}
        meta = [d for (d,) in con.execute("select digest from __fresh where record = 'meta'").fetchall()]
        if meta and meta != [policy_fingerprint(policy)]:
            other = {h for (h,) in con.execute(f"select hour from __fresh where record = 'hour' and raw_size <> {DIRTY}").fetchall()}
        else:
            other = {h for (h,) in con.execute(
                f"""with changed as (select o.key from __fresh o left join __sig_new n on n.key = o.key
                                     where o.record = 'sig' and (n.key is null or n.resolved_subject is distinct from o.resolved_subject
                                                                 or n.digest is distinct from o.digest)
                                     union select n.key from __sig_new n anti join (select key from __fresh where record = 'sig') o using (key))
                    select distinct k.hour from __fresh k semi join changed c on k.key = c.key
                    where k.record = 'key' and k.hour in (select hour from __fresh where record = 'hour' and raw_size <> {DIRTY})"""
            ).fetchall()}
    finally:
        _unbind(con, "__snap", "__fresh")
    return sorted(((set(p.dirty) - rebuilt) | (other & set(p.raw))) - replaced)


def commit(con: duckdb.DuckDBPyConnection, lake: LakeStorage, snapshot: pa.Table | str, p: Plan, keys: pa.Table | str, policy,
           late=None):
    """Write this run's part of the state under the state lock, on top of the state as it is NOW (another run
    may have committed since `snapshot` was read: two backfill runs of disjoint ranges both keep their hours).
    `snapshot` and `keys` (hour, key, max_ts): Arrow tables or DuckDB tables by name. The new state is built in
    DuckDB and streamed into its file. `late` (`suppression.LateSuppression`): identifiers that reached the suppression
    list after this run read it; their rows are not stored (an erasure that ran meanwhile removed them from the state
    it found, and verified it). Returns (rows of the new state, write result)."""
    with state_lock(lake):
        fresh = load_state_into(con, lake, "__state_fresh", copy=False)
        dirty = concurrently_dirty(con, snapshot, fresh, p, policy)
        merged = Plan(mode=p.mode, build=p.build, delete=p.delete, retire=p.retire, dirty=dirty, raw=p.raw, reasons=p.reasons,
                      patch=p.patch)
        out = new_state_table(con, fresh, merged, keys, policy, "__state_out")
        erased = late.identifiers() if late is not None else set()
        if erased:
            con.register("__late_erased", pa.table({"identifier": pa.array(sorted(erased), pa.string())}))
            con.execute(f"delete from {out} where " + " or ".join(
                f"{c} in (select identifier from __late_erased)" for c in ERASURE_COLUMNS))
            con.unregister("__late_erased")
        written = lake.write_table(LAYER, TABLE, con.sql(f"select * from {out}").to_arrow_reader(ROW_GROUP_ROWS).cast(STATE_SCHEMA))
        _drop(con, fresh)
        con.execute("drop table __state_out")
        return written.rows, written


def new_state(con: duckdb.DuckDBPyConnection, state: pa.Table | str, p: Plan, keys: pa.Table | str, policy) -> pa.Table:
    """`new_state_table` as an Arrow table (small states: tests)."""
    name = new_state_table(con, state, p, keys, policy, "__state_new_arrow")
    try:
        return con.sql(f"select * from {name}").arrow().read_all().cast(STATE_SCHEMA)
    finally:
        con.execute(f"drop table {name}")


def new_state_table(con: duckdb.DuckDBPyConnection, state: pa.Table | str, p: Plan, keys: pa.Table | str, policy, name: str) -> str:
    """The state after this run, as DuckDB temp table `name` (returned): hours built get their fingerprint and
    index rows; deleted/retired hours leave; dirty hours are marked; signatures become the current ones
    (`__sig_new`). `keys`: the index rows of the hours built (hour, key[, max_ts])."""
    replaced = set(p.build) | set(p.delete) | set(p.retire)
    if not isinstance(keys, str) and "max_ts" not in keys.column_names:  # index rows without event times: every signature change reaches them
        keys = keys.append_column("max_ts", pa.nulls(keys.num_rows, pa.int64()))
    built = pa.table({"hour": pa.array(p.build, pa.string()),
                      "raw_size": pa.array([p.raw[h].size for h in p.build], pa.int64()),
                      "raw_version": pa.array([p.raw[h].version for h in p.build], pa.string())})
    _bind(con, "__state_old", state)
    _bind(con, "__keys", keys)
    con.register("__built", built)
    con.register("__replaced", pa.table({"hour": pa.array(sorted(replaced), pa.string())}))
    con.register("__dirty", pa.table({"hour": pa.array(p.dirty, pa.string())}))
    con.register("__patched", pa.table({"hour": pa.array(p.patch, pa.string())}))
    sig_filter = ""
    try:
        if _exists(con, SUPPRESSED_KEYS):
            # suppressed keys no index row of the new state holds any more: their signatures are not stored (module
            # doc). Joined from the index side: the suppressed keys are few, the index rows many (build on the few)
            con.execute(f"""create or replace temp table __sig_drop as
                select key from {SUPPRESSED_KEYS}
                except
                select o.key from __state_old o join {SUPPRESSED_KEYS} s on o.key = s.key
                where o.record = 'key' and o.hour not in (select hour from __replaced)
                except
                select k.key from __keys k join {SUPPRESSED_KEYS} s on k.key = s.key""")
            sig_filter = "where key not in (select key from __sig_drop)"
        con.execute(
            f"""
            create or replace temp table {name} as
            select 'meta' as record, null::varchar as hour, null::varchar as key, null::varchar as resolved_subject,
                   '{policy_fingerprint(policy)}' as digest, null::bigint as raw_size, null::varchar as raw_version,
                   null::varchar as base_digest, null::{_DUCKDB_TYPES["intervals"]} as intervals, null::bigint as max_ts
            union all
            select 'hour', hour, null, null, null, case when hour in (select hour from __dirty) then {DIRTY} else raw_size end, raw_version,
                   null, null, null
            from __state_old where record = 'hour' and hour not in (select hour from __replaced)
            union all
            select 'hour', hour, null, null, null, raw_size, raw_version, null, null, null from __built
            union all
            select 'key', hour, key, null, null, null, null, null, null, max_ts
            from __state_old where record = 'key' and hour not in (select hour from __replaced)
            union all
            select 'key', hour, key, null, null, null, null, null, null, max_ts from __keys where hour not in (select hour from __patched)
            union all
            -- a patched hour: its stored index rows (the rows not decided again are still there) and this run's rows
            -- of the rows decided again, one per key (the later event time; unknown if either is)
            select 'key', hour, key, null, null, null, null, null, null,
                   case when bool_or(max_ts is null) then null else max(max_ts) end
            from (select hour, key, max_ts from __state_old where record = 'key' and hour in (select hour from __patched)
                  union all select hour, key, max_ts from __keys where hour in (select hour from __patched))
            group by hour, key
            union all
            select 'sig', null, key, resolved_subject, digest, null, null, base_digest, intervals, null from __sig_new {sig_filter}
            """  # not sorted: at 100M a sort of tens of millions of rows with nested columns ran out of DuckDB's memory
        )
    finally:
        _unbind(con, "__state_old", "__keys")
        for n in ("__built", "__replaced", "__dirty", "__patched"):
            con.unregister(n)
        con.execute("drop table if exists __sig_drop")
    return name
