"""Landing layouts (issue #13): every landing object is classified into exactly one bucket, by strict rules."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from personalization_assets.raw.layouts import (
    EVENT_LAYOUTS,
    LandingObject,
    list_landing,
    plan_landing,
    validate_layout,
)
from personalization_assets.core.storage import LandingZone

MTIME = int(datetime(2026, 3, 4, 5, 43, 21, tzinfo=UTC).timestamp() * 1e9)
MTIME_HOUR = datetime(2026, 3, 4, 5, tzinfo=UTC)
DAY_MS = 1_764_892_800_000  # 2025-12-05 00:00 UTC
RUDDER_TS = 1_764_941_400  # 2025-12-05 13:30:00 UTC

# path -> expected (bucket, detail): bucket is "events"/"reference"/"reserved"/"rejected"
TREE = {
    # hive
    "events/date=2025-12-05/hour=13/events-a.jsonl.gz": ("events", "hive", "hive", datetime(2025, 12, 5, 13, tzinfo=UTC)),
    "events/date=2025-12-05/hour=00/b.ndjson": ("events", "hive", "hive", datetime(2025, 12, 5, 0, tzinfo=UTC)),
    "events/date=2025-12-05/hour=23/.hidden.jsonl": ("events", "hive", "hive", datetime(2025, 12, 5, 23, tzinfo=UTC)),
    "events/date=2025-12-05/hour=13/_tmp-0123abcd": ("reserved",),
    "events/date=2025-12-05/hour=13/.DS_Store": ("rejected", "events", "unsupported_file", datetime(2025, 12, 5, 13, tzinfo=UTC)),
    "events/date=2025-12-05/hour=13/notes.txt": ("rejected", "events", "unsupported_file", datetime(2025, 12, 5, 13, tzinfo=UTC)),
    "events/date=2025-12-05/hour=7/x.jsonl": ("rejected", "events", "outside_layout", datetime(2025, 12, 5, 7, tzinfo=UTC)),
    "events/date=2025-12-05/hour=24/x.jsonl": ("rejected", "events", "outside_layout", MTIME_HOUR),
    "events/date=2026-13-01/hour=01/x.jsonl": ("rejected", "events", "outside_layout", MTIME_HOUR),
    "events/date=2025-12-05/x.jsonl": ("rejected", "events", "outside_layout", MTIME_HOUR),
    "events/stray.jsonl": ("rejected", "events", "outside_layout", MTIME_HOUR),
    "events/date=2025-12-05/hour=13/deeper/x.jsonl": ("rejected", "events", "outside_layout", datetime(2025, 12, 5, 13, tzinfo=UTC)),
    "events/date=2025-12-05/_tmp-elsewhere": ("rejected", "events", "outside_layout", MTIME_HOUR),
    # segment
    f"segment-logs/src1/{DAY_MS}/1764896400000.ab12.gz": ("events", "segment-s3", "src1", datetime(2025, 12, 5, tzinfo=UTC)),
    f"segment-logs/src2/{DAY_MS}/whatever-name.gz": ("events", "segment-s3", "src2", datetime(2025, 12, 5, tzinfo=UTC)),
    f"segment-logs/src1/{DAY_MS}/.DS_Store": ("rejected", "events", "unsupported_file", datetime(2025, 12, 5, tzinfo=UTC)),
    "segment-logs/src1/2025-12-05/x.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),
    f"segment-logs/src1/{DAY_MS // 1000}/x.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),  # seconds, not ms
    f"segment-logs/src1/{DAY_MS + 3_600_000}/x.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),  # not a day start
    f"segment-logs/src1/{DAY_MS}/sub/x.gz": ("rejected", "events", "outside_layout", datetime(2025, 12, 5, tzinfo=UTC)),
    "segment-logs/src1/x.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),
    # rudderstack: both date formats, ts in the name
    f"rudder-logs/rs1/2025-12-05/{RUDDER_TS}.rs1.0b7c-uuid.json.gz": ("events", "rudderstack-s3", "rs1", datetime(2025, 12, 5, 13, tzinfo=UTC)),
    f"rudder-logs/rs1/12-05-2025/{RUDDER_TS + 3600}.rs1.1b7c-uuid.json.gz": ("events", "rudderstack-s3", "rs1", datetime(2025, 12, 5, 14, tzinfo=UTC)),
    "rudder-logs/rs2/12-06-2025/no-ts-here.json.gz": ("events", "rudderstack-s3", "rs2", datetime(2025, 12, 6, tzinfo=UTC)),
    "rudder-logs/rs1/2025-12-05/x.parquet": ("rejected", "events", "unsupported_file", datetime(2025, 12, 5, tzinfo=UTC)),
    "rudder-logs/rs1/05.12.2025/x.json.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),
    "rudder-logs/rs1/13-45-2025/x.json.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),
    "rudder-logs/rs1/x.json.gz": ("rejected", "events", "outside_layout", MTIME_HOUR),
    # reference sources: any depth, names starting with . or _ are read when the suffix fits
    "crm/export_1.csv": ("reference", "crm"),
    "crm/2025/12/export_2.csv.gz": ("reference", "crm"),
    "crm/export.xlsx": ("rejected", "crm", "unsupported_file", MTIME_HOUR),
    "catalog/catalog.jsonl": ("reference", "catalog"),
    "catalog/more.ndjson.gz": ("reference", "catalog"),
    "catalog/.DS_Store": ("rejected", "catalog", "unsupported_file", MTIME_HOUR),
    "privacy_requests/_x.jsonl": ("reference", "privacy_requests"),
    "privacy_requests/.y.ndjson": ("reference", "privacy_requests"),
    "privacy_requests/r.json": ("rejected", "privacy_requests", "unsupported_file", MTIME_HOUR),
    "privacy_requests//double-slash.jsonl": ("rejected", "privacy_requests", "outside_layout", MTIME_HOUR),
    # reserved and the top level
    "_generator/manifest.json": ("reserved",),
    "_generator/deeper/anything.bin": ("reserved",),
    "_generator": ("rejected", "landing", "outside_layout", MTIME_HOUR),
    ".DS_Store": ("rejected", "landing", "outside_layout", MTIME_HOUR),
    "README.txt": ("rejected", "landing", "outside_layout", MTIME_HOUR),
    "exports/events.jsonl": ("rejected", "landing", "outside_layout", MTIME_HOUR),
    "_tmp-abc": ("rejected", "landing", "outside_layout", MTIME_HOUR),
}


def _objects(paths=TREE) -> list[LandingObject]:
    return [LandingObject(path=p, size=10 + i, mtime_ns=MTIME) for i, p in enumerate(sorted(paths))]


def _buckets(plan) -> dict[str, list[str]]:
    return {
        "events": [e.obj.path for e in plan.events],
        "reference": [o.path for objs in plan.reference.values() for o in objs],
        "rejected": [r.obj.path for r in plan.rejected],
        "reserved": [o.path for o in plan.reserved],
    }


def _assert_partition(objects, plan):
    """Every object is in exactly one bucket (none lost, none twice)."""
    seen = [p for paths in _buckets(plan).values() for p in paths]
    assert sorted(seen) == sorted(o.path for o in objects)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("layout", EVENT_LAYOUTS)
def test_every_object_lands_in_exactly_one_bucket(layout):
    objects = _objects()
    _assert_partition(objects, plan_landing(objects, layout))


def test_auto_classifies_the_odd_tree():
    plan = plan_landing(_objects(), "auto")
    events = {e.obj.path: e for e in plan.events}
    rejected = {r.obj.path: r for r in plan.rejected}
    reference = {o.path: src for src, objs in plan.reference.items() for o in objs}
    reserved = {o.path for o in plan.reserved}
    for path, want in TREE.items():
        kind = want[0]
        if kind == "events":
            e = events[path]
            assert (e.layout, e.source_id, e.object_hour) == want[1:], path
            assert e.object_hour.tzinfo is not None
        elif kind == "rejected":
            r = rejected[path]
            assert (r.source, r.reason, r.object_hour) == want[1:], path
            assert r.detail
        elif kind == "reference":
            assert reference[path] == want[1], path
        else:
            assert path in reserved, path
    assert plan.layouts_found() == ["hive", "rudderstack-s3", "segment-s3"]


def test_details_name_the_expected_layout_and_suffixes():
    rejected = {r.obj.path: r for r in plan_landing(_objects(), "auto").rejected}
    assert "hour two digits" in rejected["events/date=2025-12-05/hour=7/x.jsonl"].detail
    assert "Unix milliseconds" in rejected[f"segment-logs/src1/{DAY_MS // 1000}/x.gz"].detail
    assert "MM-DD-YYYY" in rejected["rudder-logs/rs1/05.12.2025/x.json.gz"].detail
    assert ".jsonl.gz" in rejected["events/date=2025-12-05/hour=13/.DS_Store"].detail
    assert ".csv.gz" in rejected["crm/export.xlsx"].detail
    assert "LANDING_CONTRACT" in rejected["README.txt"].detail


@pytest.mark.parametrize("layout", ["hive", "segment-s3", "rudderstack-s3"])
def test_an_explicit_layout_disables_the_others(layout):
    roots = {"hive": "events/", "segment-s3": "segment-logs/", "rudderstack-s3": "rudder-logs/"}
    plan = plan_landing(_objects(), layout)
    assert plan.layouts_found() == [layout]
    disabled = [r for r in plan.rejected if r.reason == "layout_disabled"]
    other_roots = tuple(v for k, v in roots.items() if k != layout)
    expected = [p for p in TREE if p.startswith(other_roots) and not p.endswith("/_tmp-0123abcd")]
    assert sorted(r.obj.path for r in disabled) == sorted(expected)
    for r in disabled:
        assert r.source == "events"
        assert "PERSONALIZATION_EVENTS_LAYOUT" in r.detail
    # the layout's own rules still apply, and reference/reserved objects do not depend on the setting
    auto = plan_landing(_objects(), "auto")
    assert plan.reference == auto.reference
    assert [o.path for o in plan.reserved] == [o.path for o in auto.reserved]
    own = {r.obj.path: r.reason for r in auto.rejected if r.obj.path.startswith(roots[layout])}
    assert {r.obj.path: r.reason for r in plan.rejected if r.obj.path.startswith(roots[layout])} == own


def test_unknown_layout_names_the_setting():
    with pytest.raises(ValueError, match="PERSONALIZATION_EVENTS_LAYOUT.*auto, hive, segment-s3, rudderstack-s3"):
        plan_landing([], "segment")
    assert validate_layout(" Segment-S3 ") == "segment-s3"


def test_fingerprint_prefers_the_etag():
    assert LandingObject("a", 3, 7, None).fingerprint == "3:7"
    assert LandingObject("a", 3, 7, "abc").fingerprint == "abc"


def test_list_landing_local_lists_every_file_with_ns_mtime(landing):
    for path in TREE:
        p = landing / path
        if path == "_generator" or "//" in path:
            continue  # a file and a folder cannot share a name locally; no local path has an empty folder name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(path.encode())
    objects = list_landing(LandingZone(url=str(landing)))
    expected = sorted(p for p in TREE if p != "_generator" and "//" not in p)
    assert [o.path for o in objects] == expected  # '.' and '_' names included, sorted by path
    by_path = {o.path: o for o in objects}
    st = os.stat(landing / "privacy_requests/_x.jsonl")
    assert by_path["privacy_requests/_x.jsonl"].mtime_ns == st.st_mtime_ns
    assert by_path["privacy_requests/_x.jsonl"].size == len(b"privacy_requests/_x.jsonl")
    assert all(o.etag is None for o in objects)
    _assert_partition(objects, plan_landing(objects))
    assert list_landing(LandingZone(url=str(landing / "missing"))) == []


def test_list_landing_on_s3_returns_etags(s3_env):
    client, bucket = s3_env["client"], s3_env["bucket"]
    paths = sorted(TREE)
    for path in paths:
        client.put_object(Bucket=bucket, Key=f"landing/{path}", Body=path.encode())
    client.put_object(Bucket=bucket, Key="landing/crm/", Body=b"")  # a console folder marker: a folder, not an object
    client.put_object(Bucket=bucket, Key="landingX/events/date=2025-12-05/hour=13/x.jsonl", Body=b"{}")  # a sibling prefix
    client.put_object(Bucket=bucket, Key="outside.jsonl", Body=b"{}")
    zone = LandingZone(url=f"s3://{bucket}/landing", s3_endpoint_url=s3_env["endpoint"], aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    objects = list_landing(zone)
    assert [o.path for o in objects] == paths
    heads = {p: client.head_object(Bucket=bucket, Key=f"landing/{p}") for p in paths}
    for o in objects:
        assert o.etag and o.etag == heads[o.path]["ETag"].strip('"')
        assert o.fingerprint == o.etag
        assert o.size == len(o.path.encode())
        assert o.mtime_ns == int(heads[o.path]["LastModified"].timestamp()) * 10**9
    _assert_partition(objects, plan_landing(objects))
    # the bucket root as landing URL lists everything, the other prefixes included
    whole = list_landing(LandingZone(url=f"s3://{bucket}", s3_endpoint_url=s3_env["endpoint"], aws_access_key_id="testing",
                                     aws_secret_access_key="testing"))
    assert "outside.jsonl" in {o.path for o in whole} and f"landing/{paths[0]}" in {o.path for o in whole}


def test_events_layout_setting_is_validated_and_reaches_the_platform_resource(data_dir, monkeypatch):
    from personalization_assets.resources import build_resources
    from personalization_assets.settings import ConfigError, load_settings

    assert load_settings().events_layout == "auto"
    monkeypatch.setenv("PERSONALIZATION_EVENTS_LAYOUT", "segment-s3")
    settings = load_settings()
    assert settings.events_layout == "segment-s3"
    assert build_resources(settings)["platform"].events_layout == "segment-s3"
    monkeypatch.setenv("PERSONALIZATION_EVENTS_LAYOUT", "segment")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "PERSONALIZATION_EVENTS_LAYOUT" in str(exc.value) and "rudderstack-s3" in str(exc.value) and "Fix" in str(exc.value)


def test_list_landing_local_follows_symlinked_folders_once(landing, tmp_path):
    elsewhere = tmp_path / "exports"
    elsewhere.mkdir()
    (elsewhere / "r.jsonl").write_text("{}\n")
    (elsewhere / "loop").symlink_to(elsewhere)  # a loop must not hang the listing
    (landing / "privacy_requests").symlink_to(elsewhere)
    paths = [o.path for o in list_landing(LandingZone(url=str(landing)))]
    assert paths == ["privacy_requests/r.jsonl"]
