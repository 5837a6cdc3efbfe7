"""`personalization` console script: a thin layer over the Dagster definitions.

    personalization generate --users N --events M --seed S [--bad-fraction F] [--layout hive|segment-s3|rudderstack-s3]
    personalization materialize [--select SELECTION] [--partitions START..END] [--full-refresh] [--as-of T]
    personalization collect [--host 127.0.0.1] [--port 8088]

Runs go through the Dagster instance in $DAGSTER_HOME (default ./.dagster_home), so everything the CLI
does shows up in the UI (`make dev`).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

DEFAULT_DAGSTER_HOME = ".dagster_home"
DAGSTER_YAML = """\
# Local Dagster instance (sqlite storage under this directory). Production uses infra/dagster/dagster.prod.yaml.
telemetry:
  enabled: false
nux:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
    # the streaming ingestion runs also rebuild the (unpartitioned) consent state: one at a time
    tag_concurrency_limits:
      - key: personalization/streaming
        limit: 1
    # freshness latency: pick a queued run up within a second (the default is 5 s)
    dequeue_interval_seconds: 1
# run monitoring watches runs started through a run launcher (the daemon's queue); runs the CLI executes
# in-process are checked by the CLI itself: each start marks failed the runs whose CLI process died
run_monitoring:
  enabled: true
run_retries:
  enabled: true
  max_retries: 1
