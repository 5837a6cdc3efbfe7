"""Data-anomaly checks: each hourly partition of raw/events and consented/events against the same hour in
previous weeks, and each materialization of a feature table against its previous materializations.

Cheap by construction: nothing rescans history. Every partition of raw/events and consented/events records
its own small statistics on its materialization (`partition_stats`: rows read, rows written, quarantined,
null rate per column, distinct subjects); a check reads the statistics of at most `history.weeks` earlier
partitions from the Dagster event log (one indexed query for all partitions of a run) and scores the hour
with a robust z-score (median / MAD). The feature tables are unpartitioned: each materialization records
its row count and null rates (read from the Parquet footer, no data scan) and is scored against the
previous `features.history_runs` materializations. Thresholds and severities: anomalies.yaml beside this
module, or the copy PERSONALIZATION_ANOMALY_CONFIG names (`checks:` for raw/events, `consented_events:` and
`features:` select checks and override keys).

Results are asset-check evaluations PER PARTITION for the hourly tables (the check specs carry the
partitions definition), so the UI shows which hour failed; a run that writes several hours emits one
evaluation per scored hour (`dg.AssetCheckEvaluation(partition=...)`, see `to_evaluation`). An hour still
warming up is not scored, and only a blocking check records its pass there (`emit_check_results`).
"""

from __future__ import annotations

import os
import statistics
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from personalization_assets.core.asset_keys import SEGMENT_SIZES
from personalization_assets.core.partitions import PARTITION_FMT, partition_start

CONFIG_PATH = Path(__file__).with_name("anomalies.yaml")
CONFIG_ENV = "PERSONALIZATION_ANOMALY_CONFIG"
EVENT_CHECKS = ("anomaly_volume", "anomaly_null_rate", "anomaly_quarantine_rate", "anomaly_distinct_subjects")
SEGMENT_CHECK = "anomaly_segment_sizes"
SEVERITIES = {"warn": dg.AssetCheckSeverity.WARN, "error": dg.AssetCheckSeverity.ERROR}
MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution


