"""Privacy operations run as assets of their own jobs: erasure, retention and key rotation.

Each writes an append-only, hash-chained log in the privacy tier recording what it did.
"""

import hashlib
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.asset_keys import ERASURE_LOG, KEY_ROTATION_LOG, RETENTION_LOG, SUPPRESSION_LIST
from personalization_assets.core.audit import auditor
from personalization_assets.core.platform import lock_dir
from personalization_assets.privacy import erasure
from personalization_assets.privacy import erasure_state as es
from personalization_assets.privacy.erasure import ERASURE_LOG_SCHEMA, Subjects, order_targets, plan_targets
from personalization_assets.core.hash_chain import HashChainedLog
from personalization_assets.core.policies import get_policy
from personalization_assets.core.pseudonymize import PSEUDONYM_RE, Pseudonymizer
from personalization_assets.core import retention as recorded
from personalization_assets.resources import PlatformConfig
from personalization_assets.core.storage import LakeStorage

GROUP = "privacy"
OWNERS = ["team:privacy-engineering"]
# the operations: run only by their own jobs (never by automation, a full refresh or the ingestion)
OPERATIONS = dg.AssetSelection.assets(ERASURE_LOG, RETENTION_LOG, KEY_ROTATION_LOG)
TEMP_FILES = "lake/_tmp (interrupted writes)"  # erasure log row for temporary files of killed writes
SCOPE = ("every partition of every lake target holds no suppressed identifier: either it was read and checked this run, "
         "or an earlier run verified it clean against every identifier not new to the list and its file is unchanged "
         "since (same listing fingerprint); plus every warehouse relation (counted this run) and no temp file left")

RETENTION_SCHEMA = pa.schema(
    [("seq", pa.int64()), ("tier", pa.string()), ("table", pa.string()), ("partition", pa.string()), ("rows_removed", pa.int64()),
     ("retention_days", pa.int64()), ("cutoff", pa.timestamp("us", tz="UTC")), ("run_id", pa.string()), ("removed_at", pa.timestamp("us", tz="UTC")),
     ("prev_hash", pa.string()), ("row_hash", pa.string())]
)
ROTATION_SCHEMA = pa.schema(
    [("seq", pa.int64()), ("layer", pa.string()), ("table", pa.string()), ("partition", pa.string()), ("values_rekeyed", pa.int64()),
     ("to_version", pa.string()), ("run_id", pa.string()), ("rotated_at", pa.timestamp("us", tz="UTC")), ("prev_hash", pa.string()), ("row_hash", pa.string())]
)


def requests_digest(request_ids) -> str:
    """sha256 of the request ids, sorted, one per line: what the erasure log's `requests_digest` holds. An auditor
    with the list of requests received by a date recomputes it to check what a run verified against."""
    return hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()


def _log(lake, platform, name, schema) -> HashChainedLog:
    return HashChainedLog(lake=lake.log_store(), name=name, schema=schema, lock_dir=lock_dir(platform))


# a privacy operation waits this long for a build holding a table's writer lock (a 100M-event feature build: ~20 min)
BUILDER_LOCK_TIMEOUT = 6 * 3600.0


def _builders_lock(context, lake: LakeStorage, spec):
    """`hash_chain.table_writer_lock` for a privacy operation: it waits for the build in progress, and says so."""
    from personalization_assets.core.hash_chain import table_writer_lock

    def on_wait():
        context.log.info(f"waiting for the build holding {spec['layer']}/{spec['name']} to finish")

    return table_writer_lock(lake, spec, lock_timeout=BUILDER_LOCK_TIMEOUT, on_wait=on_wait)


