"""What `personalization materialize` with no selection runs: the steps whose inputs changed, not every step.

The platform is ticked every few minutes and most ticks find nothing new. Running every step on such a tick
rebuilt the features and the warehouse from unchanged inputs (20 s at 1M events, O(history)). Dagster already
records, on every materialization, the data version of each input it read (`dagster/input_data_version/<key>`,
`dagster/input_event_pointer/<key>`); this module compares those with the inputs' latest materializations.

A CLI run without a selection therefore goes in two phases (cli.py `run_materialize`):

1. the **root steps** (assets with no upstream asset: the ingestion of each landing source, the access audit
   log) always run: only they can find new landing objects. Each ingestion step versions its tables by what they
   hold (raw/assets.py: the landing manifest's digest for the events, the inputs' digest for the reference
   sources), so a root that found nothing new keeps its data version;
2. every other selected asset runs if it is **stale** (`stale_assets`), in graph order:
   - it was never materialized, or
   - the run that last materialized it ran other code, policies or settings (`platform_fingerprint`, a tag on
     every CLI run and on the runs the sensors, schedules and jobs launch, and put by the platform's executor on any
     other run, e.g. one launched from the UI, before its first step; a run without the tag counts as other
     code; a run given an explicit configuration such as `--as-of` carries the digest with it mixed in), or
   - an input's latest materialization is not the one it read (`input_event_pointer`) and carries another data
     version than the one read (recorded by Dagster, or that of the materialization the pointer names: below 100
     partitions Dagster records a hash of per-partition versions); e.g. a root that re-ran on unchanged landing
     is no change; Dagster's default version `INITIAL` never counts as equal, or
   - an input is stale itself (it will be rebuilt in this run), or
   - the retention run removed old partitions since it was built (it deletes hours of raw and consented tables in
     place and records that in its own log only), or
   - its own blocking check failed on its latest materialization (it is tried again), or
   - its materialization is due again at a time that has come (`STALE_AFTER_METADATA`: a DP export that kept its
     release inside the release period).
   An output of a step that cannot run a subset takes the whole step along.
   An asset whose input (not rebuilt in this run) has a failed blocking check, or whose root step failed just
   before, is **held**, as Dagster holds it inside one run: it is not run and is reported with the reason. An input
   outside the selection with a failed blocking check, written by a step one of whose selected outputs is (the
   consented hours: the plan holds the consented step's state), makes that output run again, and is then not holding.

Everything else is reported as up to date. `--select`, `--partitions`, `--full-refresh` and an explicit
configuration (`--as-of`) run what they name, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from personalization_assets.core.asset_keys import RETENTION_LOG, STALE_AFTER_METADATA

FINGERPRINT_TAG = "personalization/platform_fingerprint"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_VERSION_TAG = "dagster/input_data_version/{}"
INPUT_POINTER_TAG = "dagster/input_event_pointer/{}"
# Dagster's version of a materialization that has none of its own: equal versions say nothing
UNVERSIONED = frozenset({"INITIAL", "NULL", ""})

_SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".sql", ".csv")  # the package's and the policies' files
_SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache"})
_SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CREDENTIAL")
_SETTING_PREFIXES = ("PERSONALIZATION_", "DBT_", "SNOWFLAKE_")
# settings that say where things are or how fast to go, not what the tables hold. The data dir enters resolved
# (`_local_data_dir`): `make demo` sets the one the CLI otherwise defaults to, spelled differently, the same tables.
# A lake moved elsewhere is new input to the root steps anyway.
_NOT_DECIDING = frozenset({
    "PERSONALIZATION_DATA_DIR", "PERSONALIZATION_LANDING_READ_CONCURRENCY", "PERSONALIZATION_DUCKDB_MEMORY_LIMIT",
    "PERSONALIZATION_ALERT_WEBHOOK_URL", "PERSONALIZATION_SECRETS_ARNS", "PERSONALIZATION_LOG_RECHECK_SEGMENTS",
    "DBT_TARGET_PATH", "DBT_LOG_PATH",
})
_NOT_DECIDING_PREFIXES = ("PERSONALIZATION_COLLECTOR_",)  # the collector's own process (what it lands is input)
_LIBRARIES = ("dagster", "dagster-dbt", "dbt-core", "dbt-duckdb", "dbt-snowflake", "duckdb", "pyarrow", "pandas", "pandera",
              "opendp", "numpy")


def _source_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(_SOURCE_SUFFIXES) and not f.startswith("."))
    return out


def platform_fingerprint() -> str:
    """A digest of what, besides the data, decides the tables: the package's code, the privacy policies, the dbt
    project, the versions of the libraries that compute them, and the settings: every `PERSONALIZATION_*`, `DBT_*`
    and `SNOWFLAKE_*` variable but those of location and speed (`_NOT_DECIDING`), with the content of a file one
    names (e.g. `PERSONALIZATION_ANOMALY_CONFIG`), secrets left
    out (their names hold KEY, SECRET, PASSWORD, TOKEN or CREDENTIAL; the pseudonym key's version enters through the
    reference sources' input digest, and the key rotation job re-keys the tables itself)."""
    from importlib import metadata

    from personalization_assets.core.policies import policy_dir
    from personalization_assets.warehouse.assets import project_fingerprint

    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for label, root in (("package", package), ("policies", policy_dir())):
        for path in _source_files(root):
            h.update(f"{label}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(f"dbt/{project_fingerprint()}\0".encode())  # the dbt project's files, as its partial-parse cache keys them
    for dist in _LIBRARIES:
        try:
            h.update(f"lib/{dist}={metadata.version(dist)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"lib/{dist}=absent\0".encode())
    h.update(f"data_dir/{_local_data_dir()}\0".encode())
    for name in sorted(os.environ):
        if (name.startswith(_SETTING_PREFIXES) and not any(w in name for w in _SECRET_WORDS)
                and name not in _NOT_DECIDING and not name.startswith(_NOT_DECIDING_PREFIXES)):
            value = os.environ[name]
            h.update(f"env/{name}={value}\0".encode())
            if _small_file(value):
                h.update(hashlib.sha256(Path(value).read_bytes()).digest())
    return h.hexdigest()[:32]


def _local_data_dir() -> str:
    """The data dir (`settings.resolve_data_dir`), where it decides tables: locally the warehouse file (and the
    development key) live there, so a run with another data dir has not built them even if the lake is the same.
    '' in production (Snowflake; the dir holds only locks and caches)."""
    from personalization_assets.settings import resolve_data_dir

    if os.environ.get("PERSONALIZATION_ENV", "local") == "prod":
        return ""
    return str(resolve_data_dir(os.environ.get("PERSONALIZATION_DATA_DIR")))


def _small_file(value: str) -> bool:
    try:
        return len(value) < 4096 and os.path.isfile(value) and os.path.getsize(value) <= 1 << 20
    except (OSError, ValueError):
        return False


def configured_fingerprint(fingerprint: str, ops_config: dict) -> str:
    """The tag of a run given an explicit configuration (`--as-of`): its tables are not what the default configuration
    builds, so a later run without one finds them stale."""
    digest = hashlib.sha256(json.dumps(ops_config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{fingerprint}+config:{digest}"


def run_tags() -> dict[str, str]:
    """The tag the runs this code launches carry (the CLI's, the sensors' and the jobs'), so that a CLI run after a
    daemon's run finds the assets built by the same code and settings instead of rebuilding them."""
    return {FINGERPRINT_TAG: platform_fingerprint()}


# op config that decides how a step works, not what it builds (`--full-refresh` builds the same tables)
_HOW_NOT_WHAT = frozenset({"full_refresh"})


def deciding_ops_config(run_config: dict | None) -> dict:
    """The run's op configuration without the fields that do not change what is built (`_HOW_NOT_WHAT`)."""
    out = {}
    for op, cfg in ((run_config or {}).get("ops") or {}).items():
        fields = {k: v for k, v in ((cfg or {}).get("config") or {}).items() if k not in _HOW_NOT_WHAT}
        rest = {k: v for k, v in (cfg or {}).items() if k != "config"}
        if fields or rest:
            out[op] = {**rest, **({"config": fields} if fields else {})}
    return out


def run_fingerprint(run_config: dict | None) -> str:
    """The tag of a run launched with `run_config` (`configured_fingerprint` when it configures what an op builds, as
    the CLI tags a run given `--as-of`)."""
    fingerprint = platform_fingerprint()
    ops = deciding_ops_config(run_config)
    return configured_fingerprint(fingerprint, ops) if ops else fingerprint


class _FingerprintingExecutor(dg.Executor):
    """Dagster's in-process executor that first tags its run with the fingerprint of the code, policies and settings
    the run process loaded, when the launcher gave it none or the run configures what an op builds. Runs launched
    from the UI (a click on Materialize, a backfill, the launchpad) or with `dagster asset materialize` carry no tag
    of ours; without it the next `personalization materialize` counted what they built as built by other code, and
    rebuilt it and everything after it. The run process computes the digest itself, from what it runs."""

    def __init__(self, inner: dg.Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan):
        run = plan_context.dagster_run
        # a job's own tag (`run_tags`, computed when the code server loaded the definitions) knows nothing of the
        # configuration a run of it was launched with (the launchpad): a configured run gets its configured tag
        if FINGERPRINT_TAG not in run.tags or deciding_ops_config(run.run_config):
            plan_context.instance.add_run_tags(run.run_id, {FINGERPRINT_TAG: run_fingerprint(run.run_config)})
        yield from self._inner.execute(plan_context, execution_plan)


@dg.executor(name="in_process", config_schema=dg.in_process_executor.config_schema)
def fingerprinting_executor(init_context):
    """The platform's executor: in-process (our steps are few and heavy; DuckDB uses the cores), every run tagged
    with `run_fingerprint` (`_FingerprintingExecutor`)."""
    return _FingerprintingExecutor(dg.in_process_executor.executor_creation_fn(init_context))


def root_keys(graph, keys) -> set[dg.AssetKey]:
    """The selected assets whose step reads no other asset (the landing sources' ingestion, the audit log)."""
    out = set()
    for key in keys:
        own = set(graph.assets_def_for_key(key).keys)
        if not any(p not in own for k in own for p in graph.get(k).parent_keys):
            out.add(key)
    return out


@dataclass
class StalePlan:
    stale: dict[dg.AssetKey, str] = field(default_factory=dict)   # key -> why it runs
    held: dict[dg.AssetKey, str] = field(default_factory=dict)    # key -> what holds it (a failed check or step upstream)
    fresh: set[dg.AssetKey] = field(default_factory=set)          # up to date

    def describe(self, listed: int = 8) -> list[str]:
        """One line per reason: what ran (or is held) for it."""
        lines = []
        for verb, reasons in (("runs", self.stale), ("held", self.held)):
            by_reason: dict[str, list[str]] = {}
            for key, why in reasons.items():
                by_reason.setdefault(why, []).append(key.to_user_string())
            for why, names in sorted(by_reason.items(), key=lambda kv: sorted(kv[1])[0]):
                names.sort()
                more = f", … ({len(names) - listed} more)" if len(names) > listed else ""
                lines.append(f"  {verb}: {', '.join(names[:listed])}{more} ({why})")
        if self.fresh:
            lines.append(f"  up to date: {len(self.fresh)} assets")
        return lines


def _failed_blocking_checks(instance, graph, keys) -> dict[dg.AssetKey, str]:
    """For each key with a blocking check whose latest completed evaluation failed with severity ERROR: which. (An
    evaluation only planned since — a run still going, or one that stopped before the check — does not hide it.)"""
    specs = [spec.key for key in keys for spec in graph.assets_def_for_key(key).check_specs
             if spec.asset_key == key and spec.blocking]
    failed = {}
    summaries = instance.event_log_storage.get_asset_check_summary_records(specs) if specs else {}
    for check_key in sorted(specs, key=lambda c: c.to_user_string()):
        summary = summaries.get(check_key)
        record = summary.last_completed_check_execution_record if summary is not None else None
        if record is None or record.status.value != "FAILED":
            continue
        event = record.event.dagster_event if record.event is not None else None
        evaluation = event.event_specific_data if event is not None else None
        if getattr(evaluation, "severity", dg.AssetCheckSeverity.ERROR) == dg.AssetCheckSeverity.ERROR:
            failed.setdefault(check_key.asset_key, f"blocking check {check_key.name} of {check_key.asset_key.to_user_string()} failed")
    return failed


def stale_assets(instance, graph, keys, fingerprint: str, failed=frozenset()) -> StalePlan:
    """Which of `keys` must run (see the module docstring). Their inputs outside `keys` (the root steps, run just
    before) are taken as they are now: latest materializations and latest check evaluations. `failed`: inputs whose
    step failed just before (what reads them is held, as Dagster holds it inside one run)."""
    keys = set(keys)

    def inputs(key):  # an output of a step that runs whole reads its step's other outputs within the step
        assets_def = graph.assets_def_for_key(key)
        return {p for p in graph.get(key).parent_keys if assets_def.can_subset or p not in assets_def.keys}

    parents = {k: inputs(k) for k in keys}
    relevant = keys | {p for ps in parents.values() for p in ps}
    records = {}
    for rec in instance.get_asset_records(list(relevant)):
        records[rec.asset_entry.asset_key] = rec.asset_entry.last_materialization_record
    run_ids = {r.event_log_entry.run_id for k, r in records.items() if r is not None and k in keys}
    prints = {run.run_id: run.tags.get(FINGERPRINT_TAG) for run in instance.get_runs(filters=dg.RunsFilter(run_ids=sorted(run_ids)))} if run_ids else {}
    blocked = {**_failed_blocking_checks(instance, graph, relevant),
               **{k: f"the step of {k.to_user_string()} failed" for k in failed}}
    built = [r.storage_id for k, r in records.items() if r is not None and k in keys]
    removed = _retention_removals(instance, min(built)) if built else []
    read = _versions_read(instance, records, parents)
    context = _Context(records, prints, fingerprint, removed, read, blocked, datetime.now(timezone.utc))

    # a step that cannot run a subset is decided as one: all its selected outputs run, or are held, or none
    def step_of(key):
        assets_def = graph.assets_def_for_key(key)
        return [k for k in assets_def.keys if k in keys] if not assets_def.can_subset else [key]

    # a blocked asset outside the selection written by a step whose other output is selected (consented/events: the
    # plan holds its step's state, not its hours): that output runs again, and the blocked asset with it
    rebuilt_with = {b: outs for b in blocked if b not in keys and (outs := sorted(set(graph.assets_def_for_key(b).keys) & keys))}
    for b, outs in rebuilt_with.items():
        for out in outs:
            context.blocked.setdefault(out, blocked[b])
    order = [k for k in graph.toposorted_asset_keys if k in keys]
    stale: dict[dg.AssetKey, str] = {}
    while True:  # until no step turns stale (a step's output may precede another step's input in the key order)
        held: dict[dg.AssetKey, str] = {}
        added = False
        for key in order:
            if key in stale or key in held:
                continue
            step = step_of(key)
            why_held = next(filter(None, (_held_by(parents[k], blocked, stale, held, rebuilt_with) for k in step)), None)
            if why_held:
                held.update({k: why_held for k in step})
                continue
            why = next(((k, w) for k in step if (w := _why_stale(k, parents[k], stale, context))), None)
            if why:
                first, reason = why
                stale.update({k: reason if k == first else f"written by the same step as {first.to_user_string()}"
                              for k in step if k not in stale})
                added = True
        if not added:
            break
    return StalePlan(stale=stale, held=held, fresh=keys - set(stale) - set(held))


def _held_by(parents, blocked, stale, held, rebuilt_with=None) -> str | None:
    """Why an asset may not run: an input that is not rebuilt in this run has a failed blocking check, or is held.
    (An input rebuilt in this run has its checks evaluated again; Dagster holds the asset in the run if one fails.)
    `rebuilt_with`: blocked inputs outside the selection rebuilt by the step of the selected outputs listed."""
    for parent in sorted(parents, key=lambda p: p.to_user_string()):
        if parent in held:
            return f"{parent.to_user_string()} is held"
        rebuilt = parent in stale or any(o in stale for o in (rebuilt_with or {}).get(parent, ()))
        if parent in blocked and not rebuilt:
            return blocked[parent]
    return None


def _retention_removals(instance, after_storage_id: int) -> list[int]:
    """Storage ids of the retention runs that removed partitions after `after_storage_id`. The retention job deletes old
    hours of raw and consented tables in place (privacy/operations.py) and records it only in its own log, which no
    asset reads: every asset built before such a run is stale (a rebuild drops what the deleted hours held)."""
    out, cursor = [], None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RETENTION_LOG, after_storage_id=after_storage_id), limit=1000, cursor=cursor)
        for record in page.records:
            removed = record.asset_materialization.metadata.get("partitions_removed")
            if removed is None or getattr(removed, "value", removed):
                out.append(record.storage_id)
        if not page.has_more:
            return out
        cursor = page.cursor


@dataclass
class _Context:
    records: dict       # key -> its latest materialization record (or None)
    prints: dict        # run id -> that run's fingerprint tag
    fingerprint: str    # this code's
    removed: list       # storage ids of retention runs that removed partitions
    read: dict          # (key, parent) -> the data version of the parent's materialization the key read
    blocked: dict       # key -> why what reads it is held (its blocking check failed, its step failed)
    now: datetime


def _versions_read(instance, records, parents) -> dict:
    """For each key and input: the data version of the input's materialization the key read (its
    `input_event_pointer`). Dagster's own `input_data_version` tag holds, for an input with fewer than 100
    partitions, a hash of the per-partition versions instead: useless for an input versioned as a whole (raw/events)."""
    wanted: dict[dg.AssetKey, dict[int, list]] = {}
    for key, ps in parents.items():
        record = records.get(key)
        tags = (record.asset_materialization.tags or {}) if record is not None else {}
        for parent in ps:
            pointer = tags.get(INPUT_POINTER_TAG.format(parent.to_user_string()))
            if pointer and pointer.isdigit():
                wanted.setdefault(parent, {}).setdefault(int(pointer), []).append(key)
    out = {}
    for parent, by_pointer in wanted.items():
        ids = sorted(by_pointer)
        for i in range(0, len(ids), 500):
            page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=parent, storage_ids=ids[i:i + 500]), limit=500)
            for rec in page.records:
                version = (rec.asset_materialization.tags or {}).get(DATA_VERSION_TAG, "")
                for key in by_pointer.get(rec.storage_id, []):
                    out[(key, parent)] = version
    return out


def _why_stale(key, parents, stale, ctx: _Context) -> str | None:
    record = ctx.records.get(key)
    if record is None:
        return "never materialized"
    if ctx.prints.get(record.event_log_entry.run_id) != ctx.fingerprint:
        return "last built by other code, policies, settings or configuration"
    if any(storage_id > record.storage_id for storage_id in ctx.removed):
        return "the retention run removed old partitions since"
    if key in ctx.blocked:  # its own blocking check failed on its latest materialization: try again
        return f"{ctx.blocked[key]}: run again"
    due = record.asset_materialization.metadata.get(STALE_AFTER_METADATA)
    if due is not None and ctx.now >= datetime.fromisoformat(str(getattr(due, "value", due))):
        return f"due again since {getattr(due, 'value', due)}"
    tags = record.asset_materialization.tags or {}
    for parent in sorted(parents, key=lambda p: p.to_user_string()):
        name = parent.to_user_string()
        if parent in stale:
            return f"{name} is rebuilt"
        current = ctx.records.get(parent)
        if current is None:
            continue  # nothing to read yet; its first materialization will be newer than this one's pointer
        if tags.get(INPUT_POINTER_TAG.format(name)) == str(current.storage_id):
            continue
        version = (current.asset_materialization.tags or {}).get(DATA_VERSION_TAG, "")
        if version not in UNVERSIONED and version in (tags.get(INPUT_VERSION_TAG.format(name)), ctx.read.get((key, parent))):
            continue
        return f"{name} changed"
    return None