class AnomalyConfigError(ValueError):
    """anomalies.yaml is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class CheckConfig:
    name: str
    description: str
    severity: str
    blocking: bool
    params: Mapping[str, Any]

    @property
    def dagster_severity(self) -> dg.AssetCheckSeverity:
        return SEVERITIES[self.severity]


@dataclass(frozen=True)
class AnomalyConfig:
    """The checks of one target. The top level is raw/events; `target("consented/events")` and
    `target("features")` give the others (checks selected, keys overridden, their own null columns)."""

    weeks: int
    min_points: int
    min_rows: int
    checks: Mapping[str, CheckConfig]
    volume: str = "records_read"  # the statistic the volume check scores
    history: str = "same_hour"  # same_hour (previous weeks) | previous_runs (unpartitioned tables)
    history_runs: int = 0
    null_columns_override: tuple[str, ...] | None = None  # None: the columns listed under anomaly_null_rate; ("*",): all
    targets: Mapping[str, AnomalyConfig] = field(default_factory=dict)

    @property
    def null_columns(self) -> list[str]:
        if self.null_columns_override is not None:
            return list(self.null_columns_override)
        return list(self.checks["anomaly_null_rate"].params.get("columns", [])) if "anomaly_null_rate" in self.checks else []

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(c for c in EVENT_CHECKS if c in self.checks)

    def target(self, name: str) -> AnomalyConfig:
        return self if name == "raw/events" else self.targets[name]


def _num(where: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise AnomalyConfigError(f"{config_path().name}: {where}={value!r} must be a number >= {minimum}. Fix: edit {config_path()}.")
    return float(value)


REQUIRED_PARAMS = {
    "anomaly_volume": ("max_robust_z", "min_ratio", "max_ratio", "floor_ratio"),
    "anomaly_null_rate": ("max_robust_z", "max_increase", "floor"),
    "anomaly_quarantine_rate": ("max_robust_z", "max_ratio", "max_increase", "floor"),
    "anomaly_distinct_subjects": ("max_robust_z", "min_ratio", "floor"),
    SEGMENT_CHECK: ("max_change", "min_members"),
}


def parse_checks(checks_doc: Mapping, where: str) -> dict[str, CheckConfig]:
    checks = {}
    for name, spec in checks_doc.items():
        spec = dict(spec or {})
        severity = str(spec.pop("severity", "warn")).lower()
        blocking = spec.pop("blocking", False)
        if severity not in SEVERITIES:
            raise AnomalyConfigError(f"{where}.{name}.severity={severity!r}. Fix: use warn or error.")
        if not isinstance(blocking, bool):
            raise AnomalyConfigError(f"{where}.{name}.blocking={blocking!r}. Fix: use true or false.")
        if blocking and severity != "error":
            raise AnomalyConfigError(
                f"{where}.{name} is blocking with severity {severity}; Dagster only blocks on errors. "
                "Fix: set severity: error (or blocking: false)."
            )
        for p in REQUIRED_PARAMS[name]:
            if p not in spec:
                raise AnomalyConfigError(f"{where}.{name}.{p} missing. Fix: set it in {config_path()}.")
            _num(f"checks.{name}.{p}", spec[p])
        checks[name] = CheckConfig(name, str(spec.pop("description", name)).strip(), severity, blocking, spec)
    return checks


def parse_config(doc: Mapping) -> AnomalyConfig:
    history = doc.get("history") or {}
    checks_doc = doc.get("checks") or {}
    missing = [name for name in REQUIRED_PARAMS if name not in checks_doc]
    if missing:
        raise AnomalyConfigError(f"{config_path().name}: checks {missing} missing. Fix: add them under `checks:` in {config_path()}.")
    unknown = sorted(set(checks_doc) - set(REQUIRED_PARAMS))
    if unknown:
        raise AnomalyConfigError(f"{config_path().name}: unknown checks {unknown}. Fix: use only {sorted(REQUIRED_PARAMS)}.")
    checks = parse_checks(checks_doc, f"{config_path().name}: checks")
    if not isinstance(checks["anomaly_null_rate"].params.get("columns", []), list):
        raise AnomalyConfigError(f"{config_path().name}: checks.anomaly_null_rate.columns must be a list of raw/events columns.")
    base = AnomalyConfig(
        weeks=int(_num("history.weeks", history.get("weeks", 4), 1)),
        min_points=int(_num("history.min_points", history.get("min_points", 3), 1)),
        min_rows=int(_num("history.min_rows", history.get("min_rows", 50), 0)),
        checks={k: v for k, v in checks.items() if k in EVENT_CHECKS},
    )
    targets = {name: _parse_target(name, doc.get(section), base, checks_doc, default)
               for name, section, default in TARGETS}
    return AnomalyConfig(base.weeks, base.min_points, base.min_rows, checks, targets=targets)


# (target, YAML section, defaults): which checks apply, what the volume is, how history is found
TARGETS = (
    ("consented/events", "consented_events", {"checks": ["anomaly_volume", "anomaly_null_rate", "anomaly_distinct_subjects"],
                                              "volume": "rows_written", "history": "same_hour"}),
    ("features", "features", {"checks": ["anomaly_volume", "anomaly_null_rate"], "volume": "rows_written", "history": "previous_runs"}),
)


def _parse_target(name: str, section, base: AnomalyConfig, checks_doc: Mapping, default: Mapping) -> AnomalyConfig:
    where = f"{config_path().name}: {dict(TARGETS_SECTIONS)[name]}"
    section = dict(section or {})
    unknown = sorted(set(section) - {"checks", "null_columns", "overrides", "history_runs", "min_points", "min_rows"})
    if unknown:
        raise AnomalyConfigError(f"{where}: unknown keys {unknown}. Fix: use checks, null_columns, overrides, history_runs, min_points, min_rows.")
    names = section.get("checks", default["checks"])
    allowed = default["checks"] if name == "features" else [c for c in EVENT_CHECKS if c != "anomaly_quarantine_rate"]
    if not isinstance(names, list) or any(n not in allowed for n in names):
        raise AnomalyConfigError(f"{where}.checks={names!r}. Fix: a list of {allowed}.")
    overrides = section.get("overrides") or {}
    if not isinstance(overrides, Mapping) or any(k not in names for k in overrides):
        raise AnomalyConfigError(f"{where}.overrides must map checks of {names} to keys to replace. Fix: edit {config_path()}.")
    merged_doc = {}
    for check in names:
        spec = {k: v for k, v in dict(checks_doc[check] or {}).items() if k != "columns"}
        extra = overrides.get(check) or {}
        if not isinstance(extra, Mapping):
            raise AnomalyConfigError(f"{where}.overrides.{check} must be a mapping. Fix: edit {config_path()}.")
        spec.update(extra)
        merged_doc[check] = spec
    # validated like the top level (severity/blocking rules, numbers)
    parsed = parse_checks(merged_doc, where)
    columns = section.get("null_columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise AnomalyConfigError(f"{where}.null_columns must be a list of column names (omit it: every column). Fix: edit {config_path()}.")
    return AnomalyConfig(
        weeks=base.weeks,
        min_points=int(_num(f"{where}.min_points", section.get("min_points", base.min_points), 1)),
        min_rows=int(_num(f"{where}.min_rows", section.get("min_rows", base.min_rows), 0)),
        checks={c: parsed[c] for c in names},
        volume=default["volume"], history=default["history"],
        history_runs=int(_num(f"{where}.history_runs", section.get("history_runs", 8), 1)),
        # consented/events: the listed columns; features: the listed ones, else every top-level column ("*")
        null_columns_override=tuple(columns) if columns is not None else (("*",) if name == "features" else ()),
    )


TARGETS_SECTIONS = tuple((name, section) for name, section, _ in TARGETS)


def config_path() -> Path:
    """The thresholds file in use: `PERSONALIZATION_ANOMALY_CONFIG` if set (tune the checks without editing the
    installed package), else anomalies.yaml beside this module."""
    override = os.environ.get(CONFIG_ENV, "").strip()
    if not override:
        return CONFIG_PATH
    p = Path(override).expanduser()
    if not p.is_file():
        raise AnomalyConfigError(f"{CONFIG_ENV}={override!r} is not a file. Fix: point it at a copy of {CONFIG_PATH} (or unset it).")
    return p


def load_config(path: str | None = None) -> AnomalyConfig:
    return _load_config(str(Path(path) if path else config_path()))


@cache
def _load_config(path: str) -> AnomalyConfig:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise AnomalyConfigError(f"{p} is not valid YAML ({exc}). Fix the file.") from None
    return parse_config(doc)


# ---------------------------------------------------------------------------------------------------------
# statistics recorded per partition (on the partition's materialization of raw/events)


def partition_stats(raw: pa.Table, records_read: int, quarantined: int, columns: Iterable[str],
                    subject_columns: tuple[str, ...] = ("user_id", "anonymous_id")) -> dict:
    """The anomaly statistics of one hour: vectorized over the hour's rows (null counts, one distinct count).
    The subject is the first non-null of `subject_columns` (raw: user, else anonymous id; consented: consent_subject)."""
    rows = raw.num_rows
    null_rates = {c: (raw.column(c).null_count / rows if rows else 0.0) for c in columns if c in raw.column_names}
    subjects = 0
    if rows and set(subject_columns) <= set(raw.column_names):
        cols = [raw.column(c) for c in subject_columns]
        subjects = pc.count_distinct(pc.coalesce(*cols) if len(cols) > 1 else cols[0]).as_py()
    return {"null_rates": {c: round(v, 6) for c, v in null_rates.items()}, "distinct_subjects": int(subjects),
            "records_read": int(records_read), "rows_written": int(rows), "quarantined": int(quarantined)}


def stats_metadata(stats: Mapping) -> dict:
    md = {"null_rates": dg.MetadataValue.json(dict(stats["null_rates"]))}
    if stats.get("distinct_subjects") is not None:
        md["distinct_subjects"] = stats["distinct_subjects"]
    return md


def stats_from_metadata(md: Mapping) -> dict | None:
    def v(key):
        x = md.get(key)
        return getattr(x, "value", getattr(x, "data", x))

    # records read: raw/events' lines; consented/events' raw rows read; a feature table: the rows it holds
    read = next((v(k) for k in ("records_read", "raw_rows_read") if v(k) is not None), None)
    if v("null_rates") is None or (read is None and v("rows_written") is None):
        return None  # written before the statistics existed
    rows = int(v("rows_written") or 0)
    return {"records_read": int(read if read is not None else rows), "rows_written": rows, "quarantined": int(v("quarantined") or 0),
            "null_rates": dict(v("null_rates") or {}), "distinct_subjects": v("distinct_subjects")}


def history_keys(partition_key: str, weeks: int) -> list[str]:
    start = partition_start(partition_key)
    return [(start - timedelta(weeks=k)).strftime(PARTITION_FMT) for k in range(1, weeks + 1)]


def load_history(instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Iterable[str]) -> dict[str, dict]:
    """Latest recorded statistics per partition key, from the event log (materialization metadata)."""
    keys = sorted(set(keys))
    out: dict[str, dict] = {}
    if not keys:
        return out
    result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys), limit=len(keys) * 4 + 10)
    for record in result.records:  # newest first
        mat = record.asset_materialization
        if mat is None or mat.partition in out:
            continue
        stats = stats_from_metadata(mat.metadata)
        if stats is not None:
            out[mat.partition] = stats
    return out


# ---------------------------------------------------------------------------------------------------------
# scoring


@dataclass
class AnomalyResult:
    check: str
    partition: str
    passed: bool
    score: float | None
    metadata: dict = field(default_factory=dict)
    description: str = ""


def robust_score(value: float, history: list[float], floor: float) -> tuple[float, float, float]:
    """(median, MAD, z) with the scale floored (a flat history has MAD 0)."""
    med = statistics.median(history)
    mad = statistics.median([abs(h - med) for h in history])
    scale = max(MAD_SCALE * mad, floor, 1e-9)
    return med, mad, (value - med) / scale


def _rate(n: int, d: int) -> float:
    return n / d if d else 0.0


def evaluate_partition(partition: str, current: Mapping, history: list[Mapping], config: AnomalyConfig) -> list[AnomalyResult]:
    """All event-anomaly checks of one hour. `history`: statistics of the same hour in previous weeks."""
    out: list[AnomalyResult] = []
    n = len(history)
    enabled = config.enabled
    if config.history == "previous_runs":
        base = {"history_points": n, "history_runs": config.history_runs}
        unit = "previous materializations"
    else:
        base = {"history_points": n, "history_weeks": config.weeks}
        unit = "weeks of history for this hour"
    if n < config.min_points:
        msg = f"warming up: {n} of {config.min_points} {unit}"
        return [AnomalyResult(name, partition, True, None, {**base, "warming_up": True}, msg) for name in enabled]

    # volume
    c = config.checks["anomaly_volume"].params
    x = current[config.volume]
    hist = [h[config.volume] for h in history]
    med, mad, z = robust_score(x, hist, c["floor_ratio"] * statistics.median(hist))
    ratio = x / med if med else (float("inf") if x else 1.0)
    failed = abs(z) > c["max_robust_z"] and (ratio < c["min_ratio"] or ratio > c["max_ratio"])
    out.append(AnomalyResult("anomaly_volume", partition, not failed, z,
                             {**base, "records": x, "median": med, "mad": mad, "robust_z": round(z, 3), "ratio": round(ratio, 4)},
                             f"{x} {'records' if config.volume == 'records_read' else 'rows'} vs median {med:g} "
                             f"{'of the same hour' if config.history == 'same_hour' else 'of the previous materializations'} ({ratio:.0%})"))

    small = current["rows_written"] < config.min_rows or current["records_read"] < config.min_rows
    skip_md = {**base, "skipped": f"fewer than {config.min_rows} rows: rates are not judged"}

    # null rate per column
    c = config.checks["anomaly_null_rate"].params if "anomaly_null_rate" in enabled else None
    if c is None:
        pass
    elif small:
        out.append(AnomalyResult("anomaly_null_rate", partition, True, None, skip_md, skip_md["skipped"]))
    else:
        per_column, failing, worst = {}, [], 0.0
        columns = sorted(current["null_rates"]) if config.null_columns == ["*"] else config.null_columns
        for col in columns:
            hist = [h["null_rates"].get(col) for h in history if h.get("null_rates", {}).get(col) is not None]
            if len(hist) < config.min_points or col not in current["null_rates"]:
                continue
            r = current["null_rates"][col]
            med, _mad, z = robust_score(r, hist, c["floor"])
            per_column[col] = {"rate": round(r, 4), "median": round(med, 4), "robust_z": round(z, 2)}
            worst = max(worst, z)
            if z > c["max_robust_z"] and r - med > c["max_increase"]:
                failing.append(col)
        out.append(AnomalyResult("anomaly_null_rate", partition, not failing, worst,
                                 {**base, "failing_columns": dg.MetadataValue.json(failing), "columns": dg.MetadataValue.json(per_column)},
                                 f"null rate jumped in {', '.join(failing)}" if failing else "null rates as usual"))

    # quarantine rate
    c = config.checks["anomaly_quarantine_rate"].params if "anomaly_quarantine_rate" in enabled else None
    if c is None:
        pass
    elif small:
        out.append(AnomalyResult("anomaly_quarantine_rate", partition, True, None, skip_md, skip_md["skipped"]))
    else:
        r = _rate(current["quarantined"], current["records_read"])
        hist = [_rate(h["quarantined"], h["records_read"]) for h in history]
        med, mad, z = robust_score(r, hist, c["floor"])
        failed = z > c["max_robust_z"] and r > c["max_ratio"] * med and r - med > c["max_increase"]
        out.append(AnomalyResult("anomaly_quarantine_rate", partition, not failed, z,
                                 {**base, "rate": round(r, 4), "median": round(med, 4), "robust_z": round(z, 3)},
                                 f"{r:.1%} of lines quarantined vs {med:.1%} usually"))

    # distinct subjects per event
    c = config.checks["anomaly_distinct_subjects"].params if "anomaly_distinct_subjects" in enabled else None
    hist = [_rate(h["distinct_subjects"], h["rows_written"]) for h in history if h.get("distinct_subjects") is not None]
    if c is None:
        pass
    elif small or len(hist) < config.min_points:
        out.append(AnomalyResult("anomaly_distinct_subjects", partition, True, None, skip_md, skip_md["skipped"]))
    else:
        r = _rate(current["distinct_subjects"], current["rows_written"])
        med, mad, z = robust_score(r, hist, c["floor"])
        failed = z < -c["max_robust_z"] and r < c["min_ratio"] * med
        out.append(AnomalyResult("anomaly_distinct_subjects", partition, not failed, z,
                                 {**base, "subjects": current["distinct_subjects"], "subjects_per_event": round(r, 4),
                                  "median": round(med, 4), "robust_z": round(z, 3)},
                                 f"{current['distinct_subjects']} subjects ({r:.3f} per event vs {med:.3f})"))
    return out


def evaluate_segment_sizes(current: Mapping[str, int], previous: Mapping[str, int] | None, config: AnomalyConfig) -> AnomalyResult:
    """Members per segment vs the previous build: a swing beyond `max_change` of a segment of some size."""
    c = config.checks[SEGMENT_CHECK].params
    if not previous:
        return AnomalyResult(SEGMENT_CHECK, "", True, None, {"warming_up": True}, "first build: nothing to compare")
    swings, worst = {}, 0.0
    for seg in sorted(set(current) | set(previous)):
        now, before = int(current.get(seg, 0)), int(previous.get(seg, 0))
        change = (now - before) / before if before else (float("inf") if now else 0.0)
        if max(now, before) >= c["min_members"] and abs(change) > c["max_change"]:
            swings[seg] = {"members": now, "previous": before, "change": round(change, 3) if before else None}
        if before:
            worst = max(worst, abs(change))
    return AnomalyResult(SEGMENT_CHECK, "", not swings, worst, {"swings": dg.MetadataValue.json(swings), "segments": len(current)},
                         f"{len(swings)} segment(s) swung by more than {c['max_change']:.0%}" if swings else "segment sizes as usual")


# ---------------------------------------------------------------------------------------------------------
# Dagster wiring


def event_check_specs(asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition | None, config: AnomalyConfig | None = None) -> list[dg.AssetCheckSpec]:
    """The anomaly check specs of an hourly table. They carry the partitions definition so the UI lists the
    results by hour: `AssetCheckSpec(partitions_def=...)` is a preview feature of Dagster 1.13 (it warns with
    a PreviewWarning); this is the only place the project uses it."""
    config = config or load_config()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        return [
            dg.AssetCheckSpec(name, asset=asset_key, blocking=config.checks[name].blocking, description=config.checks[name].description,
                              partitions_def=partitions_def)
            for name in config.enabled
        ]


def _score_md(result: AnomalyResult) -> dict:
    return {"score": float(result.score)} if result.score is not None and abs(result.score) != float("inf") else {}


def to_evaluation(asset_key: dg.AssetKey, result: AnomalyResult, config: AnomalyConfig) -> dg.AssetCheckEvaluation:
    """A per-partition check evaluation (what the UI lists under the check, by partition).

    Public API: `dagster.AssetCheckEvaluation` is exported by the top-level `dagster` package (1.13.27). It is
    the only public type that names the partition a result belongs to: `AssetCheckResult` has no `partition`
    argument in 1.13. The asset body yields it (not `context.log_event`), so a failed blocking evaluation with
    severity ERROR still fails the step and stops downstream assets."""
    cfg = config.checks[result.check]
    md = {**result.metadata, **_score_md(result)}
    return dg.AssetCheckEvaluation(
        asset_key=asset_key, check_name=result.check, passed=result.passed, metadata=md,
        severity=cfg.dagster_severity, description=result.description, blocking=cfg.blocking,
        partition=result.partition or None,
    )


def evaluate_run_partitions(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, in_run: Mapping[str, Mapping],
                            config: AnomalyConfig | None = None) -> list[AnomalyResult]:
    """Score every partition of this run; history comes from this run first, then the event log."""
    config = config or load_config()
    wanted = {k for pk in in_run for k in history_keys(pk, config.weeks)} - set(in_run)
    stored = load_history(context.instance, asset_key, wanted)
    known = {**stored, **in_run}
    results = []
    for pk in sorted(in_run):
        history = [known[k] for k in history_keys(pk, config.weeks) if k in known]
        results.extend(evaluate_partition(pk, in_run[pk], history, config))
    return results


def emit_check_results(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, results: list[AnomalyResult], config: AnomalyConfig | None = None):
    """Yields one evaluation per scored partition and check, then the (Nothing) outputs of the check specs. A check the
    run did not select (consented_events run for its state alone, by automation) is recorded all the same, as a
    logged event: never skipped."""
    config = config or load_config()
    selected = context.selected_asset_check_keys
    unselected_blocking_failures = []
    # an hour without enough history is not scored: a non-blocking check records nothing for it (its statistics are
    # on the hour's materialization, where later hours find them). A blocking check records its pass, because
    # automation waits on `check_passed` for blocking checks. One line tells how many hours are warming up.
    def unscored(r: AnomalyResult) -> bool:
        return bool(r.metadata.get("warming_up")) and not config.checks[r.check].blocking

    warming = sorted({r.partition for r in results if unscored(r)})
    if warming:
        context.log.info(f"{asset_key.to_user_string()}: {len(warming)} hour(s) warming up ({warming[0]} .. {warming[-1]}), fewer than "
                         f"{config.min_points} weeks of same-hour history: the non-blocking anomaly checks record no evaluation for them")
        results = [r for r in results if not unscored(r)]
    for result in results:
        if result.passed is False:
            context.log.warning(f"anomaly {asset_key.to_user_string()}:{result.check} on {result.partition or 'this build'}: {result.description}")
        evaluation = to_evaluation(asset_key, result, config)
        if evaluation.asset_check_key in selected:
            yield evaluation
        else:
            context.log_event(evaluation)
            if result.passed is False and evaluation.blocking and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                unselected_blocking_failures.append(f"{result.check} on {result.partition or 'this build'}")
    outputs = {spec.key: name for name, spec in context.assets_def.check_specs_by_output_name.items()}
    for check in config.enabled:
        key = dg.AssetCheckKey(asset_key, check)
        if key in outputs and key in selected:
            yield dg.Output(None, output_name=outputs[key])
    if unselected_blocking_failures:
        # a logged evaluation cannot block by itself: a blocking check must stop downstream steps in every run,
        # including the automation runs that select the step's state but not this asset's checks
        raise dg.Failure(
            description=f"blocking anomaly check failed on {asset_key.to_user_string()}: {', '.join(unselected_blocking_failures)} "
            "(the data is written and each evaluation is recorded; downstream steps of this run do not run)",
            metadata={"failed_checks": dg.MetadataValue.json(unselected_blocking_failures)},
        )


def _previous_sizes(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey) -> dict[str, int] | None:
    """The sizes the last evaluation of the check recorded (the previous build), from the event log."""
    for record in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=5):
        event = record.event
        data = event.dagster_event.event_specific_data if event is not None and event.dagster_event is not None else None
        sizes = getattr(data, "metadata", {}).get("sizes") if data is not None else None
        if sizes is not None:
            return dict(getattr(sizes, "value", getattr(sizes, "data", sizes)))
    return None


def build_segment_size_check(read_sizes, config: AnomalyConfig | None = None) -> dg.AssetChecksDefinition:
    """`segments/segment_sizes:anomaly_segment_sizes`: members per segment vs the previous build. Reads the
    (tiny) segment_sizes mart from the warehouse with `read_sizes(snowflake_resource)` -> rows of (type, name,
    members), handed in by the warehouse layer (this module sits below it); the previous sizes come from the
    last evaluation's metadata."""
    config = config or load_config()
    cfg = config.checks[SEGMENT_CHECK]

    @dg.asset_check(asset=SEGMENT_SIZES, name=SEGMENT_CHECK, blocking=cfg.blocking, description=cfg.description,
                    required_resource_keys={"snowflake"})
    def anomaly_segment_sizes(context):
        current = {f"{t}/{n}": int(m) for t, n, m in read_sizes(context.resources.snowflake)}
        previous = _previous_sizes(context.instance, dg.AssetCheckKey(SEGMENT_SIZES, SEGMENT_CHECK))
        result = evaluate_segment_sizes(current, previous, config)
        return dg.AssetCheckResult(passed=result.passed, severity=cfg.dagster_severity, description=result.description,
                                   metadata={**result.metadata, "sizes": dg.MetadataValue.json(current),
                                             **({"score": float(result.score)} if result.score not in (None, float("inf")) else {})})

    return anomaly_segment_sizes


