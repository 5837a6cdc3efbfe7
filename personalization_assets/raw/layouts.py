"""Native CDP landing layouts: every object under the landing root, classified (pure, no Dagster).

The landing root holds event batches in one or more *layouts* beside the reference sources:

* ``hive`` (our collector and the demo generator): ``events/date=YYYY-MM-DD/hour=HH/<name>``
* ``segment-s3`` (Segment's S3 destination): ``segment-logs/<source-id>/<received-day>/<file>.gz``, where
  ``received-day`` is the UTC day as a Unix timestamp in milliseconds
* ``rudderstack-s3`` (RudderStack's S3 destination): ``rudder-logs/<source-id>/<date>/<unix-ts>.<source-id>.<uuid>.json.gz``,
  ``date`` = ``YYYY-MM-DD`` (default) or ``MM-DD-YYYY`` (older destinations)
* reference sources: ``crm/**`` (.csv, .csv.gz), ``catalog/**`` and ``privacy_requests/**`` (NDJSON)

``list_landing`` lists EVERY object (names starting with ``.`` or ``_`` included) and ``plan_landing`` puts
each in exactly one bucket: events to read, reference files to read, rejected (quarantined with a reason),
or reserved (counted, neither read nor quarantined: ``_generator/**`` and the collector's in-progress
``_tmp-*`` files inside hive hour folders). Nothing is skipped silently. docs/LANDING_CONTRACT.md is the
human version of these rules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from personalization_assets.settings import EVENT_LAYOUTS, validate_layout  # noqa: F401  (the layouts a setting may name)

EVENT_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz", ".gz")  # NDJSON; .gz = gzipped NDJSON (Segment)
REFERENCE_SUFFIXES = {
    "crm": (".csv", ".csv.gz"),
    "catalog": (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"),
    "privacy_requests": (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"),
}
LAYOUT_ROOTS = {"hive": "events", "segment-s3": "segment-logs", "rudderstack-s3": "rudder-logs"}
HIVE_SOURCE_ID = "hive"
RESERVED_ROOT = "_generator"  # the demo generator's own manifest
TMP_PREFIX = "_tmp-"  # the collector's in-progress files (LandingZone.write_durable)
SETTING = "PERSONALIZATION_EVENTS_LAYOUT"

UNSUPPORTED_FILE = "unsupported_file"
OUTSIDE_LAYOUT = "outside_layout"
LAYOUT_DISABLED = "layout_disabled"

DAY_MS = 86_400_000
_MIN_DAY = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_DAY = datetime(2100, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_HIVE_DATE = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_HIVE_HOUR = re.compile(r"hour=(\d{2})")
_LOOSE_HOUR = re.compile(r"hour=(\d{1,2})")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_US_DATE = re.compile(r"(\d{2})-(\d{2})-(\d{4})")
_RUDDER_TS = re.compile(r"(\d{9,13})\.")

GRAMMAR = {
    "hive": "events/date=YYYY-MM-DD/hour=HH/<name>",
    "segment-s3": "segment-logs/<source-id>/<received-day: UTC day start in Unix ms>/<file>.gz",
    "rudderstack-s3": "rudder-logs/<source-id>/<YYYY-MM-DD or MM-DD-YYYY>/<unix-ts>.<source-id>.<uuid>.json.gz",
}


@dataclass(frozen=True)
class LandingObject:
    path: str  # relative to the landing root, '/'-separated
    size: int
    mtime_ns: int
    etag: str | None = None  # S3 ETag (None locally)

    @property
    def fingerprint(self) -> str:
        """Identity of the object's bytes for the ingestion manifest: the ETag when known, else size:mtime."""
        return self.etag if self.etag else f"{self.size}:{self.mtime_ns}"


@dataclass(frozen=True)
class EventObject:
    obj: LandingObject
    layout: str  # "hive" | "segment-s3" | "rudderstack-s3"
    source_id: str  # CDP source id folder; hive objects: "hive"
    object_hour: datetime  # tz-aware UTC hour the layout files the object under


@dataclass(frozen=True)
class RejectedObject:
    obj: LandingObject
    source: str  # "events" | "crm" | "catalog" | "privacy_requests" | "landing"
    reason: str  # "unsupported_file" | "outside_layout" | "layout_disabled"
    detail: str
    object_hour: datetime


@dataclass
class LandingPlan:
    events: list[EventObject] = field(default_factory=list)
    reference: dict[str, list[LandingObject]] = field(default_factory=lambda: {k: [] for k in REFERENCE_SUFFIXES})
    rejected: list[RejectedObject] = field(default_factory=list)
    reserved: list[LandingObject] = field(default_factory=list)

    def layouts_found(self) -> list[str]:
        return sorted({e.layout for e in self.events})


# ------------------------------------------------------------------------------------------- listing