"""


INIT_LOCK = ".personalization-init.lock"


def ensure_dagster_home() -> Path:
    """Default DAGSTER_HOME to ./.dagster_home and give it a dagster.yaml (Dagster warns without one).
    The file is created atomically (a reader never sees half of it, two CLIs never both write it)."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        tmp = home / f".dagster.yaml.{os.getpid()}.tmp"
        tmp.write_text(DAGSTER_YAML)
        try:
            os.link(tmp, cfg)  # fails if another process created it first: theirs is kept
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@contextmanager
def _home_lock(home: Path):
    import fcntl

    with open(home / INIT_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_instance():
    """The instance in $DAGSTER_HOME, its storage created under an inter-process lock: two CLIs started
    together on a fresh home would otherwise both create the sqlite tables (`table runs already exists`,
    duplicate alembic stamps). Once initialised, opening is a no-op migration-wise. Runs of earlier CLI
    processes that died (SIGKILL, OOM) are marked failed (`fail_dead_cli_runs`)."""
    import dagster as dg

    from personalization_assets.monitoring.cli_runs import fail_dead_cli_runs

    home = ensure_dagster_home()
    with _home_lock(home):
        instance = dg.DagsterInstance.get()
        # touch every storage now, while holding the lock (sqlite creates tables on first use)
        instance.get_runs(limit=1)
        instance.get_asset_keys(limit=1)
        instance.all_instigator_state()
        fail_dead_cli_runs(instance)
    return instance


def store_outside_a_run(store_cls, url: str, settings):
    """A landing zone or lake of these settings for the CLI's own use, outside a Dagster run, with the credentials the
    resources take (resources.build_resources): the static keys when both are set, else the default chain (a role)."""
    static = settings.has_static_aws_credentials
    return store_cls(url=url, s3_endpoint_url=settings.s3_endpoint_url, aws_region=settings.aws_region,
                     aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") if static else None,
                     aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") if static else None)


def _cmd_generate(args) -> int:
    from personalization_assets.generator import generate_landing_zone
    from personalization_assets.core.storage import LandingZone
    from personalization_assets.settings import load_settings

    settings = load_settings()
    landing = store_outside_a_run(LandingZone, settings.landing_url, settings)
    # default: up to yesterday (UTC), so no generated event lies in the future of the run
    end = date.fromisoformat(args.end) if args.end else (datetime.now(timezone.utc) - timedelta(days=1)).date()
    summary = generate_landing_zone(
        landing.filesystem(),
        landing.root,
        users=args.users,
        events=args.events,
        seed=args.seed,
        bad_fraction=args.bad_fraction,
        end=end,
        days=args.days,
        gzip=not args.no_gzip,
        all_consent=args.all_consent,
        layout=args.layout,
    )
    d = summary.to_dict()
    print(f"Landing zone written to {settings.landing_url}")
    for k, v in d.items():
        print(f"  {k}: {v}")
    return 0


def landing_partition_keys(defs, settings) -> list[str]:
    """Event hours that hold data or will: the lake's raw/events hours plus the hours the landing objects are
    filed under (hive folder hour; a RudderStack file's timestamp hour; a Segment received day's 24 hours).
    Ingestion itself files each message by its receivedAt; this only bounds a partition range."""
    from datetime import timedelta

    import dagster as dg

    from personalization_assets.raw.layouts import list_landing, plan_landing
    from personalization_assets.core.partitions import PARTITION_FMT

    lake, landing = defs.resources["lake"], defs.resources["landing"]
    # outside a run the resource still holds its EnvVar settings: resolve them for this listing
    landing = type(landing)(**{name: (v.get_value() if isinstance(v, dg.EnvVar) else v)
                               for name in type(landing).model_fields if (v := getattr(landing, name)) is not None})
    keys = {f"{p['date']}-{p['hour']}:00" for p in lake.partitions("raw", "events") if p.get("date") and p.get("hour")}
    plan = plan_landing(list_landing(landing), getattr(defs.resources.get("platform"), "events_layout", "auto"))
    for e in plan.events:
        span = 24 if e.layout == "segment-s3" else 1
        keys |= {(e.object_hour + timedelta(hours=h)).strftime(PARTITION_FMT) for h in range(span)}
    return sorted(keys)


def self_partitioning(graph, key) -> bool:
    """A partitioned asset written by an incremental step that finds its own stale hours (raw/events,
    consented/events): its step runs without a partition range and logs the hours it rewrote."""
    node = graph.get(key)
    if node.partitions_def is None:
        return False
    assets_def = graph.assets_def_for_key(key)
    return any(spec.partitions_def is None for spec in assets_def.specs)


def plan_selection(graph, keys, partitions: str | None) -> set:
    """The asset keys a run selects. Without a partition range, a self-partitioning asset whose step has
    partitioned inputs (consented/events) is left out: its step runs through its unpartitioned state asset and
    logs the hours it rewrote (Dagster would otherwise need a partition range to version the inputs)."""
    if partitions:
        return set(keys)
    out = set()
    for k in keys:
        if self_partitioning(graph, k):
            assets_def = graph.assets_def_for_key(k)
            parents = {p for spec in assets_def.specs for p in graph.get(spec.key).parent_keys if p not in assets_def.keys}
            if any(graph.get(p).partitions_def is not None for p in parents):
                # its step still runs, through the unpartitioned asset(s) it also writes
                out |= {spec.key for spec in assets_def.specs if spec.partitions_def is None}
                continue
        out.add(k)
    return out


def incremental_run_config(defs, keys, full_refresh: bool) -> dict:
    """`full_refresh: true` for every selected op whose config has that field."""
    if not full_refresh:
        return {}
    graph = defs.resolve_asset_graph()
    ops = {}
    for key in keys:
        assets_def = graph.assets_def_for_key(key)
        op = assets_def.node_def
        schema = getattr(op, "config_schema", None)
        fields = getattr(getattr(schema, "config_type", None), "fields", {}) or {}
        if "full_refresh" in fields:
            ops[op.name] = {"config": {"full_refresh": True}}
    return {"ops": ops}


PLAN_LEASE = "materialize_plan"  # lake table dirs (raw layer) of the lock/lease; they hold no data
PLAN_QUEUE = "materialize_queue"  # held by the one command waiting for the plan lease
PLAN_LEASE_WAIT_SECONDS = 6 * 3600  # how long a plain `materialize` waits for the one in progress


@contextmanager
def plan_lease(settings, echo=print):
    """Held by a `personalization materialize` without a selection from before its landing steps until its stale steps
    end: a file lock next to a local lake, an S3 lease (renewed while held, taken over once its holder died) in an S3
    lake, as the logs' writers use. Runs with a selection, sensors and schedules do not take it (their steps' own
    locks order them). Yields True once held. Yields False, without waiting, when another command is already waiting
    for it: that one runs its landing steps after the current one ends, so it brings in everything that landed before
    this command started, and a cron overlapping itself queues one command, not one per tick."""
    from personalization_assets.core.hash_chain import LogLockTimeout, table_writer_lock
    from personalization_assets.core.storage import LakeStorage

    lake = store_outside_a_run(LakeStorage, settings.lake_url, settings)
    where = lake.uri(lake.table_dir("raw", PLAN_LEASE))

    def lock(name: str, timeout: float, on_wait=None):
        return table_writer_lock(lake, {"layer": "raw", "name": name}, lock_timeout=timeout, on_wait=on_wait,
                                 lease_seconds=120.0, poll_seconds=2.0)

    queued = ExitStack()  # the queue lock: held while this command waits for the plan lease, released once it holds it
    try:
        queued.enter_context(lock(PLAN_QUEUE, 0))
    except LogLockTimeout:
        echo(f"Another `personalization materialize` is already waiting for the one in progress on this lake ({where}): "
             "it will bring in what landed before this command started. Nothing to do here.")
        yield False
        return
    with queued, lock(PLAN_LEASE, PLAN_LEASE_WAIT_SECONDS,
                      on_wait=lambda: echo(f"Waiting for another `personalization materialize` on this lake to finish ({where}); "
                                           "then only what landed since is new")):
        queued.close()
        yield True


def run_materialize(select: str | None = None, partitions: str | None = None, defs=None, instance=None, echo=print, log_level: str = "WARNING",
                    run_config: dict | None = None, full_refresh: bool = False):
    """Materialize the selection in one in-process run; returns (success, summary_text, result).

    Without `partitions`, incremental steps (raw/events, consented/events) bring their hours up to date from
    the landing zone and touch only what is stale; `full_refresh` rebuilds them from every landing object.
    `partitions` (START..END) rebuilds exactly those hours."""
    import dagster as dg

    from personalization_assets.core.asset_keys import KEY_ROTATION_LOG, RETENTION_LOG
    from personalization_assets.run_summary import (
        format_summary,
        group_lookup,
        summarize,
    )
    from personalization_assets.settings import load_settings

    settings = load_settings()
    defs_given = defs  # definitions of the caller's own (tests): not the settings' lake, so no plan lease on it
    if defs is None:
        from personalization_assets.definitions import build_definitions

        defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    # a multi-asset (e.g. raw/events + its quarantine) is always materialized whole
    # default: everything except the key rotation and the retention run, which have their own job and daily schedule
    # (a tick must not re-key or scan every table); the erasure run stays: privacy requests are processed every time
    routine = dg.AssetSelection.assets(*(k for k in (KEY_ROTATION_LOG, RETENTION_LOG) if graph.has(k)))
    selection = dg.AssetSelection.from_string(select).required_multi_asset_neighbors() if select else dg.AssetSelection.all() - routine
    keys = selection.resolve(graph)
    if not keys:
        raise SystemExit(f"--select {select!r} matches no asset")
    ranged = sorted(k.to_user_string() for k in keys if graph.get(k).partitions_def is not None and not self_partitioning(graph, k))
    tags: dict[str, str] = {}
    if partitions:
        start, _, end = partitions.partition("..")
        end = end or start
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
        echo(f"Materializing {len(keys)} assets; rebuilding event hours {start} .. {end}")
    elif ranged:
        # a partitioned asset without its own incremental step: every hour that holds data
        present = landing_partition_keys(defs, settings)
        if not present:
            raise SystemExit(
                f"No event hours in the lake yet: ingest first (`personalization materialize --select key:raw/events`) "
                f"(partitioned assets selected: {', '.join(ranged)})."
            )
        start, end = present[0], present[-1]
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
        echo(f"Materializing {len(keys)} assets; event partitions {start} .. {end}")
    elif select or full_refresh or run_config:
        echo(f"Materializing {len(keys)} assets" + (" (full refresh)" if full_refresh else ""))
    else:
        echo(f"Bringing {len(keys)} assets up to date: the landing sources first, then whatever their changes make stale")
    if instance is None:
        instance = open_instance()
    job = defs.resolve_implicit_global_asset_job_def()
    keys = plan_selection(graph, keys, partitions if partitions or ranged else None)
    extra = incremental_run_config(defs, keys, full_refresh)
    user_ops = (run_config or {}).get("ops", {})
    merged_ops = {**user_ops}
    for op, cfg in extra.get("ops", {}).items():
        merged_ops[op] = {"config": {**merged_ops.get(op, {}).get("config", {}), **cfg["config"]}}
    configured = bool(merged_ops)
    run_config = {**(run_config or {}), **({"ops": merged_ops} if merged_ops else {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
    from personalization_assets.automation import staleness

    fingerprint = staleness.platform_fingerprint()
    # a run given an explicit configuration (`--as-of`) built other tables than the default would: tagged so
    deciding = staleness.deciding_ops_config({"ops": user_ops})
    tags = {**tags, staleness.FINGERPRINT_TAG: staleness.configured_fingerprint(fingerprint, deciding) if deciding else fingerprint}

    def execute(run_keys):
        import uuid

        from personalization_assets.monitoring.cli_runs import cli_run_tags, heartbeat

        # tagged with this process and kept alive by a heartbeat: if the process dies, the next CLI start or
        # the fail_dead_cli_runs sensor marks the run failed instead of leaving it STARTED
        run_id = str(uuid.uuid4())
        with heartbeat(instance, run_id):
            return job.execute_in_process(instance=instance, asset_selection=list(run_keys), tags={**tags, **cli_run_tags()},
                                          raise_on_error=False, run_config=run_config, run_id=run_id)

    if select or partitions or ranged or configured:
        # a selection, a partition range, a full refresh or an explicit configuration runs what it names
        results, plan = [execute(keys)], None
    else:
        # no selection: the root steps (they find what landed), then only the steps whose inputs changed. One such
        # invocation at a time per lake: a second one (a cron overlapping itself) waits, then finds only what
        # landed since, instead of running every stale step again behind the first one's locks
        with plan_lease(settings, echo) if defs_given is None else nullcontext(True) as holding:
            if not holding:
                return True, "Nothing done: another command is waiting to bring everything up to date.", MaterializeRuns([])
            roots = staleness.root_keys(graph, keys)
            results = [execute(roots)]
            # what reads a root whose step failed, or whose blocking check failed, is held by the plan; the rest goes on
            failed_steps = {ev.step_key for ev in results[0].all_events if ev.event_type_value == "STEP_FAILURE"}
            failed = {k for k in roots if graph.assets_def_for_key(k).node_def.name in failed_steps}
            plan = staleness.stale_assets(instance, graph, keys - roots, fingerprint, failed=failed)
            if plan.stale:
                results.append(execute(set(plan.stale)))
    outcome = MaterializeRuns(results, plan)
    layers = summarize(outcome.all_events, group_lookup(defs))
    text = format_summary(layers)
    if plan is not None:
        text += "\n\nWhat this run did beyond the landing sources:\n" + "\n".join(plan.describe() or ["  nothing: every asset is up to date"])
    # an asset held by a failed blocking check of an earlier run is not up to date: the invocation fails until it passes
    held = bool(plan is not None and plan.held)
    return outcome.success and not held and not _failed_blocking_checks(outcome, graph), text, outcome


class MaterializeRuns:
    """The runs of one `personalization materialize`: one run, or (no selection) the root steps' run and the run of
    the stale steps. `plan`: what was stale, held or up to date (automation/staleness.py)."""

    def __init__(self, results: list, plan=None):
        self.results = results
        self.plan = plan

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def all_events(self) -> list:
        return [ev for r in self.results for ev in r.all_events]

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.results]

    @property
    def run_id(self) -> str:
        """The last run (the one that built the marts, when any)."""
        return self.results[-1].run_id


def _failed_blocking_checks(result, graph) -> list[str]:
    failed = []
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if not data.passed and getattr(data, "blocking", False):
                failed.append(data.asset_check_key.to_user_string())
    return failed


def _cmd_materialize(args) -> int:
    run_config = ({"ops": {"feature_tables": {"config": {"as_of": args.as_of}}, "consented__crm_profiles": {"config": {"as_of": args.as_of}}}}
                  if getattr(args, "as_of", None) else None)
    ok, text, result = run_materialize(args.select, args.partitions, log_level="INFO" if args.verbose else "WARNING", run_config=run_config,
                                       full_refresh=args.full_refresh)
    print()
    print(text)
    print()
    if not ok:
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        for e in failures:
            print(f"FAILED step {e.step_key}: {e.event_specific_data.error.message.strip()[:500]}", file=sys.stderr)
        print(f"{_runs(result)} FAILED (see the UI: make dev)", file=sys.stderr)
        return 1
    if not result.run_ids:  # another command waiting for the one in progress does the work
        return 0
    _print_segment_sizes(result)
    print(f"{_runs(result)} succeeded. Browse the lineage: `make dev`, then open http://127.0.0.1:3000")
    return 0


def _runs(result) -> str:
    ids = result.run_ids
    return f"Run {ids[0]}" if len(ids) == 1 else f"Runs {', '.join(ids)}"


def _print_segment_sizes(result) -> None:
    """After segments were built, show their (exact, internal) sizes."""
    from personalization_assets.core.asset_keys import SEGMENT_SIZES

    built = any(
        ev.event_type_value == "ASSET_MATERIALIZATION" and ev.event_specific_data.materialization.asset_key == SEGMENT_SIZES
        for ev in result.all_events
    )
    if not built:
        return
    from personalization_assets.definitions import defs
    from personalization_assets.settings import load_settings
    from personalization_assets.warehouse.resources import read_segment_sizes

    sizes = read_segment_sizes(load_settings(), defs.resources.get("snowflake"))
    if sizes:
        print("Segment sizes (segments.segment_sizes, exact, internal):")
        for seg_type, name, members in sizes:
            print(f"  {seg_type:<12}{name:<34}{members:>9,}")
        print()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personalization", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a deterministic demo landing zone")
    g.add_argument("--users", type=int, default=2000)
    g.add_argument("--events", type=int, default=200_000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--bad-fraction", type=float, default=0.0)
    g.add_argument("--end", help="last day of data (YYYY-MM-DD, default yesterday UTC)")
    g.add_argument("--days", type=int, default=7)
    g.add_argument("--no-gzip", action="store_true", help="write plain .jsonl instead of .jsonl.gz")
    g.add_argument("--all-consent", action="store_true",
                   help="benchmark scenario: everyone consents to everything, no planted cases or privacy requests")
    g.add_argument("--layout", choices=("hive", "segment-s3", "rudderstack-s3"), default="hive",
                   help="where events land: hive (events/date=/hour=/, default), segment-s3 (segment-logs/…) or "
                        "rudderstack-s3 (rudder-logs/…), with the fields each CDP's server adds (docs/LANDING_CONTRACT.md)")
    g.set_defaults(func=_cmd_generate)

    m = sub.add_parser("materialize", help="materialize assets on the configured environment and print a summary")
    m.add_argument("--select", help="Dagster asset selection (default: all assets), e.g. 'group:raw' or 'key:raw/events+'")
    m.add_argument("--partitions", help="event hours START..END to rebuild (default: only what is stale: new or changed landing objects and what they touch)")
    m.add_argument("--full-refresh", action="store_true", help="rebuild every asset from the whole landing zone (forget the manifest of objects read)")
    m.add_argument("--verbose", action="store_true", help="stream the run's INFO logs (dbt output included)")
    m.add_argument("--as-of", help="feature cutoff, ISO 8601 UTC (default: the end of the last complete landing hour, so a rerun over the same landing gives the same rows)")
    m.set_defaults(func=_cmd_materialize)

    c = sub.add_parser("collect", help="run the event collector (Segment/RudderStack HTTP API) and the preference center")
    c.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8088, help="port (default 8088)")
    c.set_defaults(func=_cmd_collect)
    return p


def _cmd_collect(args) -> int:
    from personalization_assets.collector.server import serve

    serve(args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    import dagster as dg

    # Dagster's notices about beta/preview APIs we use on purpose (backfill policies, spec mapping) are
    # for developers, not for the operator reading the CLI's summary.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    ensure_dagster_home()
    args = build_parser().parse_args(argv)
    from personalization_assets.core.hash_chain import LogLockTimeout
    from personalization_assets.settings import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except LogLockTimeout as exc:  # e.g. another `materialize` held the plan lease for PLAN_LEASE_WAIT_SECONDS
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
