"""`warehouse/features_loaded`: makes the feature tables visible to the warehouse before dbt runs.

The asset exists in both environments, so the graph is the same; only the `snowflake` resource differs:

* prod: reads each feature table from the lake (S3, through LakeStorage/pyarrow) and replaces
  `<SNOWFLAKE_DATABASE>.FEATURES.<TABLE>`, typed from FEATURE_TABLES below, with batched
  `INSERT ... SELECT ... FROM TABLE(FLATTEN(PARSE_JSON(?)))` (works on Snowflake and the fakesnow server alike;
  `SNOWFLAKE_LOAD_METHOD=stage` switches to write_pandas, see warehouse/resources.py LOAD_METHODS);
* local: the dbt-duckdb target reads the lake Parquet in place (source `external_location`), so nothing
  is copied: the asset checks that every table is there with the expected columns and reports row counts,
  so a missing feature table fails here, by name, instead of deep inside dbt.

The declared columns are the contract with the features layer: only these columns are loaded
(anything else the features layer adds stays in the lake), and a missing one fails the load.
"""

from functools import cache

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from personalization_assets.core.asset_keys import FEATURES_LAYER, FEATURES_LOADED
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.core.storage import LakeStorage
from personalization_assets.features.models import FEATURE_MODELS
from personalization_assets.warehouse.resources import SnowflakeWarehouse, arrow_to_frame

LOAD_METHOD_DOC = {"insert": "batched INSERT of bound JSON arrays", "stage": "write_pandas, PUT + COPY INTO"}
GROUP = "warehouse"
OWNERS = ["team:data-platform"]

# The columns the warehouse loads per feature table: a subset of the table's pandera model
# (features/models.py), in the model's order; anything else the features layer writes stays in the lake.
WAREHOUSE_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_rfm": ("person_id", "recency_days", "frequency", "monetary", "orders", "first_seen_at", "last_seen_at", "is_known_user", "as_of"),
    "content_affinity": ("person_id", "category", "affinity", "events", "is_top", "top_category", "as_of"),
    "engagement": ("person_id", "active_days", "sessions_per_week", "avg_session_dwell_ms", "preferred_hour", "preferred_dow", "as_of"),
    "identity_map": ("identifier", "identifier_kind", "person_id", "component_size", "is_junk", "as_of"),
    "purpose_eligibility": ("person_id", "purpose", "eligible", "as_of"),
    "sessions": ("person_id", "session_id", "session_start", "session_end", "events", "pages", "dwell_ms", "landing_content_id", "converted", "as_of"),
}
# Snowflake type of each Arrow type of the models (core/schemas.py). Timestamps are UTC and stored as
# TIMESTAMP_NTZ (see dbt/macros/cross_db.sql).
SNOWFLAKE_TYPES = {
    pa.string(): "varchar",
    pa.float64(): "double",
    pa.int64(): "bigint",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamp_ntz",
}
# Where a Snowflake column differs from the model (the one place): user_rfm.recency_days is whole days (Int64)
# in the model and in the lake, but has always been loaded as DOUBLE; kept so the prod schema does not change.
SNOWFLAKE_TYPE_OVERRIDES = {("user_rfm", "recency_days"): "double"}


def _feature_tables() -> dict[str, tuple[tuple[str, str], ...]]:
    out = {}
    for table, columns in WAREHOUSE_COLUMNS.items():
        schema = arrow_schema(FEATURE_MODELS[table])
        out[table] = tuple(
            (c, SNOWFLAKE_TYPE_OVERRIDES.get((table, c)) or SNOWFLAKE_TYPES[schema.field(c).type]) for c in columns
        )
    return out


# (column, Snowflake type) per table, generated from WAREHOUSE_COLUMNS and the pandera models
FEATURE_TABLES: dict[str, tuple[tuple[str, str], ...]] = _feature_tables()


# pseudonym columns per table: what the erasure run deletes by (privacy/erasure handler below)
PSEUDONYM_COLUMNS = {table: ["identifier", "person_id"] if table == "identity_map" else ["person_id"] for table in FEATURE_TABLES}
ERASURE_HANDLER = {
    "kind": "warehouse",
    "relations": [
        {"relation": f"features.{table}", "columns": PSEUDONYM_COLUMNS[table]} for table in FEATURE_TABLES
    ],
}


def feature_asset_key(table: str) -> dg.AssetKey:
    """The features layer's asset for a lake table (the dbt sources carry the same key in meta.dagster)."""
    return dg.AssetKey([FEATURES_LAYER, table])


def missing_columns(table: str, schema: pa.Schema) -> list[str]:
    return [name for name, _ in FEATURE_TABLES[table] if name not in schema.names]