def build_erasure_asset(asset_graph, warehouse_eraser_key: str | None = None):
    """The erasure run. `asset_graph` is the graph of every other asset (the lineage that drives the plan)."""
    policy = get_policy()
    targets, retained = plan_targets(asset_graph, policy.erasure_exempt)
    targets = order_targets(targets)
    required = {"lake", "duckdb", "pseudonymizer", "platform"} | ({warehouse_eraser_key} if warehouse_eraser_key else set())

    @dg.asset(
        key=ERASURE_LOG,
        description="Erasure run (GDPR Art. 17): removes every suppressed subject from every asset downstream of the raw "
        "sources (plan derived from the lineage), verifies absence, and appends what it did to a hash-chained log.",
        # it reads and rewrites every target: in a run that also builds them (the demo, a full refresh), it comes last
        group_name=GROUP, owners=OWNERS, kinds={"parquet"},
        # after every target it erases from; not after those with nothing to erase (`none`: the DP exports, the catalog):
        # a failed DP export (budget spent) skipped the erasure in every run that built both, tick after tick
        deps=[SUPPRESSION_LIST, *sorted({dg.AssetKey.from_user_string(t.asset) for t in targets if t.handler["kind"] != "none"}
                                        - {SUPPRESSION_LIST}, key=lambda k: k.path)],
        metadata={"privacy/tier": "privacy", "erasure_plan": dg.MetadataValue.json([t.asset for t in targets]),
                  "retained_as_evidence": dg.MetadataValue.json(retained)},
        check_specs=[dg.AssetCheckSpec("subjects_absent_everywhere", asset=ERASURE_LOG, blocking=True,
                                       description="After the run, no target holds a row of an erased subject: every partition was "
                                       "checked this run or verified clean earlier with an unchanged fingerprint.")],
        required_resource_keys=required,
    )
    def erasure_log(context: dg.AssetExecutionContext):
        lake: LakeStorage = context.resources.lake
        platform: PlatformConfig = context.resources.platform
        pz: Pseudonymizer = context.resources.pseudonymizer
        log = _log(lake, platform, "erasure_log", ERASURE_LOG_SCHEMA)
        if not lake.exists("privacy", "suppression_list"):
            yield dg.MaterializeResult(metadata={"requests": 0, "rows_written": 0})
            yield dg.AssetCheckResult(check_name="subjects_absent_everywhere", passed=True, metadata={"subjects": 0})
            return
        audit = auditor(context, lake, platform, ERASURE_LOG)
        # every table the run may read, declared in one append before any is read: the targets and the tables their
        # handlers also clean (`also`, e.g. privacy/identity_partials). An undeclared one was recorded once per
        # partition read (one audit segment each: 130-300 per run at 1M events)
        lake_targets = [t for t in targets if t.handler["kind"] in ("raw", "quarantine", "lake")]
        audit.record([(SUPPRESSION_LIST.to_user_string(), None, None)]
                     + list(dict.fromkeys((name, "*", None) for t in lake_targets
                                          for name in [t.asset] + [erasure.table_name(h) for h in erasure.lake_tables(t)])))
        suppression = lake.read_table("privacy", "suppression_list")
        requests = sorted(set(suppression["request_id"].to_pylist()))
        # every lookup is by pseudonym of an exact, normalized identifier: no raw value is needed or held
        subjects = Subjects(pseudonyms={i for i in suppression["identifier"].to_pylist() if i})
        # what earlier runs verified clean (privacy/erasure_state): valid only for the same key version and plan
        settings = {"format": es.FORMAT, "key_version": str(pz.chain().active), "plan": es.plan_digest(targets)}
        state, state_status = es.read_state(lake, settings)
        if state is None:
            new_ids = set(subjects.pseudonyms)
        else:
            new_ids = {i for i in subjects.pseudonyms if es.identifier_digest(i) not in state.identifiers}
        removed, residual, scans = {}, {}, {}
        verified: dict[tuple[str, str], dict[str, str]] = {}
        now = datetime.now(timezone.utc)
        # temp files of killed writes may hold any table's rows and cannot be searched: delete the dead ones
        removed[TEMP_FILES] = len(lake.sweep_temp_files())
        with context.resources.duckdb.get_connection() as con:
            for t in targets:
                kind = t.handler["kind"]
                if kind == "none":
                    removed[t.asset] = residual[t.asset] = 0
                elif kind == "warehouse":  # SQL deletes by pseudonym, then a count: cheap, done every run
                    eraser = getattr(context.resources, warehouse_eraser_key)
                    removed[t.asset] = eraser.erase(t.handler, subjects.pseudonyms, apply=True)
                    residual[t.asset] = eraser.erase(t.handler, subjects.pseudonyms, apply=False)
                else:
                    total = erasure.TableScan()
                    # the lock the target's builder holds while it rewrites the table set (a concurrent run): without
                    # it, a build between this read and this write lost what it wrote, or kept a stale state
                    with _builders_lock(context, lake, t.handler.get("writer_lock")):
                        for h in erasure.lake_tables(t):
                            name = erasure.table_name(h)
                            known = state.known(t.asset, name) if state is not None else None
                            scan = erasure.erase_from_table(lake, con, pz, t, h, subjects.pseudonyms, new_ids, known)
                            verified[(t.asset, name)] = scan.verified
                            total.add(scan)
                    removed[t.asset], residual[t.asset], scans[t.asset] = total.removed, total.residual, total
        # a temp file still there belongs to a live writer (a concurrent run): its content is unknown
        residual[TEMP_FILES] = len(lake.temp_files())
        ok = all(v == 0 for v in residual.values())
        # `verified` means: every partition of every target (quarantines and temp files included) holds none of the
        # subjects — read this run, or verified clean by an earlier run against every other identifier and unchanged since
        # the log names a request in the run that first verifies it, and every run states how many requests it verified
        # against and their digest: a run with nothing new appends no copy of the whole list (one per target and run
        # grew with requests × runs: ~21 bytes × requests a run, on top of each row's hash)
        digests = {r: es.identifier_digest(r) for r in requests}
        verified_before = state.requests if state is not None else set()
        first = [r for r in requests if digests[r] not in verified_before]
        common = {"request_ids": ",".join(first), "requests_in_force": len(requests), "requests_digest": requests_digest(requests),
                  "verified": ok, "erased_at": now, "run_id": context.run.run_id}
        rows = [{**common, "asset": name, "action": action, "rows_removed": int(removed[name]), "residual_rows": int(residual[name])}
                for name, action in [(t.asset, t.handler["kind"]) for t in targets] + [(TEMP_FILES, "temp_files")]]
        rows += [{**common, "asset": name, "action": "retained_as_evidence", "rows_removed": 0, "residual_rows": 0} for name in retained]
        appended, head = log.append(rows)
        # recorded only after the log: a run that dies before this line is followed by one that verifies (and lists) again
        still_listed = set(digests.values())
        state_rows = es.write_state(lake, verified, subjects.pseudonyms, settings,
                                    requests=still_listed if ok else verified_before & still_listed)
        read_full = sum(s.full for s in scans.values())
        read_new = sum(s.new_ids for s in scans.values())
        skipped = sum(s.skipped for s in scans.values())
        scope = {"state": state_status, "new_identifiers": len(new_ids), "partitions_checked_against_whole_list": read_full,
                 "partitions_checked_for_new_identifiers": read_new, "partitions_unchanged_not_read": skipped,
                 "partitions_rewritten": sum(s.rewritten for s in scans.values()),
                 "tables_without_fingerprints": sorted(a for a, s in scans.items() if not s.fingerprints)}
        yield dg.MaterializeResult(metadata={
            "requests": len(requests), "requests_first_verified": len(first) if ok else 0,
            "subject_identifiers": len(subjects.pseudonyms), "rows_written": appended,
            "rows_removed_per_asset": dg.MetadataValue.json({k: v for k, v in removed.items() if v}),
            "retained_as_evidence": dg.MetadataValue.json(retained), "head_hash": head,
            "scope": dg.MetadataValue.json(scope), "state_rows": state_rows,
            "partitions_read_per_asset": dg.MetadataValue.json({a: s.full + s.new_ids for a, s in scans.items() if s.full + s.new_ids}),
        })
        yield dg.AssetCheckResult(check_name="subjects_absent_everywhere", passed=ok, metadata={
            "residual_per_asset": dg.MetadataValue.json({k: v for k, v in residual.items() if v}), "targets": len(targets),
            "scope": SCOPE, **{k: (dg.MetadataValue.json(v) if isinstance(v, list) else v) for k, v in scope.items()}})

    return erasure_log


