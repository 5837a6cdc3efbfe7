"""Warehouse resources, chosen by environment under the same keys:

| key | local | prod |
|---|---|---|
| `dbt` | dbt CLI, target `local` (dbt-duckdb, `$DATA_DIR/warehouse.duckdb`) | dbt CLI, target `prod` (dbt-snowflake) |
| `snowflake` | `SnowflakeWarehouse(enabled=False)`: nothing to load, dbt-duckdb reads the lake in place | `SnowflakeWarehouse` from `SNOWFLAKE_*` (via `dg.EnvVar`) |
| `warehouse` | `DuckDBWarehouse` on `$DATA_DIR/warehouse.duckdb` | the `snowflake` resource |

`warehouse` is the eraser the privacy layer's erasure run calls (`build_erasure_asset(...,
warehouse_eraser_key="warehouse")`): `erase(handler, pseudonyms, apply)` for the `privacy/erasure`
handlers of kind `warehouse` that the warehouse assets declare.

dbt connects on its own from `dbt/profiles.yml`, which reads the same `SNOWFLAKE_*` variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_dbt import DbtCliResource
from pydantic import Field

from personalization_assets.settings import Settings
from personalization_assets.warehouse.project import dbt_project

SNOWFLAKE_ENV = {
    "account": "SNOWFLAKE_ACCOUNT",
    "user": "SNOWFLAKE_USER",
    "password": "SNOWFLAKE_PASSWORD",
    "role": "SNOWFLAKE_ROLE",
    "warehouse": "SNOWFLAKE_WAREHOUSE",
    "database": "SNOWFLAKE_DATABASE",
}
# endpoint overrides, only passed when set (tests point them at fakesnow)
SNOWFLAKE_ENDPOINT_ENV = {"host": "SNOWFLAKE_HOST", "protocol": "SNOWFLAKE_PROTOCOL"}
ERASE_CHUNK = 1000  # pseudonyms per `in (...)` list


@dataclass(frozen=True)
class LoadedTable:
    table: str  # fully qualified, e.g. PERSONALIZATION.FEATURES.USER_RFM
    rows: int


def erasure_relations(handler: Mapping) -> list[tuple[str, list[str]]]:
    """(relation, pseudonym columns) of a `warehouse` erasure handler: `{"relation": "schema.table",
    "columns": [...]}`, or `{"relations": [{"relation": ..., "columns": [...]}, ...]}` for an asset that
    owns several tables (warehouse/features_loaded)."""
    if handler.get("kind") != "warehouse":
        raise ValueError(f"not a warehouse erasure handler: {handler!r}")
    items = handler.get("relations", [handler])
    out = []
    for item in items:
        schema, _, table = str(item["relation"]).partition(".")
        if not (schema.isidentifier() and table.isidentifier()) or not item["columns"]:
            raise ValueError(f"bad warehouse erasure handler entry: {item!r}")
        if not all(str(c).isidentifier() for c in item["columns"]):
            raise ValueError(f"bad column in warehouse erasure handler entry: {item!r}")
        out.append((f"{schema}.{table}", [str(c) for c in item["columns"]]))
    return out


def _chunks(values: Iterable[str], size: int = ERASE_CHUNK) -> Iterator[list[str]]:
    chunk: list[str] = []
    for v in sorted(values):
        chunk.append(v)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class DuckDBWarehouse(dg.ConfigurableResource):
    """The local warehouse file (written by dbt-duckdb). Only used to erase subjects from its tables."""

    path: str = Field(description="The DuckDB file dbt's `local` target writes ($DATA_DIR/warehouse.duckdb).")

    def erase(self, handler: Mapping, pseudonyms: set[str], apply: bool) -> int:
        """Delete (apply) or count (verify) the rows holding one of `pseudonyms`. Relations that are not
        stored tables here count 0: locally the feature tables are not copied (dbt-duckdb reads the lake)."""
        relations = erasure_relations(handler)
        if not pseudonyms or not Path(self.path).exists():
            return 0
        import duckdb

        total = 0
        con = duckdb.connect(self.path, read_only=not apply)
        try:
            for relation, columns in relations:
                schema, table = relation.split(".")
                stored = con.execute(
                    "select count(*) from information_schema.tables where table_schema = ? and table_name = ? and table_type = 'BASE TABLE'",
                    [schema, table],
                ).fetchall()[0][0]
                if not stored:
                    continue
                for chunk in _chunks(pseudonyms):
                    marks = ", ".join("?" for _ in chunk)
                    where = " or ".join(f"{c} in ({marks})" for c in columns)
                    params = chunk * len(columns)
                    n = con.execute(f"select count(*) from {relation} where {where}", params).fetchall()[0][0]
                    if n and apply:
                        con.execute(f"delete from {relation} where {where}", params)
                    total += n
        finally:
            con.close()
        return total


class SnowflakeWarehouse(dg.ConfigurableResource):
    """Loads feature tables into Snowflake with `write_pandas`, and erases subjects from warehouse tables.

    `enabled=False` is the local stand-in: the local warehouse (dbt-duckdb) reads the lake Parquet in place,
    so there is nothing to load and nothing to connect to.
    """

    enabled: bool = Field(default=True, description="False where the warehouse is not Snowflake (local).")
    account: str | None = Field(default=None, description="From dg.EnvVar('SNOWFLAKE_ACCOUNT').")
    user: str | None = Field(default=None, description="From dg.EnvVar('SNOWFLAKE_USER').")
    password: str | None = Field(default=None, description="Secret: from dg.EnvVar('SNOWFLAKE_PASSWORD').")
    role: str | None = Field(default=None, description="From dg.EnvVar('SNOWFLAKE_ROLE').")
    warehouse: str | None = Field(default=None, description="From dg.EnvVar('SNOWFLAKE_WAREHOUSE').")
    database: str | None = Field(default=None, description="From dg.EnvVar('SNOWFLAKE_DATABASE').")
    features_schema: str = Field(default="FEATURES", description="Schema the feature tables are loaded into (dbt source `features`).")
    host: str | None = Field(default=None, description="Endpoint override (SNOWFLAKE_HOST).")
    port: int | None = Field(default=None, description="Endpoint override (SNOWFLAKE_PORT).")
    protocol: str | None = Field(default=None, description="Endpoint override (SNOWFLAKE_PROTOCOL).")

    def _connect_args(self) -> dict:
        missing = [env for field, env in SNOWFLAKE_ENV.items() if not getattr(self, field)]
        if missing:
            raise dg.Failure(
                f"Snowflake is not configured: {', '.join(missing)} not set. Fix: export them (prod only).", allow_retries=False
            )
        args = {field: getattr(self, field) for field in SNOWFLAKE_ENV}
        args.update({k: v for k, v in (("host", self.host), ("port", self.port), ("protocol", self.protocol)) if v})
        return args

    @contextmanager
    def get_connection(self) -> Iterator:
        # looked up at call time (not imported by name) so fakesnow.patch() can replace it in tests
        import snowflake.connector

        conn = snowflake.connector.connect(**self._connect_args())
        try:
            yield conn
        finally:
            conn.close()

    def replace_table(self, conn, table: str, columns: Sequence[tuple[str, str]], data: pd.DataFrame) -> LoadedTable:
        """Replace `<database>.<features_schema>.<table>` with `data`, whose columns are `columns` (name, type).

        The table is created from the declared types (not inferred from the data), loaded under a temporary
        name with `write_pandas`, then renamed over the old one, so a failed load leaves the old table intact.
        """
        import snowflake.connector.pandas_tools

        schema = f"{self.database}.{self.features_schema}".upper()
        final, loading = f"{table}".upper(), f"{table}__LOADING".upper()
        ddl = ", ".join(f"{name.upper()} {sql_type}" for name, sql_type in columns)
        frame = data.rename(columns=str.upper)[[name.upper() for name, _ in columns]]
        cur = conn.cursor()
        try:
            cur.execute(f"create schema if not exists {schema}")
            cur.execute(f"create or replace table {schema}.{loading} ({ddl})")
            ok, _chunks, rows, _ = snowflake.connector.pandas_tools.write_pandas(
                conn,
                frame,
                loading,
                database=self.database.upper(),
                schema=self.features_schema.upper(),
                quote_identifiers=True,
                use_logical_type=True,
            )
            if not ok or rows != len(frame):
                raise dg.Failure(f"write_pandas loaded {rows} of {len(frame)} rows into {schema}.{loading}")
            cur.execute(f"drop table if exists {schema}.{final}")
            cur.execute(f"alter table {schema}.{loading} rename to {schema}.{final}")
        finally:
            cur.close()
        return LoadedTable(table=f"{schema}.{final}", rows=int(rows))

    def erase(self, handler: Mapping, pseudonyms: set[str], apply: bool) -> int:
        """Delete (apply) or count (verify) the rows holding one of `pseudonyms` in the handler's
        relations (`schema.table` in SNOWFLAKE_DATABASE). Relations not created yet count 0."""
        relations = erasure_relations(handler)
        if not pseudonyms:
            return 0
        total = 0
        with self.get_connection() as conn:
            cur = conn.cursor()
            for relation, columns in relations:
                schema, table = (part.upper() for part in relation.split("."))
                stored = cur.execute(
                    f"select count(*) from {self.database}.information_schema.tables "
                    "where table_schema = %s and table_name = %s and table_type = 'BASE TABLE'",
                    (schema, table),
                ).fetchall()[0][0]
                if not stored:
                    continue
                qualified = f"{self.database}.{schema}.{table}"
                for chunk in _chunks(pseudonyms):
                    marks = ", ".join("%s" for _ in chunk)
                    where = " or ".join(f"{c} in ({marks})" for c in columns)
                    params = tuple(chunk * len(columns))
                    n = cur.execute(f"select count(*) from {qualified} where {where}", params).fetchall()[0][0]
                    if n and apply:
                        cur.execute(f"delete from {qualified} where {where}", params)
                    total += n
            cur.close()
        return total


def snowflake_warehouse(settings: Settings, environ: Mapping[str, str] | None = None) -> SnowflakeWarehouse:
    if settings.is_local:
        return SnowflakeWarehouse(enabled=False)
    environ = os.environ if environ is None else environ
    kwargs: dict = {field: dg.EnvVar(env) for field, env in SNOWFLAKE_ENV.items()}
    kwargs.update({field: dg.EnvVar(env) for field, env in SNOWFLAKE_ENDPOINT_ENV.items() if environ.get(env)})
    if environ.get("SNOWFLAKE_PORT"):
        kwargs["port"] = dg.EnvVar.int("SNOWFLAKE_PORT")
    return SnowflakeWarehouse(**kwargs)


def warehouse_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """`snowflake` (the feature loader's target) and `warehouse` (the erasure run's eraser)."""
    snowflake = snowflake_warehouse(settings)
    if settings.is_local:
        return {"snowflake": snowflake, "warehouse": DuckDBWarehouse(path=str(settings.warehouse_path))}
    return {"snowflake": snowflake, "warehouse": snowflake}


def dbt_executable() -> str:
    """The dbt next to this interpreter: the venv's bin/ is not on PATH when the venv is not activated."""
    return str(Path(sys.executable).parent / "dbt")


