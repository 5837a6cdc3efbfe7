"""Configuration errors name the setting and the fix; the definitions load with the Dagster CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from personalization_assets.settings import SETTINGS_DOC, ConfigError, load_settings
from tests.conftest import platform_free_environ

ROOT = Path(__file__).resolve().parent.parent
PROD = {
    "PERSONALIZATION_ENV": "prod",
    "PERSONALIZATION_LANDING_URL": "s3://landing-bucket/cdp",
    "PERSONALIZATION_LAKE_URL": "s3://lake-bucket/lake",
    "PERSONALIZATION_LEDGER_URL": "s3://ledger-bucket/",
    "PERSONALIZATION_PSEUDONYM_KEYS": json.dumps({"1": "ab" * 32}),
    **{k: "x" for k in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD", "SNOWFLAKE_ROLE", "SNOWFLAKE_WAREHOUSE", "SNOWFLAKE_DATABASE")},
}


def test_local_defaults(tmp_path):
    s = load_settings({"PERSONALIZATION_DATA_DIR": str(tmp_path)})
    assert s.env == "local" and s.lake_url == str(tmp_path / "lake") and s.landing_url == str(tmp_path / "landing")
    assert s.max_line_bytes == 32768 and s.dbt_target == "local"


def test_prod_settings_are_accepted():
    s = load_settings(PROD)
    assert s.env == "prod" and s.lake_url.startswith("s3://")


@pytest.mark.parametrize(
    "change, setting",
    [
        ({"PERSONALIZATION_ENV": "staging"}, "PERSONALIZATION_ENV"),
        ({"PERSONALIZATION_LAKE_URL": ""}, "PERSONALIZATION_LAKE_URL"),
        ({"PERSONALIZATION_LANDING_URL": "/local/path"}, "PERSONALIZATION_LANDING_URL"),
        ({"PERSONALIZATION_LAKE_URL": "s3://"}, "PERSONALIZATION_LAKE_URL"),
        ({"PERSONALIZATION_LEDGER_URL": ""}, "PERSONALIZATION_LEDGER_URL"),
        ({"SNOWFLAKE_PASSWORD": ""}, "SNOWFLAKE_PASSWORD"),
        ({"PERSONALIZATION_PSEUDONYM_KEYS": ""}, "PERSONALIZATION_PSEUDONYM_KEYS"),
        ({"PERSONALIZATION_PSEUDONYM_KEYS": "{\"1\": \"abc\"}"}, "PERSONALIZATION_PSEUDONYM_KEYS"),
        ({"PERSONALIZATION_MAX_LINE_BYTES": "lots"}, "PERSONALIZATION_MAX_LINE_BYTES"),
        ({"PERSONALIZATION_LOG_RECHECK_SEGMENTS": "0"}, "PERSONALIZATION_LOG_RECHECK_SEGMENTS"),
        ({"PERSONALIZATION_LANDING_READ_CONCURRENCY": "0"}, "PERSONALIZATION_LANDING_READ_CONCURRENCY"),
        ({"PERSONALIZATION_LANDING_READ_CONCURRENCY": "65"}, "PERSONALIZATION_LANDING_READ_CONCURRENCY"),
        ({"PERSONALIZATION_LANDING_READ_CONCURRENCY": "many"}, "PERSONALIZATION_LANDING_READ_CONCURRENCY"),
        ({"PERSONALIZATION_EVENTS_START": "yesterday"}, "PERSONALIZATION_EVENTS_START"),
        ({"AWS_ACCESS_KEY_ID": "AKIA-only-half"}, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_misconfiguration_names_the_setting_and_the_fix(change, setting):
    env = {**PROD, **change}
    with pytest.raises(Exception) as exc:
        load_settings(env)
    msg = str(exc.value)
    assert setting in msg and ("Fix" in msg or "set" in msg.lower())


def test_unwritable_local_data_dir(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="PERSONALIZATION_DATA_DIR.*is a file"):
        load_settings({"PERSONALIZATION_DATA_DIR": str(f)})


def test_dagster_cli_validates_the_definitions(tmp_path):
    env = platform_free_environ()
    env.update(PERSONALIZATION_DATA_DIR=str(tmp_path / "data"), DAGSTER_HOME=str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_definitions_fail_at_load_on_misconfiguration(tmp_path):
    env = platform_free_environ()
    env.update(PERSONALIZATION_ENV="prod", DAGSTER_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", "import personalization_assets.definitions"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "PERSONALIZATION_LANDING_URL is not set" in proc.stderr


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    for doc in SETTINGS_DOC:
        first = doc.name.split(" ")[0]
        assert first in readme, f"README configuration table misses {first}"


def test_the_local_dagster_home_is_a_valid_instance_that_serializes_streaming_runs(tmp_path, monkeypatch):
    from personalization_assets.automation.sensors import STREAMING_TAG
    from personalization_assets.cli import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = ensure_dagster_home()
    assert (home / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        queue = instance.run_coordinator.get_run_queue_config()
        assert {"key": STREAMING_TAG, "limit": 1} in queue.tag_concurrency_limits
        assert instance.run_coordinator.dequeue_interval_seconds <= 2


def test_readme_configuration_table_is_generated_from_the_settings():
    """The table is generated from the declared settings (`python -m personalization_assets.settings`): a setting
    added, renamed or re-documented in settings.py without regenerating the README fails here."""
    from personalization_assets.settings import EnvSettings, settings_table

    table = settings_table()
    assert table in (ROOT / "README.md").read_text(), "README's configuration table is stale: paste `python -m personalization_assets.settings`"
    for info in EnvSettings.model_fields.values():  # every variable the loader parses has its row
        alias = info.validation_alias
        name = alias.choices[0] if isinstance(alias, __import__("pydantic").AliasChoices) else alias
        assert name in table, name


def test_settings_come_from_the_given_environment_only(tmp_path, monkeypatch):
    """load_settings(environ) reads that mapping, never the process environment behind it."""
    monkeypatch.setenv("PERSONALIZATION_MAX_LINE_BYTES", "lots")
    monkeypatch.setenv("PERSONALIZATION_ENV", "prod")
    s = load_settings({"PERSONALIZATION_DATA_DIR": str(tmp_path), "PERSONALIZATION_HORIZON_DAYS": "7"})
    assert s.env == "local" and s.max_line_bytes == 32768 and s.horizon_days == 7
    with pytest.raises(ConfigError, match="PERSONALIZATION_MAX_LINE_BYTES='lots' is not an integer. Fix"):
        load_settings({"PERSONALIZATION_DATA_DIR": str(tmp_path), "PERSONALIZATION_MAX_LINE_BYTES": "lots"})