def list_landing(landing, under: str = "") -> list[LandingObject]:
    """Every object under the landing root (names starting with '.' or '_' included), sorted by path.
    `under`: only that top-level folder (e.g. "crm"); paths stay relative to the landing root.

    S3: ListObjectsV2 through the store's boto3 client, which gives each object's ETag (pyarrow's listing
    does not). Local: a directory walk with nanosecond mtimes. Folder markers (keys ending in '/', empty)
    are folders, not objects."""
    if landing.is_s3:
        bucket, _, prefix = landing.root.partition("/")
        prefix = prefix.strip("/")
        prefix = prefix + "/" if prefix else ""
        under = under.strip("/")
        out = []
        paginator = landing.s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix + (under + "/" if under else "")):
            for item in page.get("Contents", ()):
                key = item["Key"]
                rel = key[len(prefix):]
                if not rel or (rel.endswith("/") and not item.get("Size")):
                    continue
                modified = item.get("LastModified")
                mtime_ns = int(modified.timestamp() * 1_000_000) * 1000 if modified is not None else 0
                etag = item.get("ETag")
                out.append(LandingObject(path=rel, size=int(item.get("Size") or 0), mtime_ns=mtime_ns,
                                         etag=etag.strip('"') if etag else None))
        return sorted(out, key=lambda o: o.path)
    root = landing.root
    start = os.path.join(root, under.strip("/")) if under.strip("/") else root
    if not os.path.isdir(start):
        return []
    out = []
    stack = [start]
    seen = {os.path.realpath(start)}  # symlinked folders are walked once (no loops)
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real not in seen:
                        seen.add(real)
                        stack.append(entry.path)
                    continue
                if not entry.is_file():
                    continue  # sockets, fifos, dangling links: not objects
                st = entry.stat()
            except FileNotFoundError:  # removed while listing (a collector temp file renamed into place)
                continue
            rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
            out.append(LandingObject(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return sorted(out, key=lambda o: o.path)


# ------------------------------------------------------------------------------------------- parsing


def _hour_of_mtime(obj: LandingObject) -> datetime:
    t = _EPOCH + timedelta(microseconds=obj.mtime_ns // 1000)
    return t.replace(minute=0, second=0, microsecond=0)


def _iso_day(text: str) -> datetime | None:
    m = _ISO_DATE.fullmatch(text)
    if not m:
        return None
    return _day(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _us_day(text: str) -> datetime | None:
    m = _US_DATE.fullmatch(text)
    if not m:
        return None
    return _day(int(m.group(3)), int(m.group(1)), int(m.group(2)))


def _day(y: int, mo: int, d: int) -> datetime | None:
    try:
        return datetime(y, mo, d, tzinfo=UTC)
    except ValueError:
        return None


def _segment_day(text: str) -> datetime | None:
    """`received-day`: the UTC day start as Unix milliseconds (a plain integer, a whole day, 2000..2100)."""
    if not text.isdigit() or len(text) > 16:
        return None
    ms = int(text)
    if ms % DAY_MS:
        return None
    day = _EPOCH + timedelta(milliseconds=ms)
    return day if _MIN_DAY <= day < _MAX_DAY else None


def _rudder_file_hour(name: str) -> datetime | None:
    """The `<unix-ts>` that starts a RudderStack file name (seconds; milliseconds accepted), floored to the hour."""
    m = _RUDDER_TS.match(name)
    if not m:
        return None
    ts = int(m.group(1))
    seconds = ts / 1000 if ts >= 10**11 else ts
    t = _EPOCH + timedelta(seconds=int(seconds))
    if not _MIN_DAY <= t < _MAX_DAY:
        return None
    return t.replace(minute=0, second=0, microsecond=0)


def _hive_hour(parts: list[str]) -> datetime | None:
    """The strict hive hour of `events/date=YYYY-MM-DD/hour=HH/...`, or None."""
    if len(parts) < 3:
        return None
    m, h = _HIVE_DATE.fullmatch(parts[1]), _HIVE_HOUR.fullmatch(parts[2])
    if not m or not h:
        return None
    day = _iso_day(m.group(1))
    hour = int(h.group(1))
    if day is None or hour > 23:
        return None
    return day + timedelta(hours=hour)


def _hive_loose_hour(parts: list[str]) -> datetime | None:
    """For rejected hive-looking paths: the folder hour when it can be read at all (`hour=7` -> 07:00)."""
    day = None
    hour = None
    for p in parts[1:-1]:
        m = _HIVE_DATE.fullmatch(p)
        if m and day is None:
            day = _iso_day(m.group(1))
            continue
        h = _LOOSE_HOUR.fullmatch(p)
        if h and hour is None:
            hour = int(h.group(1))
    if day is None or hour is None or hour > 23:
        return None
    return day + timedelta(hours=hour)


def _cdp_hour(layout: str, parts: list[str]) -> datetime | None:
    """The hour a segment/rudder path files its object under, when its folders parse (any depth >= 3)."""
    if len(parts) < 3:
        return None
    if layout == "segment-s3":
        return _segment_day(parts[2])
    day = _iso_day(parts[2]) or _us_day(parts[2])
    if day is None:
        return None
    return (_rudder_file_hour(parts[-1]) if len(parts) == 4 else None) or day


# ------------------------------------------------------------------------------------------- planning


def plan_landing(objects: list[LandingObject], events_layout: str = "auto") -> LandingPlan:
    """Classify every object into exactly one of events / reference / rejected / reserved."""
    events_layout = validate_layout(events_layout)
    plan = LandingPlan()
    for obj in objects:
        _classify(plan, obj, events_layout)
    return plan


def _reject(plan: LandingPlan, obj: LandingObject, source: str, reason: str, detail: str, hour: datetime | None) -> None:
    plan.rejected.append(RejectedObject(obj=obj, source=source, reason=reason, detail=detail,
                                        object_hour=hour if hour is not None else _hour_of_mtime(obj)))


def _classify(plan: LandingPlan, obj: LandingObject, events_layout: str) -> None:
    path = obj.path
    parts = path.split("/")
    top = parts[0]
    name = parts[-1]

    if top == RESERVED_ROOT and len(parts) > 1:
        plan.reserved.append(obj)
        return

    if top in REFERENCE_SUFFIXES and len(parts) > 1:
        suffixes = REFERENCE_SUFFIXES[top]
        if "" in parts:  # an S3 key with '//' (an empty folder name): no local path could hold it
            _reject(plan, obj, top, OUTSIDE_LAYOUT, f"{path!r} has an empty folder name ('//'); expected {top}/<folders>/<file>", None)
        elif name.endswith(suffixes):
            plan.reference[top].append(obj)
        else:
            _reject(plan, obj, top, UNSUPPORTED_FILE,
                    f"{top}/ holds files ending with one of {', '.join(suffixes)}; {name!r} does not", None)
        return

    layout = next((k for k, v in LAYOUT_ROOTS.items() if v == top), None)
    if layout is None or len(parts) == 1:
        known = ", ".join(f"{d}/" for d in (*LAYOUT_ROOTS.values(), *REFERENCE_SUFFIXES, RESERVED_ROOT))
        _reject(plan, obj, "landing", OUTSIDE_LAYOUT,
                f"{path!r} is outside every landing source; expected under one of {known} (docs/LANDING_CONTRACT.md)", None)
        return

    if layout == "hive":
        _classify_hive(plan, obj, parts, events_layout)
    else:
        _classify_cdp(plan, obj, parts, layout, events_layout)


def _disabled(plan: LandingPlan, obj: LandingObject, layout: str, events_layout: str, hour: datetime | None) -> None:
    _reject(plan, obj, "events", LAYOUT_DISABLED,
            f"{LAYOUT_ROOTS[layout]}/ is the {layout} layout, but {SETTING}={events_layout} reads only "
            f"{GRAMMAR[events_layout]}. Fix: set {SETTING}=auto (or {layout}) to read it, or move the object out of the landing zone",
            hour)


def _unsupported_event(plan: LandingPlan, obj: LandingObject, layout: str, hour: datetime | None) -> None:
    _reject(plan, obj, "events", UNSUPPORTED_FILE,
            f"{layout} event files are NDJSON ending with one of {', '.join(EVENT_SUFFIXES)}; {obj.path.rsplit('/', 1)[-1]!r} does not",
            hour)


def _classify_hive(plan: LandingPlan, obj: LandingObject, parts: list[str], events_layout: str) -> None:
    name = parts[-1]
    hour = _hive_hour(parts) if len(parts) == 4 else None
    if hour is not None and name.startswith(TMP_PREFIX):
        plan.reserved.append(obj)  # the collector's in-progress write (renamed into place when complete)
        return
    if events_layout not in ("auto", "hive"):
        _disabled(plan, obj, "hive", events_layout, hour or _hive_loose_hour(parts))
        return
    if hour is None:
        _reject(plan, obj, "events", OUTSIDE_LAYOUT,
                f"{obj.path!r} is not in the hive layout {GRAMMAR['hive']} (date a real UTC day, hour two digits 00-23, "
                "files directly in the hour folder)", _hive_loose_hour(parts))
        return
    if not name.endswith(EVENT_SUFFIXES):
        _unsupported_event(plan, obj, "hive", hour)
        return
    plan.events.append(EventObject(obj=obj, layout="hive", source_id=HIVE_SOURCE_ID, object_hour=hour))


def _classify_cdp(plan: LandingPlan, obj: LandingObject, parts: list[str], layout: str, events_layout: str) -> None:
    name = parts[-1]
    hour = _cdp_hour(layout, parts)
    if events_layout not in ("auto", layout):
        _disabled(plan, obj, layout, events_layout, hour)
        return
    if len(parts) != 4 or not parts[1] or not name or hour is None:
        what = ("the received-day folder must be the UTC day start in Unix milliseconds" if layout == "segment-s3"
                else "the date folder must be YYYY-MM-DD or MM-DD-YYYY")
        _reject(plan, obj, "events", OUTSIDE_LAYOUT,
                f"{obj.path!r} is not in the {layout} layout {GRAMMAR[layout]} ({what}; files exactly three folders deep)", hour)
        return
    if not name.endswith(EVENT_SUFFIXES):
        _unsupported_event(plan, obj, layout, hour)
        return
    plan.events.append(EventObject(obj=obj, layout=layout, source_id=parts[1], object_hour=hour))
