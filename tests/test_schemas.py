"""One source per schema: the pandera models generate the Arrow schemas the lake writes (core/schemas.py), the
warehouse's column types and the test fixtures' types; the dbt sources' column lists are compared with them.

Each guarantee is shown against a planted mismatch: a column added to (or retyped in) a model reaches the
schema built from it, and a dbt source column list that drifts from the models is reported."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pandera.pandas as pda
import pyarrow as pa
import pytest
import yaml
from pandera.typing import Series

from personalization_assets.core import tracking_plan
from personalization_assets.core.schemas import arrow_schema
from personalization_assets.features import models as feature_models
from personalization_assets.privacy import models as privacy_models

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DBT_SOURCES = ROOT / "dbt" / "models" / "staging" / "__sources.yml"


def _fresh_copy(module: str, monkeypatch) -> object:
    """Execute `module` again under another name (the real module stays untouched), so it picks up a model
    monkeypatched on its models module."""
    origin = importlib.util.find_spec(module).origin
    name = f"_fresh_{module.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(name, origin)
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, copy)
    spec.loader.exec_module(copy)
    return copy


# (module holding the schema, its attribute, models module, model name)
LAKE_SCHEMAS = [
    ("personalization_assets.privacy.consent", "LEDGER_SCHEMA", privacy_models, "ConsentLedgerRow"),
    ("personalization_assets.privacy.consent", "STATE_SCHEMA", privacy_models, "ConsentState"),
    ("personalization_assets.consented.transform", "CONSENTED_EVENT_SCHEMA", privacy_models, "ConsentedEvent"),
    ("personalization_assets.privacy.identity", "IDENTITY_SCHEMA", privacy_models, "IdentityLink"),
    ("personalization_assets.raw.quarantine", "QUARANTINE_SCHEMA", tracking_plan, "Quarantine"),
    ("personalization_assets.privacy.assets", "RAW_EVENT_SCHEMA", tracking_plan, "RawEvent"),
    ("personalization_assets.privacy.assets", "RAW_CRM_SCHEMA", tracking_plan, "RawCrmProfile"),
    ("personalization_assets.privacy.assets", "RAW_REQUEST_SCHEMA", tracking_plan, "RawPrivacyRequest"),
]


@pytest.mark.parametrize("module, attr, models, model", LAKE_SCHEMAS, ids=[a for _, a, _, _ in LAKE_SCHEMAS])
def test_lake_schemas_are_the_models(module, attr, models, model):
    assert getattr(importlib.import_module(module), attr) == arrow_schema(getattr(models, model))


@pytest.mark.parametrize("module, attr, models, model", LAKE_SCHEMAS, ids=[a for _, a, _, _ in LAKE_SCHEMAS])
def test_a_column_added_to_a_model_reaches_its_lake_schema(module, attr, models, model, monkeypatch):
    """A hand-written copy next to the model would not follow: plant a column on the model only."""
    importlib.import_module(module)  # the real module (and what it imports) loads before the plant
    base = getattr(models, model)
    planted = type(model, (base,), {"__annotations__": {"planted_column": Series[pd.Int64Dtype]}, "planted_column": pda.Field(nullable=True)})
    monkeypatch.setattr(models, model, planted)
    schema = getattr(_fresh_copy(module, monkeypatch), attr)
    assert schema.field("planted_column").type == pa.int64()
    assert schema.names == [*arrow_schema(base).names, "planted_column"]


def test_the_warehouse_column_types_follow_the_models(monkeypatch):
    """warehouse FEATURE_TABLES (the Snowflake columns) take their types from the models: retype a model column."""
    real = importlib.import_module("personalization_assets.warehouse.loader")  # loads before the plant
    base = feature_models.FEATURE_MODELS["engagement"]
    retyped = type("Engagement", (base,), {"__annotations__": {"preferred_hour": Series[str]}, "preferred_hour": pda.Field()})
    monkeypatch.setitem(feature_models.FEATURE_MODELS, "engagement", retyped)
    loader = _fresh_copy("personalization_assets.warehouse.loader", monkeypatch)
    assert dict(loader.FEATURE_TABLES["engagement"])["preferred_hour"] == "varchar"
    assert dict(real.FEATURE_TABLES["engagement"])["preferred_hour"] == "bigint"


def test_warehouse_columns_are_model_columns_with_one_stated_exception():
    from personalization_assets.warehouse.loader import (
        FEATURE_TABLES,
        SNOWFLAKE_TYPE_OVERRIDES,
        SNOWFLAKE_TYPES,
    )

    for table, columns in FEATURE_TABLES.items():
        schema = arrow_schema(feature_models.FEATURE_MODELS[table])
        names = [c for c, _ in columns]
        assert names == [n for n in schema.names if n in names], f"{table}: not in the model's order"
        for column, sf_type in columns:
            expected = SNOWFLAKE_TYPE_OVERRIDES.get((table, column)) or SNOWFLAKE_TYPES[schema.field(column).type]
            assert sf_type == expected, (table, column)
    assert SNOWFLAKE_TYPE_OVERRIDES == {("user_rfm", "recency_days"): "double"}


def dbt_source_mismatches(sources_yml: str) -> list[str]:
    """Every dbt source table lists exactly the columns the warehouse loads from its pandera model, in order."""
    from personalization_assets.warehouse.loader import FEATURE_TABLES

    problems = []
    for source in yaml.safe_load(sources_yml)["sources"]:
        for table in source["tables"]:
            listed = [c["name"] for c in table.get("columns") or []]
            name = table["name"]
            model = feature_models.FEATURE_MODELS.get(name)
            if model is None:
                problems.append(f"{source['name']}.{name}: no pandera model")
                continue
            loaded = [c for c, _ in FEATURE_TABLES[name]]
            unknown = [c for c in listed if c not in model.to_schema().columns]
            if unknown:
                problems.append(f"{source['name']}.{name}: {unknown} are not columns of {model.__name__}")
            if listed != loaded:
                problems.append(f"{source['name']}.{name}: lists {listed}, the warehouse loads {loaded}")
    return problems


def test_dbt_source_column_lists_match_the_models():
    assert dbt_source_mismatches(DBT_SOURCES.read_text()) == []


@pytest.mark.parametrize(
    "old, new, reported",
    [
        ("          - name: recency_days\n", "          - name: recency_dayz\n", "['recency_dayz'] are not columns of UserRfm"),
        ("          - name: top_category\n", "          - name: decayed_weight\n", "content_affinity: lists"),
        # a table whose column list is dropped is reported, not skipped
        ('["features", "engagement"]\n        columns:\n', '["features", "engagement"]\n        colums:\n', "engagement: lists []"),
    ],
)
def test_the_dbt_source_comparison_catches_a_planted_mismatch(old, new, reported):
    text = DBT_SOURCES.read_text()
    assert text.count(old) == 1
    problems = dbt_source_mismatches(text.replace(old, new))
    assert any(reported in p for p in problems), problems


def test_fixture_tables_are_typed_by_the_models():
    from tests.features.feature_fixtures import consent_table, events_table
    from tests.warehouse.warehouse_fixtures import feature_tables

    for table, data in feature_tables().items():
        assert data.schema == arrow_schema(feature_models.FEATURE_MODELS[table]), table
    assert events_table([]).schema == arrow_schema(privacy_models.ConsentedEvent, nullable="model")
    assert consent_table([]).schema == arrow_schema(privacy_models.ConsentState, nullable="model")


def test_a_fixture_that_drifts_from_its_model_fails(monkeypatch):
    """The warehouse fixtures take their types and column set from the models: a planted model column breaks them."""
    from tests.warehouse import warehouse_fixtures

    base = feature_models.FEATURE_MODELS["sessions"]
    planted = type("Session", (base,), {"__annotations__": {"planted_column": Series[str]}, "planted_column": pda.Field()})
    monkeypatch.setitem(feature_models.FEATURE_MODELS, "sessions", planted)
    with pytest.raises(ValueError, match=r"fixture sessions: columns \['planted_column'\] differ from Session"):
        warehouse_fixtures.feature_tables()


def test_nullability_is_the_one_stated_difference():
    """Lake files are all-nullable (the pandera check rejects a null, not the Parquet schema); `nullable="model"`
    takes the model's flags. Types and names are the same either way."""
    model = privacy_models.ConsentLedgerRow
    lake, strict = arrow_schema(model), arrow_schema(model, nullable="model")
    assert all(f.nullable for f in lake)
    assert [f.nullable for f in strict] == [bool(c.nullable) for c in model.to_schema().columns.values()]
    assert not strict.field("seq").nullable and strict.field("jurisdiction_source").nullable
    assert [(f.name, f.type) for f in lake] == [(f.name, f.type) for f in strict]


def test_one_pandera_to_arrow_converter():
    """checks/pandera_checks.py and features/inputs.py each had their own; core/schemas.py is the only one."""
    from personalization_assets.checks import pandera_checks
    from personalization_assets.features import inputs

    for module in (pandera_checks, inputs):
        assert getattr(module, "arrow_schema", arrow_schema) is arrow_schema, module.__name__


def test_an_unmapped_dtype_names_the_model_column_and_the_fix():
    class Odd(pda.DataFrameModel):
        blob: Series[object]

    with pytest.raises(TypeError, match=r"Odd\.blob: no Arrow type for pandera dtype object; declare it in core/schemas.py"):
        arrow_schema(Odd)
