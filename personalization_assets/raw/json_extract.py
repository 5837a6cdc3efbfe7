"""Derive JSON extraction SQL from the tracking-plan models.

A model column with ``metadata={"json": "a.b.c"}`` is read from that path of each JSON record. Its
expected JSON kind follows from the column's pandera dtype (or ``metadata["kind"]`` for columns that
hold nested JSON as text). From that single declaration this module builds:

* the ``columns=`` spec for DuckDB's ``read_json`` (nested STRUCTs whose leaves are ``JSON``), so each
  value keeps its JSON type, and
* a projection that casts each value to the declared type and lists, per row, the fields whose JSON
  type does not match the plan (``_type_errors``). A value of the wrong type is never coerced: a price
  sent as the string "9.99" is a tracking-plan violation, not a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pandera.pandas as pa

# DuckDB json_type() names accepted for each kind (NULL is always accepted; nullability is pandera's job).
_KIND_JSON_TYPES = {
    "string": ("VARCHAR",),
    "timestamp": ("VARCHAR",),
    "number": ("DOUBLE", "UBIGINT", "BIGINT", "HUGEINT"),
    "integer": ("UBIGINT", "BIGINT"),
    "boolean": ("BOOLEAN",),
    "object": ("OBJECT",),
    "array": ("ARRAY",),
}


@dataclass(frozen=True)
class JsonColumn:
    name: str
    path: tuple[str, ...]
    kind: str


def _kind_from_dtype(dtype: str) -> str:
    d = dtype.lower()
    if "datetime" in d or "timestamp" in d:
        return "timestamp"
    if "float" in d:
        return "number"
    if "int" in d:
        return "integer"
    if "bool" in d:
        return "boolean"
    return "string"


@lru_cache(maxsize=None)
def json_columns(model: type[pa.DataFrameModel]) -> tuple[JsonColumn, ...]:
    schema = model.to_schema()
    cols = []
    for name, col in schema.columns.items():
        meta = col.metadata or {}
        if "json" not in meta:
            continue
        kind = meta.get("kind") or _kind_from_dtype(str(col.dtype))
        if kind not in _KIND_JSON_TYPES:
            raise ValueError(f"{model.__name__}.{name}: unknown JSON kind {kind!r}")
        cols.append(JsonColumn(name=name, path=tuple(meta["json"].split(".")), kind=kind))
    return tuple(cols)


def _tree(model) -> dict:
    tree: dict = {}
    for col in json_columns(model):
        node = tree
        for part in col.path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{model.__name__}: path {'.'.join(col.path)} nests under a leaf")
        node[col.path[-1]] = "JSON"
    return tree


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _struct_type(node: dict) -> str:
    fields = []
    for key, child in node.items():
        fields.append(f"{_quote(key)} {'JSON' if child == 'JSON' else _struct_type(child)}")
    return f"STRUCT({', '.join(fields)})"


@lru_cache(maxsize=None)
def read_json_columns(model: type[pa.DataFrameModel]) -> str:
    """The `columns={...}` argument for DuckDB read_json (top-level keys -> types)."""
    items = []
    for key, child in _tree(model).items():
        typ = "JSON" if child == "JSON" else _struct_type(child)
        items.append(f"{_sql_str(key)}: {_sql_str(typ)}")
    return "{" + ", ".join(items) + "}"


@lru_cache(maxsize=None)
def json_transform_structure(model: type[pa.DataFrameModel]) -> str:
    """The structure argument for json_transform: the same shape as read_json_columns."""
    import json

    return json.dumps(_tree(model))


@lru_cache(maxsize=None)
def struct_parent_paths(model: type[pa.DataFrameModel]) -> tuple[tuple[str, ...], ...]:
    """Paths that must be JSON objects (or absent) for the structure to apply, e.g. ('context',)."""
    parents = set()
    for col in json_columns(model):
        for i in range(1, len(col.path)):
            parents.add(col.path[:i])
    return tuple(sorted(parents))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _access(root: str | None, path: tuple[str, ...]) -> str:
    """Struct field access; with root=None the first path element is a top-level column."""
    parts = [_quote(p) for p in path]
    return ".".join(([root] if root else []) + parts)


def typed_projection(model: type[pa.DataFrameModel], root: str | None = "s") -> tuple[list[str], str]:
    """SELECT expressions casting each JSON leaf under `root` to the model's type, plus `_type_errors`.

    `root` is a struct column (from read_json's row or from json_transform) whose leaves are JSON.
    """
    select, errors = [], []
    for col in json_columns(model):
        v = _access(root, col.path)
        allowed = ", ".join(_sql_str(t) for t in _KIND_JSON_TYPES[col.kind])
        ok = f"json_type({v}) in ({allowed})"
        if col.kind == "string":
            value = f"case when {ok} then ({v} ->> '$') end"
        elif col.kind == "timestamp":
            value = f"case when {ok} then try_cast({v} ->> '$' as timestamptz) end"
        elif col.kind == "number":
            value = f"case when {ok} then try_cast({v} ->> '$' as double) end"
        elif col.kind == "integer":
            value = f"case when {ok} then try_cast({v} ->> '$' as bigint) end"
        elif col.kind == "boolean":
            value = f"case when {ok} then ({v} ->> '$')::boolean end"
        else:  # object / array kept as JSON text
            value = f"case when {ok} then ({v})::varchar end"
        select.append(f"{value} as {_quote(col.name)}")
        bad = f"json_type({v}) is not null and json_type({v}) <> 'NULL' and not ({ok})"
        label = ".".join(col.path)
        errors.append(f"case when {bad} then {_sql_str(label + ' must be ' + col.kind)} end")
        if col.kind == "timestamp":
            errors.append(
                f"case when {ok} and try_cast({v} ->> '$' as timestamptz) is null "
                f"then {_sql_str(label + ' is not an ISO-8601 timestamp')} end"
            )
        if col.kind == "integer":
            errors.append(
                f"case when {ok} and try_cast({v} ->> '$' as bigint) is null "
                f"then {_sql_str(label + ' is out of range')} end"
            )
    type_errors = f"list_filter([{', '.join(errors)}], lambda x: x is not null) as _type_errors"
    return select, type_errors
