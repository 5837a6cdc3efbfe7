"""The landing-arrival sensor on a real instance: new objects -> one incremental ingestion run; the same
objects again -> nothing; the cursor survives a restart; a late object for an old hour is picked up."""

from __future__ import annotations

import gzip
import json

import dagster as dg

from personalization_assets.automation.sensors import STREAMING_TAG
from tests.helpers import defs_for_env
from tests.raw.hostile import line, msg


def _write(landing, date, hour, name, n, start=0):
    folder = landing / "events" / f"date={date}" / f"hour={hour}"
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join(line(msg(start + i)) for i in range(n))
    (folder / name).write_bytes(gzip.compress(data, mtime=0))


def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("landing_arrival")
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    result = sensor.evaluate_tick(ctx)
    return result.run_requests or [], result.cursor


INGEST = ("raw/landing_manifest", "raw/events", "raw/events_quarantine")
FOLLOWERS = ("privacy/identity_links", "privacy/consent_ledger", "privacy/suppression_list", "privacy/consent_state", "consented/events_state")


def _selection(r) -> tuple:
    return tuple(k.to_user_string() for k in r.asset_selection)


def test_new_objects_request_one_incremental_ingestion_run(landing):
    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    _write(landing, "2026-11-28", "14", "a.jsonl.gz", 5, 100)
    (landing / "crm").mkdir()
    (landing / "crm" / "export.csv").write_text("user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n")
    defs = defs_for_env()
    with dg.instance_for_test() as instance:
        requests, cursor = _tick(defs, instance)
        got = sorted((r.partition_key or "", _selection(r)) for r in requests)
        # one unpartitioned run: it reads what its manifest lacks and files each message under its receivedAt hour;
        # it brings the consent state and the consented hours along
        assert got == sorted([("", (*INGEST, *FOLLOWERS)), ("", ("raw/crm_profiles", "raw/crm_profiles_quarantine"))])
        # same objects, next tick: nothing
        again, cursor2 = _tick(defs, instance, cursor)
        assert again == []
        # a restart: a new definitions object and the stored cursor -> still nothing
        restarted, _ = _tick(defs_for_env(), instance, cursor2)
        assert restarted == []
        # a new object in one hour and a late object for an old hour: one more run (with a new run key)
        _write(landing, "2026-11-28", "14", "b.jsonl.gz", 3, 200)
        _write(landing, "2026-11-20", "02", "late.jsonl.gz", 2, 300)
        later, _ = _tick(defs, instance, cursor2)
        assert [_selection(r) for r in later] == [(*INGEST, *FOLLOWERS)]
        assert later[0].run_key not in {r.run_key for r in requests}


def test_a_crash_between_ticks_loses_nothing(landing):
    """If the tick that saw new objects never committed its cursor, the next tick requests them again."""
    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    defs = defs_for_env()
    with dg.instance_for_test() as instance:
        first, cursor = _tick(defs, instance)
        assert len(first) == 1
        _write(landing, "2026-11-28", "15", "a.jsonl.gz", 5)
        # crash: the cursor of the next tick is lost; evaluating from the old cursor again
        lost, _ = _tick(defs, instance, cursor)
        retry, _ = _tick(defs, instance, cursor)
        assert len(lost) == len(retry) == 1
        assert lost[0].run_key == retry[0].run_key != first[0].run_key  # same run key: Dagster launches it once


def test_schedule_backstop_skips_objects_that_already_have_a_run(landing):
    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    defs = defs_for_env()
    schedule = defs.resolve_schedule_def("landing_extraction_every_5_minutes")
    from datetime import datetime, timezone

    with dg.instance_for_test() as instance:
        when = datetime(2026, 11, 28, 14, 5, tzinfo=timezone.utc)
        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=defs.resources, repository_def=defs.get_repository_def())
        data = schedule.evaluate_tick(ctx)
        assert [_selection(r)[:3] for r in data.run_requests] == [INGEST]
        req = data.run_requests[0]
        # a run for that digest exists (e.g. launched by the sensor): the schedule stays quiet
        job = defs.resolve_implicit_global_asset_job_def()
        instance.create_run_for_job(job_def=job, tags=req.tags, asset_selection=frozenset(req.asset_selection))
        data2 = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=defs.resources, repository_def=defs.get_repository_def()))
        assert not data2.run_requests


def test_objects_ingested_before_the_sensor_first_ran_are_not_requested_again(landing):
    """`make demo` then `make dev`: the sensor's first tick must not re-ingest what the CLI just ingested,
    but must still pick up an object that lands afterwards."""
    from tests.helpers import materialize

    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    defs = defs_for_env()
    with dg.instance_for_test() as instance:
        materialize(defs, "key:raw/events", instance=instance)
        first, cursor = _tick(defs, instance)
        assert first == []
        import time

        time.sleep(0.01)
        _write(landing, "2026-11-28", "13", "b.jsonl.gz", 3, 50)
        later, _ = _tick(defs, instance, cursor)
        assert [_selection(r)[:3] for r in later] == [INGEST]


def test_every_request_of_the_sensor_and_the_schedule_is_launchable_by_its_job(landing):
    """A run request naming an asset outside the sensor's or schedule's target job cannot launch in the daemon."""
    from datetime import datetime, timezone

    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    defs = defs_for_env()
    sensor = defs.resolve_sensor_def("landing_arrival")
    schedule = defs.resolve_schedule_def("landing_extraction_every_5_minutes")
    with dg.instance_for_test() as instance:
        sensor_requests, _ = _tick(defs, instance)
        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 11, 28, 14, 5, tzinfo=timezone.utc),
                                        resources=defs.resources, repository_def=defs.get_repository_def())
        schedule_requests = schedule.evaluate_tick(ctx).run_requests
        for job_name, requests in ((sensor.job_name, sensor_requests), (schedule.job_name, schedule_requests)):
            job_keys = defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
            assert requests and any(len(r.asset_selection) > 3 for r in requests)  # the streaming followers are requested
            for r in requests:
                assert set(r.asset_selection) <= job_keys, (job_name, set(r.asset_selection) - job_keys)
                assert r.tags.get(STREAMING_TAG) == "1"
