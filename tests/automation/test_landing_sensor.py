"""The landing-arrival sensor on a real instance: new objects -> one incremental ingestion run; the same
objects again -> nothing; the cursor survives a restart; a late object for an old hour is picked up."""

from __future__ import annotations

import gzip

import dagster as dg

from personalization_assets.automation import staleness
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
    # a context manager: the resources hold nested ones (the pseudonymizer checks its keys against the lake)
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as ctx:
        result = sensor.evaluate_tick(ctx)
    return result.run_requests or [], result.cursor


INGEST = ("raw/landing_manifest", "raw/events", "raw/events_quarantine")
FOLLOWERS = ("privacy/identity_links", "privacy/consent_ledger", "privacy/suppression_list", "privacy/consent_state", "consented/events_state",
             "consented/crm_profiles")
FEATURES = ("features/content_affinity", "features/engagement", "features/events_clean", "features/identity_map",
            "features/purpose_eligibility", "features/sessions", "features/user_rfm")
WAREHOUSE = ("warehouse/features_loaded", "warehouse/stg_content_affinity", "warehouse/stg_engagement", "warehouse/stg_identity_map",
             "warehouse/stg_purpose_eligibility", "warehouse/stg_sessions", "warehouse/stg_user_rfm")
OWN_ASSETS = len(INGEST) + len(FOLLOWERS)  # the ingestion run's own assets come first in its selection, then the carried ones
SEGMENTS = ("segments/advertising_audience", "segments/segment_membership", "segments/segment_sizes", "segments/user_segments")


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
        got = sorted((r.partition_key or "", _selection(r)[:OWN_ASSETS]) for r in requests)
        # one unpartitioned run: it reads what its manifest lacks and files each message under its receivedAt hour;
        # it brings the consent state and the consented hours along, and (never materialized: due) everything to the segments
        assert got == sorted([("", (*INGEST, *FOLLOWERS)), ("", ("raw/crm_profiles", "raw/crm_profiles_quarantine"))])
        events_run = next(r for r in requests if len(r.asset_selection) > 2)
        assert sorted(_selection(events_run)[OWN_ASSETS:]) == sorted((*FEATURES, *WAREHOUSE, *SEGMENTS))
        # each run names the code and settings it runs with: a CLI run after it does not rebuild what it built
        # (automation/staleness.py); so do the automation sensors' runs and the jobs
        fingerprint = staleness.platform_fingerprint()
        assert {r.tags.get(staleness.FINGERPRINT_TAG) for r in requests} == {fingerprint}
        assert {s.run_tags.get(staleness.FINGERPRINT_TAG) for s in defs.sensors if s.name.startswith("automation_")} == {fingerprint}
        for job in ("full_refresh", "privacy_requests", "retention", "rotate_pseudonym_keys"):
            assert defs.resolve_job_def(job).tags.get(staleness.FINGERPRINT_TAG) == fingerprint, job
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
        assert [_selection(r)[:OWN_ASSETS] for r in later] == [(*INGEST, *FOLLOWERS)]
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
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=defs.resources,
                                       repository_def=defs.get_repository_def()) as ctx:
            data = schedule.evaluate_tick(ctx)
        assert [_selection(r)[:len(INGEST)] for r in data.run_requests] == [INGEST]
        req = data.run_requests[0]
        # a run for that digest exists (e.g. launched by the sensor): the schedule stays quiet
        job = defs.resolve_implicit_global_asset_job_def()
        instance.create_run_for_job(job_def=job, tags=req.tags, asset_selection=frozenset(req.asset_selection))
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=defs.resources,
                                       repository_def=defs.get_repository_def()) as ctx:
            data2 = schedule.evaluate_tick(ctx)
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
        assert [_selection(r)[:len(INGEST)] for r in later] == [INGEST]


def test_every_request_of_the_sensor_and_the_schedule_is_launchable_by_its_job(landing):
    """A run request naming an asset outside the sensor's or schedule's target job cannot launch in the daemon."""
    from datetime import datetime, timezone

    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    defs = defs_for_env()
    sensor = defs.resolve_sensor_def("landing_arrival")
    schedule = defs.resolve_schedule_def("landing_extraction_every_5_minutes")
    with dg.instance_for_test() as instance:
        sensor_requests, _ = _tick(defs, instance)
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 11, 28, 14, 5, tzinfo=timezone.utc),
                                       resources=defs.resources, repository_def=defs.get_repository_def()) as ctx:
            schedule_requests = schedule.evaluate_tick(ctx).run_requests
        for job_name, requests in ((sensor.job_name, sensor_requests), (schedule.job_name, schedule_requests)):
            job_keys = defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
            assert requests and any(len(r.asset_selection) > 3 for r in requests)  # the streaming followers are requested
            for r in requests:
                assert set(r.asset_selection) <= job_keys, (job_name, set(r.asset_selection) - job_keys)
                assert r.tags.get(STREAMING_TAG) == "1"


def _keys(names) -> list[dg.AssetKey]:
    return [dg.AssetKey.from_user_string(n) for n in names]


