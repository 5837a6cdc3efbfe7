"""Arrow schemas derived from pandera models: the empty input tables and the test fixtures' types.

The lake views of `consented/events` and `privacy/consent_state` are registered with these schemas
when the tables have no data yet, so a feature build on an empty lake writes empty feature tables.
"""

from __future__ import annotations

import pandera.pandas as pa
import pyarrow as pa_arrow

from personalization_assets.privacy.models import ConsentedEvent, ConsentState

_TYPES = {
    "str": pa_arrow.string(),
    "datetime64[us, UTC]": pa_arrow.timestamp("us", tz="UTC"),
    "Float64": pa_arrow.float64(),
    "float64": pa_arrow.float64(),
    "Int64": pa_arrow.int64(),
    "int64": pa_arrow.int64(),
    "boolean": pa_arrow.bool_(),
    "bool": pa_arrow.bool_(),
}
# columns whose pandera dtype is `object`: their Arrow type is declared here
_OBJECT_COLUMNS = {"purposes": pa_arrow.list_(pa_arrow.string())}


def arrow_schema(model: type[pa.DataFrameModel]) -> pa_arrow.Schema:
    fields = []
    for name, col in model.to_schema().columns.items():
        dtype = str(col.dtype)
        if name in _OBJECT_COLUMNS:
            arrow_type = _OBJECT_COLUMNS[name]
        elif dtype in _TYPES:
            arrow_type = _TYPES[dtype]
        else:
            raise TypeError(f"{model.__name__}.{name}: no Arrow type for pandera dtype {dtype}")
        fields.append(pa_arrow.field(name, arrow_type, nullable=bool(col.nullable)))
    return pa_arrow.schema(fields)


def consented_events_schema() -> pa_arrow.Schema:
    return arrow_schema(ConsentedEvent)


def consent_state_schema() -> pa_arrow.Schema:
    return arrow_schema(ConsentState)
