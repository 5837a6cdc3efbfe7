"""Building landing objects the way the CDPs' S3 destinations write them, and reading a lake back whole.

Shared by tests/incremental (incremental == full refresh) and tests/raw/test_cdp_layouts_e2e.py.

Layouts (issue #13; env PERSONALIZATION_EVENTS_LAYOUT, default `auto` = every layout found):
  hive        events/date=YYYY-MM-DD/hour=HH/<name>.jsonl[.gz]
  Segment     segment-logs/<source-id>/<received day as epoch ms>/<file>.gz
  RudderStack rudder-logs/<source-id>/<YYYY-MM-DD or MM-DD-YYYY>/<unix-ts>.<source-id>.<uuid>.json.gz
"""

from __future__ import annotations

import gzip
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def ts(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value).astimezone(UTC)


def iso(value: datetime) -> str:
    """The CDPs' wire format: UTC, milliseconds, `Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def hour_partition(received_at: str | datetime) -> str:
    """The lake partition folder of a message received at `received_at`: `date=D/hour=H`."""
    t = ts(received_at)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def ndjson(messages: list[dict]) -> bytes:
    return b"".join(json.dumps(m, separators=(",", ":")).encode() + b"\n" for m in messages)


def gz(data: bytes) -> bytes:
    # mtime=0: the same messages always give the same bytes (a re-delivery is byte-identical)
    return gzip.compress(data, compresslevel=6, mtime=0)


def corrupt_gzip(good_lines: bytes, damaged_lines: bytes) -> bytes:
    """Two gzip members: the first decodes whole (its lines are salvageable), the second's deflate data is
    damaged (first block header byte = 0xFF: BTYPE 11, an invalid block type), so zlib raises mid-stream."""
    second = bytearray(gz(damaged_lines))
    second[10] = 0xFF  # byte 10 = first byte after the 10-byte gzip header (no FNAME with mtime=0 compress)
    return gz(good_lines) + bytes(second)


def day_epoch_ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def hive_key(received_at: str | datetime, name: str) -> str:
    t = ts(received_at)
    return f"events/date={t:%Y-%m-%d}/hour={t:%H}/{name}"


def segment_key(source_id: str, received_day: str, name: str) -> str:
    return f"segment-logs/{source_id}/{day_epoch_ms(received_day)}/{name}"


def rudder_key(source_id: str, received_at: str | datetime, date_format: str = "%Y-%m-%d", uid: str | None = None) -> str:
    t = ts(received_at)
    unix = int(t.timestamp())
    return f"rudder-logs/{source_id}/{t.strftime(date_format)}/{unix}.{source_id}.{uid or uuid.uuid4()}.json.gz"


# ------------------------------------------------------------------------------------------------
# spec messages, as the CDP servers store them


def message(kind: str, message_id: str, received_at: str, *, user_id: str | None = None, anonymous_id: str | None = None,
            timestamp: str | None = None, country: str = "DE", **fields) -> dict:
    """A Segment-spec message as a CDP stores it (receivedAt stamped by the server, sentAt shortly before)."""
    rec = ts(received_at)
    ev = ts(timestamp) if timestamp else rec - timedelta(seconds=2)
    m = {
        "messageId": message_id,
        "type": kind,
        "timestamp": iso(ev),
        "originalTimestamp": iso(ev),
        "sentAt": iso(rec - timedelta(seconds=1)),
        "receivedAt": iso(rec),
        "anonymousId": anonymous_id,
        "userId": user_id,
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics-python", "version": "2.4.0"}, "locale": "de-DE",
                    "location": {"country": country}, "gpc": False},
    }
    if kind in ("page", "screen") and "name" not in fields:
        fields["name"] = "Article"
    for k, v in fields.items():
        if k == "context":
            m["context"].update(v)
        else:
            m[k] = v
    return m


def page(message_id: str, received_at: str, content: int = 1, **kw) -> dict:
    kw.setdefault("properties", {"content_id": f"tech-{content:05d}", "category": "tech", "dwell_ms": 1500})
    kw.setdefault("context", {"page": {"url": f"https://www.example.com/tech/item-{content:05d}", "path": f"/tech/item-{content:05d}"}})
    return message("page", message_id, received_at, **kw)


def consent(message_id: str, received_at: str, granted: bool, **kw) -> dict:
    """`Segment Consent Preference Updated` with every category set to `granted`."""
    cats = {c: granted for c in ("functional", "analytics", "performance", "personalization", "advertising", "marketing", "data_sharing")}
    ctx = {**kw.pop("context", {}), "consent": {"categoryPreferences": cats}}
    return message("track", message_id, received_at, event="Segment Consent Preference Updated", properties={}, context=ctx, **kw)


def identify(message_id: str, received_at: str, user_id: str, anonymous_id: str | None = None, email: str | None = None, **kw) -> dict:
    traits = {"plan": "free", **({"email": email} if email else {})}
    return message("identify", message_id, received_at, user_id=user_id, anonymous_id=anonymous_id, traits=traits, **kw)


# ------------------------------------------------------------------------------------------------
# reading a lake back: every Parquet file of a table, whatever the writer's file naming


LAYERS = ("raw", "privacy", "consented", "features")


def _is_data_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith(("_tmp", ".", "_"))


def lake_files(fs: pafs.FileSystem, root: str) -> dict[str, list[tuple[str, str]]]:
    """table ('layer/name') -> [(partition folder relative to the table, full path)] for every data file."""
    out: dict[str, list[tuple[str, str]]] = {}
    root = root.rstrip("/")
    for layer in LAYERS:
        sel = pafs.FileSelector(f"{root}/{layer}", recursive=True, allow_not_found=True)
        for info in fs.get_file_info(sel):
            if info.type != pafs.FileType.File or not _is_data_file(info.base_name):
                continue
            rel = info.path[len(root) + 1 :]
            parts = rel.split("/")
            table = "/".join(parts[:2])
            partition = "/".join(p for p in parts[2:-1] if "=" in p)
            out.setdefault(table, []).append((partition, info.path))
    return out


def read_lake_table(fs: pafs.FileSystem, root: str, table: str) -> pa.Table:
    """Every row of a lake table with its partition folder in column `_partition` ('' if unpartitioned)."""
    files = lake_files(fs, root).get(table, [])
    parts = []
    for partition, path in sorted(files):
        t = pq.read_table(path, filesystem=fs)
        parts.append(t.append_column("_partition", pa.array([partition] * t.num_rows, pa.string())))
    if not parts:
        return pa.table({"_partition": pa.array([], pa.string())})
    return pa.concat_tables(parts, promote_options="permissive")


def lake_fs(lake_resource) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root) of the `lake` resource of the definitions (local directory or S3 bucket/prefix)."""
    return lake_resource.filesystem(), lake_resource.full_path("").rstrip("/")


def canonical(value):
    """A hashable, order-insensitive form of a cell: lists -> tuples, dicts -> sorted items, floats rounded to
    10 significant digits (aggregates summed in another order differ in the last bits, nothing else)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return tuple(sorted((k, canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def rows(table: pa.Table, drop: tuple[str, ...] = ()) -> list[tuple]:
    """The table's rows as sorted canonical tuples over its sorted column names (minus `drop`)."""
    cols = sorted(c for c in table.column_names if c not in drop)
    data = table.select(cols).to_pylist() if cols else []
    return sorted((tuple(canonical(r[c]) for c in cols) for r in data), key=repr)


def write_tree(dest: Path, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        p = dest / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