def to_load_table(table: str, data: pa.Table) -> pa.Table:
    """The declared columns, in order, with timestamps as naive UTC (the Snowflake columns are TIMESTAMP_NTZ)."""
    columns = []
    for name, _ in FEATURE_TABLES[table]:
        column = data.column(name)
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            # wall-clock UTC, then drop the zone: the Snowflake column is TIMESTAMP_NTZ in UTC
            column = pc.cast(column, pa.timestamp(column.type.unit, tz="UTC")).cast(pa.timestamp(column.type.unit))
        columns.append(column)
    return pa.table(columns, names=[name for name, _ in FEATURE_TABLES[table]])


def to_load_frame(table: str, data: pa.Table) -> pd.DataFrame:
    """The declared columns as a DataFrame (what write_pandas takes): naive UTC timestamps, nullable ints/bools."""
    return arrow_to_frame(to_load_table(table, data))


def _parquet_rows(lake: LakeStorage, table: str) -> tuple[int, pa.Schema]:
    meta = lake.parquet_metadata(FEATURES_LAYER, table)
    return meta.num_rows, meta.schema.to_arrow_schema()


@cache
def build_features_loaded_asset(env: str) -> dg.AssetsDefinition:
    kinds = {"snowflake"} if env == "prod" else {"parquet", "duckdb"}

    @dg.asset(
        key=FEATURES_LOADED,
        deps=[feature_asset_key(t) for t in FEATURE_TABLES],
        group_name=GROUP,
        owners=OWNERS,
        kinds=kinds,
        description=(
            "Feature tables made visible to the warehouse before dbt runs: loaded into Snowflake "
            "(FEATURES schema) in prod (batched INSERT of bound JSON, or write_pandas with SNOWFLAKE_LOAD_METHOD=stage); checked in place (lake Parquet, read by dbt-duckdb) locally."
        ),
        # prod: the FEATURES copies; local: nothing is copied, the eraser finds no such tables
        metadata={"privacy/tier": "warehouse", "privacy/erasure": ERASURE_HANDLER},
        tags={"privacy/sensitivity": "pseudonymized"},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    )
    def features_loaded(context: dg.AssetExecutionContext, lake: LakeStorage, snowflake: SnowflakeWarehouse) -> dg.MaterializeResult:
        if not snowflake.enabled and lake.is_s3:
            raise dg.Failure(
                f"the local warehouse (dbt-duckdb) reads the lake in place and cannot read {lake.url} (no httpfs). "
                "Fix: locally, leave PERSONALIZATION_LAKE_URL unset or point it at a local directory.",
                allow_retries=False,
            )
        absent = [t for t in FEATURE_TABLES if not lake.exists(FEATURES_LAYER, t)]
        if absent:
            raise dg.Failure(
                f"feature table(s) {', '.join(absent)} missing from {lake.uri(FEATURES_LAYER)}. "
                "Fix: materialize the features layer first (group `features`).",
                allow_retries=False,
            )
        metadata: dict = {}
        total = 0
        if not snowflake.enabled:
            for table in FEATURE_TABLES:
                rows, schema = _parquet_rows(lake, table)
                missing = missing_columns(table, schema)
                if missing:
                    raise dg.Failure(f"features/{table} lacks column(s) {', '.join(missing)} (see FEATURE_TABLES in {__name__}).", allow_retries=False)
                metadata[f"rows/{table}"] = rows
                metadata[f"location/{table}"] = dg.MetadataValue.path(lake.uri(lake.data_file(FEATURES_LAYER, table)))
                total += rows
            metadata["mode"] = "local: dbt-duckdb reads the lake Parquet in place"
            metadata["rows_written"] = 0  # nothing is copied locally
        else:
            with snowflake.get_connection(paramstyle="qmark") as conn:
                for table, columns in FEATURE_TABLES.items():
                    data = lake.read_table(FEATURES_LAYER, table)
                    missing = missing_columns(table, data.schema)
                    if missing:
                        raise dg.Failure(f"features/{table} lacks column(s) {', '.join(missing)} (see FEATURE_TABLES in {__name__}).", allow_retries=False)
                    loaded = snowflake.replace_table(conn, table, columns, to_load_table(table, data))
                    context.log.info(f"loaded {loaded.rows} rows into {loaded.table}")
                    metadata[f"rows/{table}"] = loaded.rows
                    metadata[f"location/{table}"] = loaded.table
                    total += loaded.rows
            metadata["mode"] = f"prod: loaded into Snowflake ({snowflake.load_method}: {LOAD_METHOD_DOC[snowflake.load_method]})"
            metadata["rows_written"] = total
        metadata["dagster/row_count"] = total  # feature rows visible to the warehouse
        return dg.MaterializeResult(metadata=metadata)

    return features_loaded
