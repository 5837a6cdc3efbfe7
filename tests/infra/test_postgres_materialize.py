"""Production Dagster storage: a real materialization of the platform's raw layer with run and event
storage on a real PostgreSQL server (started on 127.0.0.1 by the fixture), using the production
dagster.yaml's storage section."""

from __future__ import annotations

import yaml

import dagster as dg

from tests.helpers import check_results, defs_for_env, materialize
from tests.raw.hostile import PARTITION, write_hostile_landing

from .test_dagster_instance import PROD_YAML, local_postgres  # noqa: F401  (fixture)


def test_materialization_with_run_and_event_storage_on_postgres(local_postgres, landing, tmp_path, monkeypatch):  # noqa: F811
    config = yaml.safe_load(PROD_YAML.read_text())
    config["storage"]["postgres"]["postgres_db"]["params"] = {"sslmode": "disable"}  # the test server has no TLS
    config.pop("run_coordinator", None)  # in-process execution; the queue is exercised by the daemon in production
    home = tmp_path / "pg_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    for k, v in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(local_postgres), "DAGSTER_PG_USERNAME": "postgres",
                 "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster"}.items():
        monkeypatch.setenv(k, v)
    write_hostile_landing(landing)
    defs = defs_for_env()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = materialize(defs, "key:raw/events", (PARTITION, PARTITION), instance=instance)
        assert result.success and check_results(result)["raw/events:reconciliation"]
        # read back from Postgres: the run, its materialization and the check evaluation
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey(["raw", "events"]))
        assert event is not None and event.run_id == result.run_id
        assert event.asset_materialization.partition == PARTITION
        assert event.asset_materialization.metadata["records_read"].value > 0
    finally:
        instance.dispose()