RETENTION_TABLES = {  # tier -> (layer, table, partitioned by hour) ; the landing zone belongs to the CDP
    "raw": [("raw", "events", True)],
    "quarantine": [("raw", "events_quarantine", True)],
    "consented": [("consented", "events", True)],
    # the identity partials outlive raw retention (they attribute consent decisions the ledger keeps), for the privacy
    # tier's years; a key rotation rewrites them, which restarts S3's age of each object: the job deletes them by hour
    "privacy": [("privacy", "identity_partials", True)],
}


def build_retention_asset(handlers: dict[str, dict]):
    """The daily retention run. `handlers`: `lake_table_handlers` of the lineage, for the writer locks of the tables it
    deletes from."""

    @dg.asset(
        key=RETENTION_LOG,
        description="Daily retention: deletes time partitions older than privacy_policies/retention.yaml allows and "
        "appends what it removed to a hash-chained log.",
        group_name=GROUP, owners=OWNERS, kinds={"parquet"},
        metadata={"privacy/tier": "privacy"},
    )
    def retention_log(context: dg.AssetExecutionContext, lake: LakeStorage, platform: PlatformConfig):
        policy = get_policy()
        log = _log(lake, platform, "retention_log", RETENTION_SCHEMA)
        now = datetime.now(timezone.utc)
        rows = []
        try:
            _delete_expired(context, lake, handlers, policy, now, rows)
        finally:  # what was deleted is logged, also when a later table failed (a lock not obtained, a storage error)
            appended, head = log.append(rows)
        return dg.MaterializeResult(metadata={"partitions_removed": appended, "rows_written": appended,
                                              "rows_removed": sum(r["rows_removed"] for r in rows), "head_hash": head})

    return retention_log


