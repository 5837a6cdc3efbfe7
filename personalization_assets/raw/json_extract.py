"""Derive JSON extraction SQL from the tracking-plan models.

A model column with ``metadata={"json": "a.b.c"}`` is read from that path of each JSON record. Its
expected JSON kind follows from the column's pandera dtype (or ``metadata["kind"]`` for columns that
hold nested JSON as text). From that single declaration this module builds:

* the ``columns=`` spec for DuckDB's ``read_json`` (nested STRUCTs whose leaves are ``JSON``), so each
  value keeps its JSON type, and
* a projection that casts each value to the declared type and lists, per row, the fields whose JSON
  type does not match the plan (``_type_errors``). A value of the wrong type is never coerced: a price
  sent as the string "9.99" is a tracking-plan violation, not a number.

Three optional metadata keys extend a declaration, still with no per-column code:

* ``"fallback": "context.traits.email"``: a second path, read where the first is absent or null
  (``coalesce``). For an ``object`` column both objects are merged key by key, the first path winning
  (RFC 7386 ``json_merge_patch``: recursive; a key the first path sets to null is removed). Both paths are
  type-checked: a wrong type in either is a violation.
* ``"only_if": "{type} is distinct from 'group'"``: SQL condition; the first path is read (and
  type-checked) only in rows where it is true (the fallback is always read).
* ``"derive": "coalesce({timestamp}, ...)"``: the stored value is this SQL expression instead of the value
  read. A column may carry ``derive`` without ``json`` (a value computed from other columns).

In ``only_if`` and ``derive``, ``{column}`` stands for the value READ for that JSON column of the model
(typed, after ``only_if``/``fallback``, before any ``derive``), so derivations never chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pandera.pandas as pda

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
    fallback: tuple[str, ...] | None = None
    only_if: str | None = None
    derive: str | None = None

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        return (self.path,) + ((self.fallback,) if self.fallback else ())


@dataclass(frozen=True)
class DerivedColumn:
    """A column computed from the values read for other columns (metadata ``derive`` without ``json``)."""

    name: str
    derive: str


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
def json_columns(model: type[pda.DataFrameModel]) -> tuple[JsonColumn, ...]:
    schema = model.to_schema()
    cols = []
    for name, col in schema.columns.items():
        meta = col.metadata or {}
        if "json" not in meta:
            continue
        kind = meta.get("kind") or _kind_from_dtype(str(col.dtype))
        if kind not in _KIND_JSON_TYPES:
            raise ValueError(f"{model.__name__}.{name}: unknown JSON kind {kind!r}")
        fallback = tuple(meta["fallback"].split(".")) if meta.get("fallback") else None
        cols.append(JsonColumn(name=name, path=tuple(meta["json"].split(".")), kind=kind, fallback=fallback,
                               only_if=meta.get("only_if"), derive=meta.get("derive")))
    return tuple(cols)


@lru_cache(maxsize=None)
def derived_columns(model: type[pda.DataFrameModel]) -> tuple[DerivedColumn, ...]:
    """Columns with ``derive`` and no ``json``: computed in the same projection, from the values read."""
    return tuple(
        DerivedColumn(name=name, derive=col.metadata["derive"])
        for name, col in model.to_schema().columns.items()
        if col.metadata and "derive" in col.metadata and "json" not in col.metadata
    )


def _tree(model) -> dict:
    """Nested dict of every path the plan reads; leaves are "JSON". A path that is both read whole (an object
    kept as text, e.g. `traits`) and field by field (`traits.email`) is a JSON leaf: fields of a JSON value
    are reachable with the same dotted access."""
    tree: dict = {}
    paths = sorted({p for col in json_columns(model) for p in col.paths}, key=len, reverse=True)
    for path in paths:  # longest first, so a shorter whole-object path replaces the branch it covers
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # pragma: no cover - longest-first order never nests under a leaf
                raise ValueError(f"{model.__name__}: path {'.'.join(path)} nests under a leaf")
        node[path[-1]] = "JSON"
    return _ordered(tree, model)


def _ordered(tree: dict, model) -> dict:
    """The tree with keys in the order the model first mentions them (stable SQL, readable read_json columns)."""
    order: dict[tuple[str, ...], int] = {}
    for col in json_columns(model):
        for p in col.paths:
            for i in range(1, len(p) + 1):
                order.setdefault(p[:i], len(order))

    def walk(node: dict, prefix: tuple[str, ...]) -> dict:
        keys = sorted(node, key=lambda k: order[prefix + (k,)])
        return {k: (walk(node[k], prefix + (k,)) if isinstance(node[k], dict) else node[k]) for k in keys}

    return walk(tree, ())


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _struct_type(node: dict) -> str:
    fields = []
    for key, child in node.items():
        fields.append(f"{_quote(key)} {'JSON' if child == 'JSON' else _struct_type(child)}")
    return f"STRUCT({', '.join(fields)})"


@lru_cache(maxsize=None)
def read_json_columns(model: type[pda.DataFrameModel]) -> str:
    """The `columns={...}` argument for DuckDB read_json (top-level keys -> types)."""
    items = []
    for key, child in _tree(model).items():
        typ = "JSON" if child == "JSON" else _struct_type(child)
        items.append(f"{_sql_str(key)}: {_sql_str(typ)}")
    return "{" + ", ".join(items) + "}"


@lru_cache(maxsize=None)
def json_transform_structure(model: type[pda.DataFrameModel]) -> str:
    """The structure argument for json_transform: the same shape as read_json_columns."""
    import json

    return json.dumps(_tree(model))


@lru_cache(maxsize=None)
def struct_parent_paths(model: type[pda.DataFrameModel]) -> tuple[tuple[str, ...], ...]:
    """Paths that must be JSON objects (or absent) for the structure to apply, e.g. ('context',): the STRUCT
    nodes of the structure. An object the plan also keeps whole as text (`traits`, `context.traits`) is a JSON
    leaf instead, and a non-object there is the projection's `wrong_type` on both parsing paths."""
    parents = []

    def walk(node: dict, prefix: tuple[str, ...]):
        for key, child in node.items():
            if isinstance(child, dict):
                parents.append(prefix + (key,))
                walk(child, prefix + (key,))

    walk(_tree(model), ())
    return tuple(sorted(parents))