# ---------------------------------------------------------------------------------------------------------
# feature tables (unpartitioned): each materialization vs the previous ones


def table_stats(lake, layer: str, table: str) -> dict:
    """Row count and null rate per top-level column of an unpartitioned lake table, from its Parquet footer
    (row-group statistics): no data is read. Nested columns (lists) and columns without a null count are left out."""
    md = lake.parquet_metadata(layer, table)
    rows = md.num_rows
    nulls: dict[str, int] = {}
    unknown: set[str] = set()
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        for i in range(group.num_columns):
            col = group.column(i)
            path = col.path_in_schema
            if "." in path:
                continue
            st = col.statistics
            if st is None or not st.has_null_count:
                unknown.add(path)
                continue
            nulls[path] = nulls.get(path, 0) + st.null_count
    rates = {c: round(n / rows, 6) if rows else 0.0 for c, n in nulls.items() if c not in unknown}
    return {"records_read": rows, "rows_written": rows, "quarantined": 0, "null_rates": rates, "distinct_subjects": None}


def previous_stats(instance: dg.DagsterInstance, asset_key: dg.AssetKey, runs: int, exclude_run_id: str) -> list[dict]:
    """Statistics recorded by the last `runs` materializations of an unpartitioned asset before this run
    (newest first; one indexed event-log query)."""
    out = []
    result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key), limit=runs + 5)
    for record in result.records:
        mat = record.asset_materialization
        if mat is None or record.run_id == exclude_run_id:
            continue
        stats = stats_from_metadata(mat.metadata)
        if stats is not None:
            out.append(stats)
        if len(out) == runs:
            break
    return out