def _delete_expired(context, lake: LakeStorage, handlers: dict[str, dict], policy, now: datetime, rows: list[dict]) -> None:
    """Delete every partition `retention.yaml` says is expired, appending a log row to `rows` for each deletion. The
    tiers' cutoffs are recorded first (`core/retention.py`): from then on nothing brings such an hour back."""
    cutoffs = recorded.record_cutoffs(lake, {tier: now - timedelta(days=policy.retention[tier].days)
                                             for tier in RETENTION_TABLES if tier in policy.retention})
    for tier, tables in RETENTION_TABLES.items():
        if tier not in policy.retention:
            continue
        days = policy.retention[tier].days
        cutoff = cutoffs[tier]
        for layer, table, _ in tables:
            handler = handlers.get(f"{layer}/{table}", {})
            # the lock its builder holds (the ingestion's for raw hours), and each partition's own where concurrent
            # runs write them (consented hours): an erasure or a build rewriting a partition meanwhile put it back
            with _builders_lock(context, lake, handler.get("writer_lock")):
                for part in lake.partitions(layer, table):
                    if "date" not in part:
                        continue
                    if not recorded.partition_before(part, cutoff):
                        continue
                    with erasure.partition_lock(lake, handler, part):
                        if not lake.exists(layer, table, part):
                            continue  # deleted meanwhile
                        n = lake.parquet_metadata(layer, table, part).num_rows  # footer only
                        lake.delete_partition(layer, table, part)
                    rows.append({"tier": tier, "table": f"{layer}/{table}", "partition": f"{part['date']}-{part.get('hour', '00')}:00",
                                 "rows_removed": n, "retention_days": days, "cutoff": cutoff, "run_id": context.run.run_id, "removed_at": now})


ROTATION_LAYERS = ("consented", "features", "privacy")
ROTATION_SKIP = {("privacy", "consent_ledger"), ("privacy", "access_audit_log"), ("privacy", "erasure_log"),
                 ("privacy", "retention_log"), ("privacy", "key_rotation_log"), ("privacy", "dp_budget_ledger")}


def rekey_table(table: pa.Table, chain, to_version: str) -> tuple[pa.Table, int]:
    """Re-key every pseudonym (string or list-of-string columns) below `to_version`; other values untouched."""
    changed = 0
    for i, field in enumerate(table.schema):
        col = table.column(i)
        is_list = pa.types.is_list(field.type) and pa.types.is_string(field.type.value_type)
        if not (pa.types.is_string(field.type) or is_list):
            continue
        flat = pc.list_flatten(col) if is_list else col
        unique = pc.unique(flat.combine_chunks() if hasattr(flat, "combine_chunks") else flat)
        # only pseudonyms of another key version go through Python (none in the steady state)
        other_version = pc.and_(pc.match_substring_regex(unique, r"^v[0-9]+:[0-9a-f]{64}$"),
                                pc.invert(pc.starts_with(unique, f"v{to_version}:")))
        distinct = [v for v in pc.filter(unique, pc.fill_null(other_version, False)).to_pylist() if v]
        mapping = {}
        for v in distinct:
            m = PSEUDONYM_RE.match(v)
            if m and int(m.group(1)) < int(to_version):
                mapping[v] = chain.rekey(v, to_version)
        if not mapping:
            continue
        changed += len(mapping)
        if is_list:
            new = pa.array([[mapping.get(x, x) for x in xs] if xs is not None else None for xs in col.to_pylist()], field.type)
        else:
            keys = pa.array(list(mapping), pa.string())
            idx = pc.index_in(col, value_set=keys)
            vals = pa.array(list(mapping.values()), pa.string())
            new = pc.if_else(pc.is_null(idx), col, pc.take(vals, pc.fill_null(idx, 0)))
        table = table.set_column(i, field, new)
    return table, changed


