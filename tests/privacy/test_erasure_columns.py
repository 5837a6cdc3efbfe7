"""The erasure's check of a partition reads only the columns it matches on, and rewrites whole rows.

A partition is checked on its identifier columns (raw, lake) or the quarantined text, and read whole only when it
holds a subject: every other column and row must come back untouched, whatever columns a partition lacks, and a
handler naming a column twice must not break the read."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from personalization_assets.core.pseudonymize import Pseudonymizer
from personalization_assets.core.storage import LakeStorage
from personalization_assets.privacy import erasure


def test_the_check_reads_the_match_columns_and_the_rewrite_keeps_every_other_column(tmp_path, monkeypatch):
    pz = Pseudonymizer(keys_json=json.dumps({"1": "ab" * 32}))

    def p(value, kind="id"):
        return pz.pseudonymize_values([value], kind)[0]

    subject = {p("u1"), p("a@x.com", "email")}
    lake = LakeStorage(url=str(tmp_path / "lake"))
    con = duckdb.connect()
    lake.write_table("consented", "events", pa.table({"user_pseudonym": [p("u1"), p("u2"), None], "lst": pa.array([[p("zz")], None, [p("u1")]]),
                                                      "other": [1, 2, 3]}), partition={"date": "d1"})
    lake.write_table("consented", "events", pa.table({"lst": pa.array([[p("u2"), None], []], pa.list_(pa.string())), "other": [4, 5]}),
                     partition={"date": "d2"})
    lake.write_table("consented", "events", pa.table({"other": [6, 7]}), partition={"date": "d3"})
    lake.write_table("raw", "events", pa.table({"user_id": ["u1", "u3"], "anonymous_id": [None, "a9"], "payload": ["x", "y"]}),
                     partition={"date": "d1"})
    lake.write_table("raw", "events", pa.table({"trait_email": [" A@X.com", "b@y.com"], "payload": ["x", "y"]}), partition={"date": "d2"})
    lake.write_table("raw", "events_quarantine", pa.table({"reason": ["bad"], "raw": ['{"userId":"u1"}']}), partition={"date": "d1"})
    lake.write_table("raw", "events_quarantine", pa.table({"original_text": ['{"userId":"u1"}', "ok"], "reason": ["bad", "bad"]}),
                     partition={"date": "d2"})
    handlers = [
        ("consented", "events", {"kind": "lake", "layer": "consented", "table": "events", "partitioned": True,
                                 "columns": ["user_pseudonym", "lst", "lst"]}),  # a column named twice
        ("raw", "events", {"kind": "raw", "table": "events", "partitioned": True,
                           "columns": {"user_id": "id", "anonymous_id": "id", "trait_email": "email"}}),
        ("raw", "events_quarantine", {"kind": "quarantine", "table": "events_quarantine", "partitioned": True}),
    ]
    reads = []
    real = LakeStorage.read_table

    def spy(self, layer, table, partition=None, columns=None):
        reads.append((f"{layer}/{table}", (partition or {}).get("date"), tuple(columns) if columns is not None else None))
        return real(self, layer, table, partition, columns)

    monkeypatch.setattr(LakeStorage, "read_table", spy)
    removed = {}
    for layer, name, h in handlers:
        scan = erasure.erase_from_table(lake, con, pz, erasure.Target(f"{layer}/{name}", h), h, subject, subject, None)
        removed[f"{layer}/{name}"] = (scan.removed, scan.residual)
    monkeypatch.undo()
    assert removed == {"consented/events": (2, 0), "raw/events": (2, 0), "raw/events_quarantine": (1, 0)}

    def rows(layer, name, date):
        return lake.read_table(layer, name, {"date": date}).to_pylist()

    assert rows("consented", "events", "d1") == [{"user_pseudonym": p("u2"), "lst": None, "other": 2}]
    assert rows("consented", "events", "d2") == [{"lst": [p("u2"), None], "other": 4}, {"lst": [], "other": 5}]
    assert rows("consented", "events", "d3") == [{"other": 6}, {"other": 7}]
    assert rows("raw", "events", "d1") == [{"user_id": "u3", "anonymous_id": "a9", "payload": "y"}]
    assert rows("raw", "events", "d2") == [{"trait_email": "b@y.com", "payload": "y"}]
    assert rows("raw", "events_quarantine", "d1") == [{"reason": "bad", "raw": '{"userId":"u1"}'}]  # no text to match: kept
    assert rows("raw", "events_quarantine", "d2") == [{"original_text": "ok", "reason": "bad"}]
    # a partition without a subject was read on its match columns only; whole rows only where a subject was found
    assert ("consented/events", "d2", ("lst",)) in reads and ("consented/events", "d3", ()) in reads
    assert ("raw/events_quarantine", "d1", ()) in reads
    whole = sorted((t, d) for t, d, cols in reads if cols is None)
    assert whole == [("consented/events", "d1"), ("raw/events", "d1"), ("raw/events", "d2"), ("raw/events_quarantine", "d2")], whole
