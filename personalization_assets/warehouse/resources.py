"""Warehouse resources, chosen by environment under the same keys:

| key | local | prod |
|---|---|---|
| `dbt` | dbt CLI, target `local` (dbt-duckdb, `$DATA_DIR/warehouse.duckdb`) | dbt CLI, target `prod` (dbt-snowflake) |
| `snowflake` | `SnowflakeWarehouse(enabled=False)`: nothing to load, dbt-duckdb reads the lake in place | `SnowflakeWarehouse` from `SNOWFLAKE_*` (via `dg.EnvVar`) |
| `warehouse` | `DuckDBWarehouse` on `$DATA_DIR/warehouse.duckdb` | the `snowflake` resource |

`warehouse` is the eraser the privacy layer's erasure run calls (`privacy.defs` -> `build_erasure_asset(...,
warehouse_eraser_key="warehouse")`): `erase(handler, pseudonyms, apply)` for the `privacy/erasure`
handlers of kind `warehouse` that the warehouse assets declare.

dbt connects on its own from `dbt/profiles.yml`, which reads the same `SNOWFLAKE_*` variables.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_dbt import DbtCliResource
from packaging import version
from pydantic import Field

from personalization_assets.core.file_locks import flock_within
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
# How warehouse/features_loaded writes rows (SNOWFLAKE_LOAD_METHOD):
# - insert: the rows of a batch as ONE bound JSON array, `insert into T select value[0]::type, ... from
#   table(flatten(input => parse_json(?)))`. Plain SQL + one bind variable: works on every Snowflake account and
#   on the fakesnow server (no stage). One statement per batch of <= INSERT_BATCH_BYTES of JSON (a bind
#   variable holds at most 16 MB). Measured on the fakesnow server (bench/warehouse_load.py): the six feature
#   tables of a 1M-event run, 538k rows, in 17 s (~32k rows/s). Row-by-row `executemany` was ~560 rows/s there.
# - stage: write_pandas (Parquet PUT to the table stage + COPY INTO). Faster on real Snowflake for very large
#   tables (parallel upload, no JSON), but needs internal stages, which the fakesnow server lacks.
LOAD_METHODS = ("insert", "stage")
INSERT_BATCH_BYTES = 8 * 1024 * 1024


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


_log = logging.getLogger(__name__)
WAREHOUSE_LOCK_TIMEOUT_S = 900.0
_held_warehouse_locks = threading.local()


class WarehouseBusy(RuntimeError):
    pass


@contextmanager
def warehouse_file_lock(path: str | Path, *, shared: bool = False, timeout: float | None = None, log=None):
    """Serialize access to the local warehouse file across processes: an exclusive lock for the dbt build and the
    eraser's deletes, a shared one for readers. DuckDB lets one process hold a database file for writing and refuses
    every other open meanwhile ("Could not set lock on file"): two runs ticking at once failed in the second one's
    dbt step or row count (found by a concurrency attack) instead of waiting. A `flock` on `<file>.lock`, next to the
    file; re-entrant within a thread (a holder that reads again does not wait for itself). On timeout: WarehouseBusy,
    naming the lock file."""
    lock_path = f"{path}.lock"
    held = getattr(_held_warehouse_locks, "paths", None)
    if held is None:
        held = _held_warehouse_locks.paths = set()
    if lock_path in held:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    limit = WAREHOUSE_LOCK_TIMEOUT_S if timeout is None else timeout

    def waiting():
        for logger in (_log, log):
            if logger is not None:
                logger.info(f"waiting for another run's use of the warehouse file ({lock_path})")

    with open(lock_path, "a") as fh:
        if not flock_within(fh, limit, shared=shared, on_wait=waiting):
            raise WarehouseBusy(f"the local warehouse {path} was held by another run for over {limit:.0f} s ({lock_path}); "
                                "retry when it has finished")
        held.add(lock_path)
        try:
            yield
        finally:
            held.discard(lock_path)
            fcntl.flock(fh, fcntl.LOCK_UN)


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

        with warehouse_file_lock(self.path, shared=not apply):
            return self._erase(duckdb, relations, pseudonyms, apply)

    def _erase(self, duckdb, relations, pseudonyms: set[str], apply: bool) -> int:
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
    load_method: str = Field(
        default="insert",
        description="How feature tables are loaded (SNOWFLAKE_LOAD_METHOD): `insert` (default, works on Snowflake and "
        "the fakesnow server) or `stage` (write_pandas: PUT + COPY INTO, faster for large tables, needs stages).",
    )
    insert_batch_bytes: int = Field(default=INSERT_BATCH_BYTES, description="Upper bound of one JSON batch of the `insert` method.")

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
    def get_connection(self, **overrides) -> Iterator:
        # looked up at call time (not imported by name) so fakesnow.patch() can replace it in tests
        import snowflake.connector

        conn = snowflake.connector.connect(**self._connect_args(), **overrides)
        try:
            yield conn
        finally:
            conn.close()

    def replace_table(self, conn, table: str, columns: Sequence[tuple[str, str]], data: pa.Table) -> LoadedTable:
        """Replace `<database>.<features_schema>.<table>` with `data`, whose columns are `columns` (name, type).

        The table is created from the declared types (not inferred from the data), loaded under a temporary
        name, then renamed over the old one, so a failed load leaves the old table intact. How the rows get
        there is `load_method` (see LOAD_METHODS).
        """
        schema = f"{self.database}.{self.features_schema}".upper()
        final, loading = f"{table}".upper(), f"{table}__LOADING".upper()
        ddl = ", ".join(f"{name.upper()} {sql_type}" for name, sql_type in columns)
        cur = conn.cursor()
        try:
            cur.execute(f"create schema if not exists {schema}")
            cur.execute(f"create or replace table {schema}.{loading} ({ddl})")
            if self.load_method == "stage":
                rows = self._load_with_write_pandas(conn, loading, columns, data)
            else:
                rows = insert_json_batches(cur, f"{schema}.{loading}", columns, data, self.insert_batch_bytes)
            if rows != data.num_rows:
                raise dg.Failure(f"loaded {rows} of {data.num_rows} rows into {schema}.{loading} ({self.load_method})")
            cur.execute(f"drop table if exists {schema}.{final}")
            cur.execute(f"alter table {schema}.{loading} rename to {schema}.{final}")
        finally:
            cur.close()
        return LoadedTable(table=f"{schema}.{final}", rows=int(rows))

    def _load_with_write_pandas(self, conn, loading: str, columns: Sequence[tuple[str, str]], data: pa.Table) -> int:
        """`load_method="stage"`: PUT Parquet to the table stage + COPY INTO (needs stages: real Snowflake only)."""
        import snowflake.connector.pandas_tools

        frame = arrow_to_frame(data).rename(columns=str.upper)[[name.upper() for name, _ in columns]]
        ok, _chunks, rows, _ = snowflake.connector.pandas_tools.write_pandas(
            conn,
            frame,
            loading,
            database=self.database.upper(),
            schema=self.features_schema.upper(),
            quote_identifiers=True,
            use_logical_type=True,
        )
        if not ok:
            raise dg.Failure(f"write_pandas failed to load {self.database}.{self.features_schema}.{loading}")
        return int(rows)

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


def arrow_to_frame(data: pa.Table) -> pd.DataFrame:
    """A DataFrame for write_pandas: nullable ints/bools (no float coercion of NULLs)."""
    nullable = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return data.to_pandas(types_mapper=nullable.get)


def insert_json_batches(cur, qualified: str, columns: Sequence[tuple[str, str]], data: pa.Table, batch_bytes: int = INSERT_BATCH_BYTES) -> int:
    """Insert `data` (its columns named like `columns`) into `qualified` in batches, each ONE statement with
    ONE bound JSON array of row arrays. The JSON is written by DuckDB (vectorized; doubles in shortest
    round-trip form, timestamps as `YYYY-MM-DD HH:MM:SS.ffffff`). Returns the rows inserted."""
    import duckdb

    names = [name for name, _ in columns]
    select = ", ".join(f"value[{i}]::{sql_type}" for i, (_, sql_type) in enumerate(columns))
    sql = f"insert into {qualified} ({', '.join(n.upper() for n in names)}) select {select} from table(flatten(input => parse_json(?)))"
    if data.num_rows == 0:
        return 0
    con = duckdb.connect(config={"threads": 1})
    try:
        json_row = "json_array(" + ", ".join(f'"{n}"' for n in names) + ")::varchar"
        # size the batches from a sample of rows (one JSON array per row, plus a comma)
        con.register("sample", data.select(names).slice(0, 2000))
        width = con.execute(f"select avg(length({json_row})) from sample").fetchall()[0][0] or 1
        per_batch = max(100, int(batch_bytes / (width + 1) * 0.8))
        total = 0
        for offset in range(0, data.num_rows, per_batch):
            con.register("part", data.select(names).slice(offset, per_batch))  # zero-copy
            payload = con.execute(f"select '[' || string_agg({json_row}, ',') || ']' from part").fetchall()[0][0]
            # bound server-side (the connection's paramstyle is qmark): a bind variable may hold 16 MB,
            # a SQL text only 1 MB
            cur.execute(sql, (payload,))
            total += int(cur.rowcount or 0)
        return total
    finally:
        con.close()


def snowflake_warehouse(settings: Settings, environ: Mapping[str, str] | None = None) -> SnowflakeWarehouse:
    if settings.is_local:
        return SnowflakeWarehouse(enabled=False)
    environ = os.environ if environ is None else environ
    kwargs: dict = {field: dg.EnvVar(env) for field, env in SNOWFLAKE_ENV.items()}
    kwargs.update({field: dg.EnvVar(env) for field, env in SNOWFLAKE_ENDPOINT_ENV.items() if environ.get(env)})
    if environ.get("SNOWFLAKE_PORT"):
        kwargs["port"] = dg.EnvVar.int("SNOWFLAKE_PORT")
    method = environ.get("SNOWFLAKE_LOAD_METHOD", "").strip().lower()
    if method:
        if method not in LOAD_METHODS:
            from personalization_assets.settings import ConfigError

            raise ConfigError(
                f"SNOWFLAKE_LOAD_METHOD={method!r} is unknown. Fix: set it to one of {', '.join(LOAD_METHODS)} "
                "(or unset it for `insert`, which works everywhere)."
            )
        kwargs["load_method"] = method
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


class PlatformDbtCliResource(DbtCliResource):
    """dagster-dbt's resource minus two fixed costs per run, measured at 4-9 s each on the 2-core machine:

    * dagster-dbt learns the dbt version by running `dbt --version` before every invocation (a full dbt import
      plus a PyPI lookup with a 1 s timeout). When the executable is this interpreter's own dbt, the installed
      dbt-core's version is the same answer.
    * it loads the project, profile and adapter in this process before every invocation, only to query row
      counts and column metadata afterwards. The local (DuckDB) warehouse counts rows itself after dbt exits
      (warehouse/assets.py), so `in_process_adapter=False` skips it there.
    """

    in_process_adapter: bool = Field(
        default=True,
        description="Load dbt's adapter in-process (needed by dagster-dbt's fetch_row_counts; the DuckDB path does not use it).",
    )

    def _initialize_dbt_core_adapter(self, args):
        if not self.in_process_adapter:
            return None
        return super()._initialize_dbt_core_adapter(args)

    @cached_property
    def _cli_version(self) -> version.Version:
        if os.path.realpath(self.dbt_executable) == os.path.realpath(dbt_executable()):
            try:
                return version.parse(importlib.metadata.version("dbt-core"))
            except importlib.metadata.PackageNotFoundError:
                pass
        return DbtCliResource._cli_version.func(self)


def dbt_resource(settings: Settings) -> DbtCliResource:
    return PlatformDbtCliResource(
        project_dir=dbt_project,
        profiles_dir=os.fspath(dbt_project.profiles_dir),
        target=settings.dbt_target,
        dbt_executable=dbt_executable(),
        in_process_adapter=not settings.is_local,
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
        with warehouse_file_lock(settings.warehouse_path, shared=True):
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
    # the resource as definitions build it holds dg.EnvVar fields: resolve them outside a run
    snowflake = snowflake.process_config_and_initialize()
    with snowflake.get_connection() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