def feature_check_specs(keys: Iterable[dg.AssetKey], config: AnomalyConfig | None = None) -> list[dg.AssetCheckSpec]:
    cfg = (config or load_config()).target("features")
    return [dg.AssetCheckSpec(name, asset=key, blocking=cfg.checks[name].blocking, description=cfg.checks[name].description)
            for key in keys for name in cfg.enabled]


def evaluate_feature_tables(context: dg.AssetExecutionContext, lake, layer: str, keys: Mapping[str, dg.AssetKey],
                            config: AnomalyConfig | None = None) -> tuple[dict[str, dict], list[dg.AssetCheckResult]]:
    """Per feature table: (metadata to record on its materialization, check results vs its previous builds).
    Unpartitioned, so the public `AssetCheckResult` carries them."""
    cfg = (config or load_config()).target("features")
    metadata, results = {}, []
    for table, key in keys.items():
        stats = table_stats(lake, layer, table)
        history = previous_stats(context.instance, key, cfg.history_runs, context.run.run_id)
        metadata[table] = stats_metadata(stats)
        for r in evaluate_partition("", stats, history, cfg):
            if not r.passed:
                context.log.warning(f"anomaly {key.to_user_string()}:{r.check}: {r.description}")
            check = cfg.checks[r.check]
            results.append(dg.AssetCheckResult(asset_key=key, check_name=r.check, passed=r.passed, severity=check.dagster_severity,
                                               description=r.description, metadata={**r.metadata, **_score_md(r)}))
    return metadata, results
