"""Raw ingestion in focused modules (landing_files, parsing, validation, dedup, quarantine) with one statement of
the shared pieces: the keep-the-first-copy dedup and the validation schema building serve events, the reference
sources and the incremental hourly ingestion alike; no module reaches into another's private names."""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from personalization_assets.core.tracking_plan import RawContent, RawEvent
from personalization_assets.raw import dedup, events_ingest, validation

pytestmark = pytest.mark.unit

RAW = Path(events_ingest.__file__).parent


def test_no_raw_module_imports_another_modules_private_names():
    """reference_ingest.py imported `_order_like_model` and `_empty_typed` from events_ingest.py."""
    offenders = []
    for path in sorted(RAW.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("personalization_assets."):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "events_ingest" and node.attr.startswith("_"):
                offenders.append(f"{path.name}: events_ingest.{node.attr}")
    assert offenders == []


def test_the_keep_first_copy_sql_is_stated_once():
    """The dedup window (row_number ... where rn > 1) lives in raw/dedup.py only (it was in three modules)."""
    holders = sorted(p.name for p in RAW.glob("*.py") if "where rn > 1" in " ".join(p.read_text().split()))
    assert holders == ["dedup.py"]


def _table(rows):
    return pa.Table.from_pylist(rows, schema=pa.schema([("k", pa.string()), ("hour", pa.int64()), ("received_at", pa.int64()),
                                                        ("source_file", pa.string()), ("line_no", pa.int64())]))


def test_duplicate_rows_keeps_the_first_copy_per_key_and_names_it():
    t = _table([
        {"k": "a", "hour": 1, "received_at": 5, "source_file": "f2", "line_no": 1},
        {"k": "a", "hour": 1, "received_at": 3, "source_file": "f9", "line_no": 7},  # earliest: kept
        {"k": "a", "hour": 2, "received_at": 9, "source_file": "f1", "line_no": 1},  # another hour: kept
        {"k": "b", "hour": 1, "received_at": 1, "source_file": "f1", "line_no": 2},
        {"k": "a", "hour": 1, "received_at": 3, "source_file": "f9", "line_no": 9},  # same time: file, then line
    ])
    con = duckdb.connect()
    dups = dedup.duplicate_rows(con, t, ["hour", "k"], ["received_at", "source_file", "line_no"])
    got = sorted((d["_pos"], d["kept"]) for d in dups.to_pylist())
    assert got == [(0, "f9:7"), (4, "f9:7")]
    kept = dedup.drop_positions(t, dups["_pos"])
    assert kept.column("line_no").to_pylist() == [7, 1, 2]
    assert dedup.drop_positions(t, pa.array([], pa.int64())) is t


def test_events_and_reference_sources_share_the_validation_schema_building():
    events = validation.event_schema(30, 1440)
    assert set(events.columns) == {c for c in RawEvent.to_schema().columns if c not in validation.NOT_VALIDATED_PER_ROW} | {"_type_errors", "_type_reason"}
    assert [c.name for c in events.checks][-2:] == ["timestamp_before_horizon", "timestamp_in_future"]
    assert all(events.columns[c].dtype is None for c in events.columns if not c.startswith("_"))
    catalog = validation.validation_schema(RawContent, exclude=("tags", "source_file"))
    assert "tags" not in catalog.columns and "_type_reason" in catalog.columns
    assert {c.name for c in catalog.checks} >= set(validation.VALUE_ERRORS)
    assert str(catalog.columns["published_at"].dtype) == str(RawContent.to_schema().columns["published_at"].dtype)
    model_checks = len(RawEvent.to_schema().checks)
    assert len(validation.validation_schema(RawEvent).checks) == model_checks + len(validation.VALUE_ERRORS)
    assert len(RawEvent.to_schema().checks) == model_checks  # the model's own schema is not mutated


def test_events_ingest_keeps_its_public_names():
    names = ["BOM", "MAX_QUARANTINE_BYTES", "NOT_VALIDATED_PER_ROW", "QUARANTINE_SCHEMA", "SUBJECT_COLUMNS", "VALUE_ERRORS",
             "LandedFile", "ParsedFile", "PartitionResult", "RawEvent", "Reject", "build_quarantine", "decompress",
             "event_schema", "flag_duplicate_keys", "index_lines", "ingest_event_batch", "ingest_event_files", "is_clean",
             "load_file", "parse_clean_files", "parse_file", "parse_validate", "semantic_failures", "suppressed_mask",
             "validate_rows", "value_checks", "with_ingestion_columns"]
    assert [n for n in names if not hasattr(events_ingest, n)] == []


def test_a_batch_of_partitions_dedups_and_slices_per_hour():
    """Duplicates across partitions are distinct (dedup is per landing hour); each partition gets its own rows."""
    def line(mid, hour):
        return ('{"type":"track","event":"E","messageId":"%s","anonymousId":"a1","timestamp":"2026-11-28T%02d:10:00Z",'
                '"receivedAt":"2026-11-28T%02d:10:00Z"}' % (mid, hour, hour)).encode()

    h12, h13 = (datetime(2026, 11, 28, h, tzinfo=timezone.utc) for h in (12, 13))
    f12 = events_ingest.load_file("events/h12.jsonl", b"\n".join([line("m1", 12), line("m1", 12), line("m2", 12)]) + b"\n")
    f13 = events_ingest.load_file("events/h13.jsonl", line("m1", 13) + b"\n")
    out = events_ingest.ingest_event_batch(duckdb.connect(), [(h13, [(f13, None)]), (h12, [(f12, None)])], 30, 1440, 1 << 20)
    assert [r.raw["message_id"].to_pylist() for r in out] == [["m1"], ["m1", "m2"]]
    assert out[1].quarantine["reason"].to_pylist() == ["duplicate_message_id"]
    assert out[1].quarantine["detail"].to_pylist() == ["messageId m1 already kept from events/h12.jsonl:1"]
    assert [r.records_read for r in out] == [1, 3]