def plan_key_duplicates_sql(model: type[pda.DataFrameModel], line: str) -> str:
    """SQL: the JSON text `line` repeats a key the tracking plan reads, in the message or in one of the plan's
    nested objects (context, context.page, ...). DuckDB's JSON reader keeps one of the values silently in
    `json_transform` and fails `read_json` (which sends the file here); keys the plan does not read are not
    stored and do not matter."""
    checks = []

    def walk(node: dict, path: tuple[str, ...]):
        keys = ", ".join(_sql_str(k) for k in node)
        jpath = _sql_str("$" + "".join("." + _quote(p) for p in path))
        plan_keys = f"list_filter(json_keys({line}, {jpath}), lambda k: k in ({keys}))"
        checks.append(f"len({plan_keys}) <> len(list_distinct({plan_keys}))")
        for key, child in node.items():
            if isinstance(child, dict):
                walk(child, path + (key,))

    walk(_tree(model), ())
    return "(" + " or ".join(f"coalesce({c}, false)" for c in checks) + ")"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _access(root: str | None, path: tuple[str, ...]) -> str:
    """Struct field access; with root=None the first path element is a top-level column."""
    parts = [_quote(p) for p in path]
    return ".".join(([root] if root else []) + parts)


# value-level reasons, each quarantined under its own code (see `typed_projection`)
VALUE_REASONS = ("wrong_type", "non_finite_number", "timestamp_without_offset", "timestamp_offset_out_of_range", "duplicate_key")


# A timestamp the plan accepts: ISO 8601 date and time with an explicit UTC offset (Z or +hh:mm / +hhmm / +hh).
ISO_WITH_OFFSET = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)$"

# ... and with the offset of a real place: Z, -12:00 .. +14:00 (minutes < 60)
ISO_STRICT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
    r"([Zz]|[+-](0[0-9]|1[01])(:?[0-5][0-9])?|[+-]12(:?00)?|\+1[23](:?[0-5][0-9])?|\+14(:?00)?)$"
)


