"""Arrow schemas generated from the pandera models: each table's schema is declared once, on its model.

The lake writes, casts and registers empty tables with `arrow_schema(Model)`; the dbt sources' column lists
and the test fixtures' types are checked against the same models (tests/test_schemas.py). Where an Arrow
schema differs from its pandera model, the difference is stated here and nowhere else:

- dtypes: `PANDERA_TO_ARROW` (pandera's `datetime64[us, UTC]` is Arrow `timestamp[us, tz=UTC]`; the nullable
  pandas extension types `Int64`/`Float64`/`boolean` are plain Arrow types, every Arrow type being nullable);
- `object` columns (pandera checks them as Python objects): `OBJECT_COLUMN_TYPES` declares their Arrow type;
- nullability: by default every Arrow field is nullable, whatever the model says. The lake's Parquet files
  have always been written that way (the pandera check, not the Parquet schema, rejects a null), and a
  file's schema must stay equal to the files already written for `concat_tables` and DuckDB unions.
  `nullable="model"` takes the model's flags instead (the features layer's empty inputs, test fixtures).
"""

from __future__ import annotations

from typing import Literal

import pandera.pandas as pda
import pyarrow as pa

PANDERA_TO_ARROW: dict[str, pa.DataType] = {
    "str": pa.string(),
    "string": pa.string(),
    "datetime64[us, UTC]": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "Float64": pa.float64(),
    "float64": pa.float64(),
    "Int64": pa.int64(),
    "int64": pa.int64(),
    "boolean": pa.bool_(),
    "bool": pa.bool_(),
}
# columns whose pandera dtype is `object`, by column name
OBJECT_COLUMN_TYPES: dict[str, pa.DataType] = {
    "purposes": pa.list_(pa.string()),  # consented/events: the purposes an event was kept for
    "original_bytes": pa.binary(),  # quarantine: a rejected record's exact bytes
}


def arrow_type(model: type[pda.DataFrameModel], name: str, dtype: object) -> pa.DataType:
    d = str(dtype)
    if d == "object" and name in OBJECT_COLUMN_TYPES:
        return OBJECT_COLUMN_TYPES[name]
    if d in PANDERA_TO_ARROW:
        return PANDERA_TO_ARROW[d]
    raise TypeError(
        f"{model.__name__}.{name}: no Arrow type for pandera dtype {d}; declare it in core/schemas.py "
        "(PANDERA_TO_ARROW, or OBJECT_COLUMN_TYPES for an object column) or pass an override"
    )


def arrow_schema(
    model: type[pda.DataFrameModel],
    overrides: dict[str, pa.DataType] | None = None,
    *,
    nullable: bool | Literal["model"] = True,
) -> pa.Schema:
    """The Arrow schema of a pandera model, columns in the model's order. `overrides` (column -> Arrow type)
    is for a caller that stores a column differently from the model; none does today."""
    overrides = overrides or {}
    fields = []
    for name, col in model.to_schema().columns.items():
        typ = overrides[name] if name in overrides else arrow_type(model, name, col.dtype)
        fields.append(pa.field(name, typ, nullable=bool(col.nullable) if nullable == "model" else nullable))
    return pa.schema(fields)