def lake_table_handlers(asset_graph) -> dict[str, dict]:
    """{layer/table: its erasure handler} of every lake table of the erasure plan (`also` tables included)."""
    targets, _ = plan_targets(asset_graph, get_policy().erasure_exempt)
    return {erasure.table_name(h): {**h, "writer_lock": t.handler.get("writer_lock")} for t in targets
            if t.handler["kind"] in ("raw", "quarantine", "lake") for h in erasure.lake_tables(t)}


def table_writer_locks(asset_graph) -> dict[str, dict]:
    """{layer/table: writer lock spec} of every lake table whose builder declares the lock it holds (`writer_lock` in
    its `privacy/erasure` handler, `also` tables included): what a privacy operation rewriting the table must hold."""
    return writer_locks_of(lake_table_handlers(asset_graph))


def writer_locks_of(handlers: dict[str, dict]) -> dict[str, dict]:
    """{layer/table: writer lock spec} of the `lake_table_handlers` that declare one."""
    return {name: h["writer_lock"] for name, h in handlers.items() if h.get("writer_lock")}


def build_key_rotation_asset(handlers: dict[str, dict]):
    """The key rotation. `handlers`: `lake_table_handlers` of the lineage, for the writer locks of the tables it
    rewrites."""
    locks = writer_locks_of(handlers)

    @dg.asset(
        key=KEY_ROTATION_LOG,
        description="Key rotation: re-keys every pseudonym in the curated and privacy tiers to the active key version "
        "(keys chain, so joins with new data are kept) and logs each table touched. The immutable logs keep their "
        "original values; readers re-key them on the fly.",
        group_name=GROUP, owners=OWNERS, kinds={"parquet"}, metadata={"privacy/tier": "privacy"},
    )
    def key_rotation_log(context: dg.AssetExecutionContext, lake: LakeStorage, pseudonymizer: Pseudonymizer, platform: PlatformConfig):
        chain = pseudonymizer.chain()
        target = chain.active
        now = datetime.now(timezone.utc)
        rows = []
        # one audit append for every sensitive table this run re-keys (the lake would otherwise record each read)
        auditor(context, lake, platform, KEY_ROTATION_LOG).record(
            [(f"{layer}/{table}", "*", None) for layer in ROTATION_LAYERS for table in _tables(lake, layer) if (layer, table) not in ROTATION_SKIP])
        for layer in ROTATION_LAYERS:
            tables = [t for t in _tables(lake, layer) if (layer, t) not in ROTATION_SKIP]
            # the writer locks of the layer's tables, held for the whole layer: a build never sees a table set half
            # re-keyed (the features and their per-person state), nor writes between a read and its re-keyed write
            specs = sorted({(s["layer"], s["name"]) for t in tables if (s := locks.get(f"{layer}/{t}"))})
            with ExitStack() as held:
                for spec_layer, spec_name in specs:
                    held.enter_context(_builders_lock(context, lake, {"layer": spec_layer, "name": spec_name}))
                for table in tables:
                    parts = lake.partitions(layer, table)
                    for part in parts or [None]:
                        # a table whose partitions concurrent runs write (each under its partition's lock): that lock
                        with erasure.partition_lock(lake, handlers.get(f"{layer}/{table}", {}), part or None):
                            if not lake.exists(layer, table, part or None):
                                continue  # none, or deleted meanwhile (retention, a rebuild)
                            data = lake.read_table(layer, table, part or None)
                            new, n = rekey_table(data, chain, target)
                            if n:
                                lake.write_table(layer, table, new, partition=part or None)
                            rows.append({"layer": layer, "table": table, "partition": "/".join(f"{k}={v}" for k, v in (part or {}).items()),
                                         "values_rekeyed": n, "to_version": target, "run_id": context.run.run_id, "rotated_at": now})
        appended, head = _log(lake, platform, "key_rotation_log", ROTATION_SCHEMA).append(rows)
        return dg.MaterializeResult(metadata={"to_version": target, "tables_rekeyed": appended, "rows_written": appended,
                                              "values_rekeyed": sum(r["values_rekeyed"] for r in rows), "head_hash": head})

    return key_rotation_log


def _tables(lake: LakeStorage, layer: str) -> list[str]:
    names = set()
    for f in lake.list_files(layer):
        parts = f.path.split("/")
        if len(parts) >= 3 and parts[-1] == "data.parquet":
            names.add(parts[1])
    return sorted(names)