def timestamp_problem(text_sql: str, label: str, parsed: str | None = None) -> str:
    """SQL: NULL, or '<reason>: <detail>' for a timestamp string that DuckDB parses but a strict ISO 8601
    reader would not take: no offset or a date only (`timestamp_without_offset`), or an offset no place has
    (`timestamp_offset_out_of_range`). Clean values pay one regex; the reason is worked out only for the rest.
    `parsed`: SQL of `try_cast(text_sql as timestamptz)` when the caller has it already."""
    parsed = parsed or f"try_cast({text_sql} as timestamptz)"
    without = _sql_str(f"timestamp_without_offset: {label} has no UTC offset (ISO 8601 date and time with Z or ±hh:mm required)")
    out_of_range = _sql_str(f"timestamp_offset_out_of_range: {label} has a UTC offset outside -12:00..+14:00")
    return (
        f"case when not regexp_matches({text_sql}, {_sql_str(ISO_STRICT)}) and {parsed} is not null "
        f"then case when regexp_matches({text_sql}, {_sql_str(ISO_WITH_OFFSET)}) then {out_of_range} else {without} end end"
    )


_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_BIG_EXPONENT = r"-?[0-9]+(\.[0-9]+)?[eE]\+?[0-9]{3,}"


def _non_finite_in_json(text_sql: str) -> str:
    """SQL: the JSON text holds NaN, Infinity or a number that overflows a double (1e400), outside strings.
    A cheap substring prefilter keeps the exact check (strings blanked, big exponents cast) off clean rows."""
    blanked = f"regexp_replace({text_sql}, {_sql_str(_JSON_STRING)}, '\"\"', 'g')"
    return (
        f"((contains({text_sql}, 'NaN') or contains({text_sql}, 'Infinity') or regexp_matches({text_sql}, 'e\\+?[0-9]{{3}}') "
        f"or (contains({text_sql}, 'E') and regexp_matches({text_sql}, 'E\\+?[0-9]{{3}}'))) and ("
        f"regexp_matches({blanked}, 'NaN|Infinity') or "
        f"coalesce(list_bool_or(list_transform(regexp_extract_all({blanked}, {_sql_str(_BIG_EXPONENT)}), "
        f"lambda x: not isfinite(try_cast(x as double)))), false)))"
    )


def _struct(code: str, detail_sql: str) -> str:
    """An entry of `_type_errors`: '<reason code>: <detail>'."""
    return f"({_sql_str(code + ': ')} || {detail_sql})"


class _Leaves:
    """Per JSON leaf of a projection, its `json_type`, its text and its casts, each computed once per row in an inner
    projection that the outer expressions refer to by alias (a leaf's type is otherwise parsed again by every
    expression that tests it: its value, each of its checks, each column that reads it). `None` stands for the
    single-level form, every expression spelled out in place."""

    def __init__(self):
        self.inner: dict[str, str] = {}  # alias -> SQL over the source's columns

    def _alias(self, v: str, what: str, sql: str) -> str:
        alias = _quote(f"{v}#{what}")
        self.inner.setdefault(alias, sql)
        return alias

    def jtype(self, v: str) -> str:
        return self._alias(v, "type", f"json_type({v})")

    def text(self, v: str) -> str:
        return self._alias(v, "text", f"({v} ->> '$')")

    def cast(self, v: str, sql_type: str) -> str:
        # try_cast never fails, so computing it on every row (not only where the JSON type matches) is safe
        return self._alias(v, sql_type, f"try_cast({self.text(v)} as {sql_type})")

    def select(self) -> str:
        return ", ".join(f"{sql} as {alias}" for alias, sql in self.inner.items())


class _Inline:
    """The single-level form of `_Leaves`: each expression in place."""

    def jtype(self, v: str) -> str:
        return f"json_type({v})"

    def text(self, v: str) -> str:
        return f"({v} ->> '$')"

    def cast(self, v: str, sql_type: str) -> str:
        return f"try_cast({self.text(v)} as {sql_type})"


