"""The generator writes each CDP's native layout (issue #13): Segment S3, RudderStack S3 and hive.

Same seed => the same messages whatever the layout (only placement and the server-added fields differ),
and the landing plan (raw/layouts.py) classifies every generated object as events of that layout, filed
under the hour of the messages' receivedAt."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from personalization_assets.generator import generate_landing_zone
from personalization_assets.raw.layouts import list_landing, plan_landing
from personalization_assets.core.storage import LandingZone
from tests.generator.zone import END, all_files

LAYOUTS = ("hive", "segment-s3", "rudderstack-s3")
KW = {"users": 300, "events": 12_000, "seed": 5, "days": 3, "end": END, "bad_fraction": 0.03}
SEGMENT_SERVER = ("originalTimestamp", "_metadata", "integrations", "projectId", "version")
RUDDER_SERVER = ("originalTimestamp", "rudderId", "request_ip", "channel")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def zones(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for layout in LAYOUTS:
        root = tmp_path_factory.mktemp(layout)
        generate_landing_zone(pafs.LocalFileSystem(), str(root), layout=layout, **KW)
        out[layout] = root
    return out


def _lines(root: Path, rel: str) -> list[bytes]:
    data = (root / rel).read_bytes()
    if rel.endswith(".gz"):
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _parsed(root: Path, rel: str) -> list[dict]:
    out = []
    for line in _lines(root, rel):
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # a planted bad line (malformed JSON, invalid UTF-8, empty)
        if isinstance(msg, dict):
            out.append(msg)
    return out


def _received_hour(msg: dict) -> datetime:
    t = datetime.fromisoformat(msg["receivedAt"].replace("Z", "+00:00"))
    return t.replace(minute=0, second=0, microsecond=0)


def _plan(root: Path):
    return plan_landing(list_landing(LandingZone(url=str(root))), "auto")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_generated_object_is_an_event_of_its_layout_at_the_messages_hour(zones, layout):
    root = zones[layout]
    manifest = json.loads((root / "_generator" / "manifest.json").read_text())
    assert manifest["layout"] == layout
    assert ("source_id" in manifest) == (layout != "hive")
    plan = _plan(root)
    assert plan.rejected == []
    assert [o.path for o in plan.reserved] == ["_generator/manifest.json"]
    assert all(plan.reference[s] for s in ("crm", "catalog", "privacy_requests"))
    assert plan.events and {e.layout for e in plan.events} == {layout}
    expected_source = "hive" if layout == "hive" else manifest["source_id"]
    assert {e.source_id for e in plan.events} == {expected_source}
    straddling = 0
    for e in plan.events:
        hours = {_received_hour(m) for m in _parsed(root, e.obj.path)}
        assert hours, e.obj.path
        if layout == "segment-s3":
            # filed under the received day; the object of hour H (its name) holds hour H and maybe the start of H+1
            start = datetime.fromtimestamp(int(e.obj.path.rsplit("/", 1)[-1].split(".")[0]) / 1000, UTC)
            assert e.object_hour == start.replace(hour=0)
            assert hours <= {start, start + HOUR}, e.obj.path
            straddling += len(hours) == 2
        else:
            assert hours == {e.object_hour}, e.obj.path
    if layout == "segment-s3":
        assert len(plan.events) == KW["days"] * 24  # one object per receivedAt hour
        assert straddling == round(0.1 * len(plan.events))  # 1 in 10 uploads straddle an hour boundary


def test_paths_follow_each_cdp_grammar(zones):
    manifest = json.loads((zones["segment-s3"] / "_generator" / "manifest.json").read_text())
    sid = manifest["source_id"]
    assert re.fullmatch(r"[0-9A-Za-z]{10}", sid)
    seg = [e.obj.path for e in _plan(zones["segment-s3"]).events]
    for p in seg:
        m = re.fullmatch(rf"segment-logs/{sid}/(\d+)/(\d+)\.([0-9a-f]{{12}})\.gz", p)
        assert m, p
        assert int(m.group(1)) % 86_400_000 == 0 and int(m.group(2)) // 86_400_000 * 86_400_000 == int(m.group(1))
        assert int(m.group(2)) % 3_600_000 == 0
    rsid = json.loads((zones["rudderstack-s3"] / "_generator" / "manifest.json").read_text())["source_id"]
    assert re.fullmatch(r"[0-9A-Za-z]{27}", rsid)
    for e in _plan(zones["rudderstack-s3"]).events:
        m = re.fullmatch(rf"rudder-logs/{rsid}/(\d{{4}}-\d{{2}}-\d{{2}})/(\d{{10}})\.{rsid}\.({UUID})\.json\.gz", e.obj.path)
        assert m, e.obj.path
        assert datetime.fromtimestamp(int(m.group(2)), UTC).date().isoformat() == m.group(1)


def _normalized(msg: dict, layout: str) -> str:
    msg = json.loads(json.dumps(msg))
    for k in SEGMENT_SERVER if layout == "segment-s3" else RUDDER_SERVER if layout == "rudderstack-s3" else ():
        msg.pop(k, None)
    ctx = msg.get("context") or {}
    ctx.pop("library", None)
    if layout == "rudderstack-s3" and "traits" in ctx:
        msg["traits"] = ctx.pop("traits")
    return json.dumps(msg, sort_keys=True)


def test_same_messages_whatever_the_layout(zones):
    seen = {}
    for layout, root in zones.items():
        plan = _plan(root)
        raw_lines = 0
        msgs = Counter()
        for e in plan.events:
            raw_lines += len(_lines(root, e.obj.path))
            msgs.update(_normalized(m, layout) for m in _parsed(root, e.obj.path))
        seen[layout] = (raw_lines, msgs)
    hive_lines, hive_msgs = seen["hive"]
    assert hive_lines == KW["events"]
    for layout in ("segment-s3", "rudderstack-s3"):
        lines, msgs = seen[layout]
        assert lines == hive_lines
        assert msgs == hive_msgs, layout


def test_server_fields_each_cdp_adds(zones):
    sid = json.loads((zones["segment-s3"] / "_generator" / "manifest.json").read_text())["source_id"]
    n = 0
    for e in _plan(zones["segment-s3"]).events:
        for m in _parsed(zones["segment-s3"], e.obj.path):
            if "messageId" not in m or not isinstance(m.get("timestamp"), str):
                continue
            n += 1
            assert m["projectId"] == sid and m["version"] == 2 and m["integrations"] == {}
            assert set(m["_metadata"]) == {"bundled", "unbundled", "bundledIds"}
            assert m["originalTimestamp"] and m["sentAt"] and m["context"]["library"]["name"].startswith("analytics")
    assert n > 10_000
    kinds = Counter()
    for e in _plan(zones["rudderstack-s3"]).events:
        for m in _parsed(zones["rudderstack-s3"], e.obj.path):
            if "messageId" not in m or "context" not in m:
                continue
            kinds[m["channel"]] += 1
            assert re.fullmatch(UUID, m["rudderId"])
            assert m["request_ip"] == m["context"]["ip"]
            assert m["originalTimestamp"] and m["sentAt"]
            assert "Rudder" in m["context"]["library"]["name"] or "rudder" in m["context"]["library"]["name"]
            if m["type"] == "identify":
                kinds["identify"] += 1
                assert "traits" not in m and m["context"]["traits"]["email"]
    assert kinds["web"] and kinds["mobile"] and kinds["identify"]
    # hive lines are as the SDKs sent them: no server fields
    hive = zones["hive"]
    for e in _plan(hive).events[:5]:
        for m in _parsed(hive, e.obj.path):
            assert not set(m) & {*SEGMENT_SERVER, *RUDDER_SERVER}


@pytest.mark.parametrize("layout", ["segment-s3", "rudderstack-s3"])
def test_deterministic_per_seed(zones, tmp_path, layout):
    generate_landing_zone(pafs.LocalFileSystem(), str(tmp_path / "again"), layout=layout, **KW)
    assert all_files(tmp_path / "again") == all_files(zones[layout])
    generate_landing_zone(pafs.LocalFileSystem(), str(tmp_path / "other"), layout=layout, **(KW | {"seed": 6}))
    assert {p for p in all_files(tmp_path / "other") if "-logs/" in p}.isdisjoint(p for p in all_files(zones[layout]) if "-logs/" in p)


def test_cdp_layouts_are_gzipped_and_validated(tmp_path):
    with pytest.raises(ValueError, match="gzip"):
        generate_landing_zone(pafs.LocalFileSystem(), str(tmp_path), layout="segment-s3", gzip=False, **KW)
    with pytest.raises(ValueError, match="layout must be one of"):
        generate_landing_zone(pafs.LocalFileSystem(), str(tmp_path), layout="segment", **KW)


def test_cli_generate_layout(data_dir, monkeypatch, capsys):
    from personalization_assets.cli import main

    assert main(["generate", "--users", "100", "--events", "3000", "--days", "1", "--end", "2024-05-07",
                 "--layout", "rudderstack-s3"]) == 0
    plan = _plan(data_dir / "landing")
    assert plan.events and {e.layout for e in plan.events} == {"rudderstack-s3"} and not plan.rejected
    assert not (data_dir / "landing" / "events").exists()


@pytest.mark.timeout(120)
def test_segment_layout_on_s3_lists_with_etags(s3_env):
    zone = LandingZone(url=f"s3://{s3_env['bucket']}/landing", s3_endpoint_url=s3_env["endpoint"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    generate_landing_zone(zone.filesystem(), zone.root, layout="segment-s3", **(KW | {"days": 1, "events": 3000}))
    objects = list_landing(zone)
    plan = plan_landing(objects, "segment-s3")
    assert len(plan.events) == 24 and not plan.rejected
    assert all(e.obj.etag and e.obj.fingerprint == e.obj.etag for e in plan.events)
    assert not any(o.path.endswith("/") for o in objects)