def test_the_landing_run_carries_features_and_segments_only_when_their_policies_say_they_are_due(landing):
    """The landing run takes the features, the warehouse load and the segments along when their freshness policy is
    WARN or FAIL or they were never materialized (automation/carried.py) — not on every new object, not a subset of the
    features step, not while another run may write them, not a model whose parents this run does not write."""
    import dataclasses
    import time

    from personalization_assets.automation.carried import carried_downstream

    _write(landing, "2026-11-28", "13", "a.jsonl.gz", 5)
    defs = defs_for_env()
    carried = carried_downstream(defs)
    written = _keys((*INGEST, *FOLLOWERS, "consented/events"))
    names = lambda keys: sorted(k.to_user_string() for k in keys)  # noqa: E731
    with dg.instance_for_test() as instance:
        assert names(carried.due(instance, written)) == sorted((*FEATURES, *WAREHOUSE, *SEGMENTS))  # never materialized
        assert carried.due(instance, written=[]) == []  # a run that writes none of their inputs carries nothing
        for key in carried.order:
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        now = time.time()
        assert carried.due(instance, written, now=now) == []  # fresh: the automation's freshness-driven wait holds
        # the features' warn window (20 min) passed, the warehouse's and segments' (45 min) not; features/events_clean's
        # own window is 45 min, but the features are one step: all of it goes
        assert names(carried.due(instance, written, now=now + 21 * 60)) == sorted(FEATURES)
        assert names(carried.due(instance, written, now=now + 46 * 60)) == sorted((*FEATURES, *WAREHOUSE, *SEGMENTS))
        # the sensor: fresh -> ingestion and its followers only
        requests, _ = _tick(defs, instance)
        assert [_selection(r) for r in requests] == [(*INGEST, *FOLLOWERS)]
        # warehouse models and segments due while the features are not: nobody writes their inputs in this run
        features_never_due = dataclasses.replace(carried, warn_seconds={
            k: (10**9 if k.path[0] == "features" else 0) for k in carried.order})
        assert features_never_due.due(instance, written, now=now) == []
        # a queued run that will write a carried asset: nothing is carried (two runs would write the features at once)
        job = defs.resolve_implicit_global_asset_job_def()
        run = instance.create_run_for_job(job_def=job, asset_selection=frozenset(_keys(FEATURES)))
        assert carried.due(instance, written, now=now + 46 * 60) == []
        instance.report_run_canceled(run)
        assert carried.due(instance, written, now=now + 46 * 60) != []


def test_live_runs_beyond_the_listing_limit_count_as_writing_the_carried_assets(landing):
    """A wide backfill in the queue: ingestion runs alone do not stop the carrying, but more live runs than the
    listing reads are not ruled out, so nothing is carried."""
    from personalization_assets.automation.carried import _live_run_touches, carried_downstream

    defs = defs_for_env()
    keys = carried_downstream(defs).keys
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        for _ in range(3):
            instance.create_run_for_job(job_def=job, asset_selection=frozenset(_keys(INGEST)))
        assert not _live_run_touches(instance, keys, limit=4)
        assert _live_run_touches(instance, keys, limit=3)


CRM_HEADER = "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
CRM_ROW = "u-1,jane@example.com,+4915112345678,Jane,Doe,DE,1990-01-01,2026-01-01T00:00:00Z,free,2026-11-01T00:00:00Z\n"


def test_a_reference_source_whose_last_file_left_the_landing_zone_is_ingested_again_to_an_empty_table(landing):
    """The landing zone expires a CRM export after 30 days; the raw snapshot (names, emails, phones) is rebuilt from the
    files there are. The sensor requested a reference source only when its digest changed and digested only sources
    with files: once the last export was gone nothing ever rebuilt raw/crm_profiles, and S3 no longer expires it by
    age (retention.yaml expire_prefixes), so the contacts were kept for ever."""
    import duckdb

    from tests.helpers import materialize

    crm = landing / "crm"
    crm.mkdir()
    (crm / "export-1.csv").write_text(CRM_HEADER + CRM_ROW)
    defs = defs_for_env()
    lake = defs.resources["lake"]

    def rows() -> int:
        con = duckdb.connect()
        lake.register(con, "crm", "raw", "crm_profiles")
        return con.execute("select count(*) from crm").fetchone()[0]

    with dg.instance_for_test() as instance:
        first, cursor = _tick(defs, instance)
        assert [_selection(r) for r in first] == [("raw/crm_profiles", "raw/crm_profiles_quarantine")]  # no catalog, no requests
        materialize(defs, "key:raw/crm_profiles", instance=instance)
        assert rows() == 1
        (crm / "export-1.csv").unlink()  # expired by the landing zone's lifecycle
        emptied, cursor = _tick(defs, instance, cursor)
        assert [_selection(r) for r in emptied] == [("raw/crm_profiles", "raw/crm_profiles_quarantine")]
        materialize(defs, "key:raw/crm_profiles", instance=instance)
        assert rows() == 0
        assert _tick(defs, instance, cursor)[0] == []
        # the schedule backstop (no cursor) asks once for the emptied source the table was built from, then never again
        backstop = run_requests_backstop(defs, instance)
        assert [_selection(r) for r in backstop] == [("raw/crm_profiles", "raw/crm_profiles_quarantine")]
        job = defs.resolve_implicit_global_asset_job_def()
        instance.create_run_for_job(job_def=job, tags=backstop[0].tags, asset_selection=frozenset(backstop[0].asset_selection))
        assert run_requests_backstop(defs, instance) == []
        # a new export, then it expires too: one more run each time (a run key of its own, not the first emptying's)
        (crm / "export-2.csv").write_text(CRM_HEADER + CRM_ROW)
        arrived, cursor = _tick(defs, instance, cursor)
        (crm / "export-2.csv").unlink()
        again, _ = _tick(defs, instance, cursor)
        assert len(arrived) == len(again) == 1 and again[0].run_key not in {emptied[0].run_key, arrived[0].run_key}


def run_requests_backstop(defs, instance):
    from personalization_assets.automation.sensors import landing_state, run_requests_for

    return [r for r in run_requests_for(landing_state(defs.resources["landing"]), {}, instance) if "crm" in r.run_key]