def _path_value_and_errors(v: str, kind: str, label: str, leaves: _Leaves | _Inline | None = None) -> tuple[str, list[str]]:
    """(SQL of the typed value at JSON expression `v`, SQL of its error entries) for one path of a given kind."""
    leaves = leaves or _Inline()
    allowed = ", ".join(_sql_str(t) for t in _KIND_JSON_TYPES[kind])
    jtype = leaves.jtype(v)
    ok = f"{jtype} in ({allowed})"
    text = leaves.text(v)
    if kind == "string":
        value = f"case when {ok} then {text} end"
    elif kind == "timestamp":
        value = f"case when {ok} then {leaves.cast(v, 'timestamptz')} end"
    elif kind == "number":
        value = f"case when {ok} then {leaves.cast(v, 'double')} end"
    elif kind == "integer":
        value = f"case when {ok} then {leaves.cast(v, 'bigint')} end"
    elif kind == "boolean":
        value = f"case when {ok} then ({text})::boolean end"
    else:  # object / array kept as JSON text
        value = f"case when {ok} then ({v})::varchar end"
    errors = []
    bad = f"{jtype} is not null and {jtype} <> 'NULL' and not ({ok})"
    errors.append(f"case when {bad} then {_struct('wrong_type', _sql_str(label + ' must be ' + kind))} end")
    if kind == "timestamp":
        errors.append(
            f"case when {ok} and {leaves.cast(v, 'timestamptz')} is null "
            f"then {_struct('wrong_type', _sql_str(label + ' is not an ISO-8601 timestamp'))} end"
        )
        errors.append(f"case when {ok} then {timestamp_problem(text, label, parsed=leaves.cast(v, 'timestamptz'))} end")
    if kind == "number":
        errors.append(
            f"case when {ok} and not isfinite({leaves.cast(v, 'double')}) "
            f"then {_struct('non_finite_number', _sql_str(label + ' is not a finite number: ') + ' || ' + text)} end"
        )
    if kind == "integer":
        errors.append(
            f"case when {ok} and {leaves.cast(v, 'bigint')} is null "
            f"then {_struct('wrong_type', _sql_str(label + ' is out of range'))} end"
        )
    if kind in ("object", "array"):
        # a non-finite number anywhere inside an object kept as text (outside string values)
        errors.append(
            f"case when {ok} and {_non_finite_in_json(f'({v})::varchar')} "
            f"then {_struct('non_finite_number', _sql_str(label + ' holds a number that is not finite'))} end"
        )
    if kind == "object":
        # a key repeated at the top of an object kept as text (DuckDB reads the plan's fields inside it, e.g.
        # properties.price, from the first); deeper levels: events_ingest.flag_duplicate_keys
        errors.append(
            f"case when {ok} and list_unique(json_keys({v})) <> len(json_keys({v})) "
            f"then {_struct('duplicate_key', _sql_str(label + ' repeats a key'))} end"
        )
    return value, errors


class _Placeholders(dict):
    """`{column}` in only_if / derive -> the SQL of the value read for that column (unknown names fail loudly)."""

    def __init__(self, model, read_value):
        super().__init__()
        self.model, self.read_value = model, read_value

    def __missing__(self, key):
        return f"({self.read_value(key)})"


def _fill(model, template: str, read_value, where: str) -> str:
    try:
        return "(" + template.format_map(_Placeholders(model, read_value)) + ")"
    except KeyError as exc:  # pragma: no cover - a typo in the tracking plan
        raise ValueError(f"{model.__name__}.{where}: {{{exc.args[0]}}} is not a JSON column of the model") from None