def dbt_resource(settings: Settings) -> DbtCliResource:
    return DbtCliResource(
        project_dir=dbt_project,
        profiles_dir=os.fspath(dbt_project.profiles_dir),
        target=settings.dbt_target,
        dbt_executable=dbt_executable(),
    )


SEGMENT_SIZES_SQL = "select segment_type, segment_name, members from segments.segment_sizes order by segment_type, segment_name"


def read_segment_sizes(settings: Settings, snowflake: "SnowflakeWarehouse | None" = None) -> list[tuple[str, str, int]]:
    """Exact segment sizes from the warehouse (internal: exports go through the DP release)."""
    return query_warehouse(settings, snowflake, SEGMENT_SIZES_SQL)


def query_warehouse(settings: Settings, snowflake: "SnowflakeWarehouse | None", sql: str) -> list[tuple]:
    """Run a read-only query against the warehouse: `segments.<table>` names resolve in both targets."""
    if settings.is_local:
        import duckdb

        if not settings.warehouse_path.exists():
            return []
        # attach read-only into a fresh in-memory database: works even while this process holds the file
        # open with another configuration (dagster-dbt's row counts go through dbt-duckdb's connection)
        con = duckdb.connect(":memory:")
        try:
            path = str(settings.warehouse_path).replace("'", "''")
            con.execute(f"attach '{path}' as wh (read_only)")
            return [tuple(r) for r in con.execute(sql.replace("from segments.", "from wh.segments.")).fetchall()]
        except duckdb.CatalogException:
            return []
        finally:
            con.close()
    if snowflake is None:
        return []
    with snowflake.get_connection() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
