"""Semantic validation of typed rows with the pandera tracking plan (raw ingestion, step 3).

The typed projection records value-level problems (`_type_errors` / `_type_reason`); the pandera schema built
here from a table's model adds presence, value sets, cross-field rules and, for events, the time horizon. A
failing row is rejected with the first failed check's reason code; the detail lists every failed check.
The same schema building serves events (`event_schema`) and the reference sources (`validation_schema`).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pandera.pandas as pda
import pyarrow as pa

from personalization_assets.core.tracking_plan import RawEvent
from personalization_assets.raw import json_extract
from personalization_assets.raw.landing_files import Reject

# the columns the typed projection adds: the value-level problems of a row and the first one's reason code
TYPE_ERROR_COLUMNS = ("_type_errors", "_type_reason")


# RawEvent columns the per-row validation at ingestion leaves out: JSON text (its type and values are checked
# by the typed projection), values set by construction (timestamp_source is derived with `timestamp`: a
# message without any time must be quarantined as `missing_timestamp`, not under a second reason) and columns
# the ingestion adds after validation. The pandera asset check on the written table validates all columns.
NOT_VALIDATED_PER_ROW = ("properties", "traits", "group_traits", "integrations", "cdp_metadata", "consent_preferences",
                         "timestamp_source", "source_file", "cdp_source_id")


def validation_schema(model, exclude=(), extra_checks=(), *, check_dtypes: bool = True) -> pda.DataFrameSchema:
    """The pandera schema that validates typed rows of `model` at ingestion: the model's columns minus `exclude`,
    the `_type_errors` / `_type_reason` columns of the typed projection, the value-level checks (one per reason
    of `VALUE_ERRORS`) and `extra_checks`. `check_dtypes=False` skips pandera's per-element dtype scan where the
    typed projection already guarantees the types (the asset check on the written table validates them)."""
    base = model.to_schema()
    keep = [c for c in base.columns if c not in exclude]
    schema = base.select_columns(keep)
    if not check_dtypes:
        schema = schema.update_columns({c: {"dtype": None} for c in keep})
    schema = schema.add_columns({"_type_errors": pda.Column(object, nullable=False), "_type_reason": pda.Column(object, nullable=True)})
    schema = copy.deepcopy(schema)
    schema.checks = list(schema.checks) + value_checks() + list(extra_checks)
    return schema


def event_schema(horizon_days: int, max_future_minutes: int) -> pda.DataFrameSchema:
    """The tracking plan: the RawEvent model plus type and time-horizon rules (relative to each row's landing hour)."""
    horizon = pd.Timedelta(days=horizon_days)
    future = pd.Timedelta(minutes=max_future_minutes)
    checks = value_checks() + [
        pda.Check(
            lambda df: df["timestamp"].isna() | (df["timestamp"] >= df["landing_hour"] - horizon),
            name="timestamp_before_horizon",
            error=f"event time is before the ingestion horizon ({horizon_days} days before the landing hour)",
            ignore_na=False,
        ),
        pda.Check(
            lambda df: df["timestamp"].isna() | df["received_at"].isna() | (df["timestamp"] <= df["received_at"] + future),
            name="timestamp_in_future",
            error=f"event time is more than {max_future_minutes} minutes after receivedAt",
            ignore_na=False,
        ),
    ]
    base = RawEvent.to_schema()
    keep = [c for c in base.columns if c not in NOT_VALIDATED_PER_ROW]
    schema = base.select_columns(keep)
    # Column types are guaranteed by construction (the typed projection casts every value or reports a
    # type error): skip pandera's per-element dtype scan here and keep the value checks. The pandera check
    # on the written table (asset check) validates dtypes too.
    schema = schema.update_columns({c: {"dtype": None} for c in keep})
    schema = schema.add_columns({"_type_errors": pda.Column(object, nullable=False), "_type_reason": pda.Column(object, nullable=True)})
    schema = copy.deepcopy(schema)
    schema.checks = list(schema.checks) + checks
    return schema


VALUE_ERRORS = {
    "wrong_type": "a field's JSON type does not match the tracking plan",
    "non_finite_number": "a number is NaN, Infinity or overflows a double",
    "timestamp_without_offset": "a timestamp has no explicit UTC offset (or is a date only)",
    "timestamp_offset_out_of_range": "a timestamp's UTC offset is outside -12:00..+14:00",
    "duplicate_key": "a JSON object repeats a key",
}


assert tuple(VALUE_ERRORS) == json_extract.VALUE_REASONS



def value_checks() -> list:
    """One pandera check per value-level reason, read from `_type_reason` (set by the typed projection)."""
    return [
        pda.Check(lambda df, code=code: df["_type_reason"].ne(code), name=code, error=error, ignore_na=False)
        for code, error in VALUE_ERRORS.items()
    ]



def _reason_code(column: str, check: str) -> str:
    if check == "not_nullable":
        return f"missing_{column}"
    if check.startswith("dtype("):
        return f"wrong_type_{column}"
    return f"invalid_{column}"



def semantic_failures(frame: pd.DataFrame, schema: pda.DataFrameSchema) -> dict[int, Reject]:
    """Row position -> Reject whose reason is the first failed check's code and whose detail lists all.

    Dataframe-level checks are named after their reason code (e.g. ``missing_identity``); pandera reports
    them by their error text once per column, so they are mapped back to the name and de-duplicated.
    """
    try:
        schema.validate(frame, lazy=True, inplace=True)  # the frame is ours: no defensive copy
        return {}
    except pda.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    df_checks = {(c.error or c.name): c.name for c in schema.checks}
    df_checks.update({c.name: c.name for c in schema.checks})
    out: dict[int, dict[str, str]] = {}
    for row in cases.itertuples(index=False):
        idx = row.index
        if idx is None or (isinstance(idx, float) and np.isnan(idx)):
            # a schema-level failure (e.g. a column's dtype) has no row: never let it pass silently
            raise ValueError(f"tracking plan failed at schema level: {row.column} {row.check} {row.failure_case}")
        check = str(row.check)
        if row.schema_context == "DataFrameSchema":
            code = df_checks.get(check, check)
            if code in VALUE_ERRORS:
                detail = "; ".join(frame["_type_errors"].iloc[int(idx)])
            else:
                detail = check
        else:
            code = _reason_code(str(row.column), check)
            detail = f"{row.column}: {check} (value: {str(row.failure_case)[:200]})"
        out.setdefault(int(idx), {}).setdefault(code, detail)
    return {i: Reject(-1, next(iter(v)), "; ".join(v.values())) for i, v in out.items()}



def _validation_frame(table: pa.Table, schema: pda.DataFrameSchema) -> pd.DataFrame:
    cols = [c for c in schema.columns]
    sub = table.select(cols)
    frame = sub.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    for c in cols:
        if pa.types.is_string(sub.schema.field(c).type) or pa.types.is_large_string(sub.schema.field(c).type):
            frame[c] = frame[c].astype(object)
    return frame



def validate_rows(table: pa.Table, schema: pda.DataFrameSchema, quarantine_rows: list) -> pa.Table:
    """Rows that pass the pandera schema; each failing row goes to `quarantine_rows` with its reason."""
    failures = semantic_failures(_validation_frame(table, schema), schema) if table.num_rows else {}
    if not failures:
        return table
    mask = np.ones(table.num_rows, dtype=bool)
    positions = np.fromiter(failures.keys(), dtype=np.int64)
    mask[positions] = False
    locations = table.select(["source_file", "line_no"]).take(pa.array(positions)).to_pylist()
    for pos, loc in zip(positions.tolist(), locations):
        r = failures[pos]
        quarantine_rows.append((loc["source_file"], Reject(int(loc["line_no"]), r.reason, r.detail)))
    return table.filter(pa.array(mask))



def order_like_model(table: pa.Table, model=RawEvent) -> pa.Table:
    order = [c for c in model.to_schema().columns if c in table.column_names]
    return table.select(order)