def typed_projection(model: type[pda.DataFrameModel], root: str | None = "s",
                     leaves: _Leaves | None = None) -> tuple[list[str], str]:
    """SELECT expressions casting each JSON leaf under `root` to the model's type, plus `_type_errors`
    (details of every value problem) and `_type_reason` (the reason code of the first, one of VALUE_REASONS).

    `root` is a struct column (from read_json's row or from json_transform) whose leaves are JSON.
    Value problems: a JSON type the plan does not declare (`wrong_type`), a number that is not finite
    (`NaN`, `Infinity`, or an overflow such as `1e400`: `non_finite_number`), a timestamp without an
    explicit UTC offset or a date only (`timestamp_without_offset`), an offset outside -12:00..+14:00
    (`timestamp_offset_out_of_range`), and a key repeated in an object kept as JSON text (`duplicate_key`;
    duplicates in objects the plan reads field by field are caught while parsing, see events_ingest).

    `fallback`, `only_if` and `derive` (module doc) are applied here too, so both parsing paths share them.
    With `leaves`, the expressions refer to each leaf's type, text and casts by alias, and `leaves` collects the
    inner projection that defines them (`typed_select` puts the two together).
    """
    cols = {c.name: c for c in json_columns(model)}
    read: dict[str, str] = {}
    # the checks of each (path, kind) are emitted once, under the OR of the conditions it is read under (None:
    # always), so a path two columns read (`traits`: user traits or group traits) is not checked twice
    checked: dict[tuple[tuple[str, ...], str], list[str | None]] = {}
    resolving: set[str] = set()

    def read_value(name: str) -> str:
        if name in read:
            return read[name]
        if name not in cols:
            raise KeyError(name)
        if name in resolving:
            raise ValueError(f"{model.__name__}.{name}: only_if refers back to itself")
        resolving.add(name)
        col = cols[name]
        value, _ = _path_value_and_errors(_access(root, col.path), col.kind, ".".join(col.path), leaves)
        cond = _fill(model, col.only_if, read_value, f"{name}.only_if") if col.only_if else None
        checked.setdefault((col.path, col.kind), []).append(cond)
        if cond:
            value = f"case when {cond} then {value} end"
        if col.fallback:
            fb_value, _ = _path_value_and_errors(_access(root, col.fallback), col.kind, ".".join(col.fallback), leaves)
            checked.setdefault((col.fallback, col.kind), []).append(None)
            if col.kind == "object":
                value = (f"case when ({value}) is not null and ({fb_value}) is not null "
                         f"then json_merge_patch(({fb_value})::json, ({value})::json)::varchar else coalesce({value}, {fb_value}) end")
            else:
                value = f"coalesce({value}, {fb_value})"
        resolving.discard(name)
        read[name] = value
        return value

    select, errors = [], []
    for name, col in cols.items():
        value = read_value(name)
        if col.derive:
            value = _fill(model, col.derive, read_value, f"{name}.derive")
        select.append(f"{value} as {_quote(name)}")
    for d in derived_columns(model):
        select.append(f"{_fill(model, d.derive, read_value, f'{d.name}.derive')} as {_quote(d.name)}")
    for (path, kind), conds in checked.items():
        _, path_errors = _path_value_and_errors(_access(root, path), kind, ".".join(path), leaves)
        if None not in conds:
            either = " or ".join(dict.fromkeys(conds))
            path_errors = [f"case when {either} then {e} end" for e in path_errors]
        errors.extend(path_errors)
    # one list of "<code>: <detail>" strings; the first one's code is the row's reason (read back through
    # DuckDB's reference to an earlier select alias, so the checks are evaluated once)
    type_errors = (
        f"list_filter([{', '.join(errors)}], lambda x: x is not null) as _type_errors, "
        f"split_part(_type_errors[1], ': ', 1) as _type_reason"
    )
    return select, type_errors


def typed_select(model: type[pda.DataFrameModel], source: str, keep: tuple[str, ...] = ()) -> str:
    """SQL: `typed_projection` of the top-level JSON columns of `source` (a table expression: read_json's rows, or
    json_transform's unnested), preceded by the columns `keep` of `source`. Two levels: the inner one computes each
    leaf's type, text and casts once per row, the outer one the typed values and `_type_errors` from them (the
    same values and errors as the single-level projection, a fraction of the JSON parsing)."""
    leaves = _Leaves()
    select, type_errors = typed_projection(model, root=None, leaves=leaves)
    return f"select {''.join(k + ', ' for k in keep)}{', '.join(select)}, {type_errors} from (select *, {leaves.select()} from {source})"
