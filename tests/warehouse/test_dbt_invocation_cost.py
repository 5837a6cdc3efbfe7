"""The fixed cost of a `warehouse_dbt` run (issue #12: a tick should cost what is new).

Measured on the 2-core machine, before any model ran, each dbt run paid: a `dbt --version` subprocess (a full dbt
import plus a PyPI lookup, 4-9 s), an in-process load of the dbt project, profile and adapter that only
dagster-dbt's row counting uses (the local path counts rows itself, 4-9 s), and a full re-parse of the project
("Unable to do partial parsing because profile has changed": dbt/target's state was parsed with another data dir).
"""

from __future__ import annotations

import importlib.metadata
import json

import dagster as dg
import pytest

from tests.warehouse.conftest import isolated_env
from tests.warehouse.warehouse_fixtures import write_feature_lake


def _local_settings(monkeypatch, tmp_path):
    from personalization_assets.settings import load_settings

    isolated_env(monkeypatch, tmp_path / "data", tmp_path / "dbt_target")
    return load_settings()


def test_the_dbt_version_is_not_asked_from_a_dbt_subprocess(monkeypatch, tmp_path):
    import dagster_dbt.core.resource as dagster_dbt_resource

    from personalization_assets.warehouse.resources import dbt_resource

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"spawned {args[0] if args else kwargs}")

    monkeypatch.setattr(dagster_dbt_resource, "check_output", no_subprocess)
    resource = dbt_resource(_local_settings(monkeypatch, tmp_path))
    assert str(resource._cli_version) == importlib.metadata.version("dbt-core")


def test_the_local_dbt_resource_does_not_load_the_dbt_adapter_in_process(monkeypatch, tmp_path):
    import dbt.config.runtime

    from personalization_assets.warehouse.resources import dbt_resource

    def no_load(*args, **kwargs):
        raise AssertionError("loaded the dbt project/profile in the Dagster process")

    monkeypatch.setattr(dbt.config.runtime, "load_project", no_load)
    monkeypatch.setattr(dbt.config.runtime, "load_profile", no_load)
    resource = dbt_resource(_local_settings(monkeypatch, tmp_path))
    assert resource._initialize_dbt_core_adapter(["build"]) is None
    # Snowflake keeps it: dagster-dbt's fetch_row_counts queries through that adapter
    assert type(resource).model_fields["in_process_adapter"].default is True


def _dbt_log_messages(target_dir) -> list[str]:
    out = []
    for line in (target_dir / "dbt.log").read_text().splitlines():
        try:
            out.append(json.loads(line)["info"]["msg"])
        except (ValueError, KeyError):
            out.append(line)
    return out


def test_the_second_dbt_run_reuses_the_first_runs_parse(dbt_manifest, tmp_path):
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings
    from personalization_assets import warehouse as warehouse_layer

    write_feature_lake(tmp_path / "data")
    targets = []
    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path / "data", tmp_path / "dbt_target")
        from personalization_assets.warehouse import assets as warehouse_assets

        mp.setattr(warehouse_assets, "remove_invocation_folder", lambda path: None)  # this test reads dbt.log there
        defs = warehouse_layer.defs(load_settings())
        resources = {"lake": LakeStorage(url=str(tmp_path / "data" / "lake")), **defs.resources}
        for _ in range(2):
            result = dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)
            assert result.success
            targets += [p for p in (tmp_path / "dbt_target").glob(f"warehouse_dbt-{result.run_id[:7]}-*")]
    assert len(targets) == 2, targets
    second = _dbt_log_messages(targets[1])
    assert not [m for m in second if "Unable to do partial parsing" in m], [m for m in second if "partial" in m.lower()]
    assert any("Partial parsing enabled" in m for m in second), [m for m in second if "pars" in m.lower()][:10]
    # the state is kept with the data, not in the code's dbt/target
    assert (tmp_path / "data" / "dbt_state" / "partial_parse.msgpack").exists()


def test_a_successful_build_leaves_no_invocation_folder_and_a_failed_one_keeps_it(dbt_manifest, tmp_path):
    """Each `dbt build` writes ~5 MB into its own target folder; nothing removed them (1.4 GB a day at a tick every
    5 minutes). A successful build's folder is removed once read; a failed build's is kept for inspection."""
    from personalization_assets import warehouse as warehouse_layer
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings

    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path / "data", tmp_path / "dbt_target")
        defs = warehouse_layer.defs(load_settings())
        resources = {"lake": LakeStorage(url=str(tmp_path / "data" / "lake")), **defs.resources}
        dbt_assets = [a for a in defs.assets if "warehouse_dbt" in a.node_def.name]
        # no feature tables in the lake yet: the staging models' sources are missing and the build fails
        instance = dg.DagsterInstance.ephemeral()
        failed = dg.materialize(dbt_assets, resources=resources, raise_on_error=False, instance=instance)
        assert not failed.success
        kept = list((tmp_path / "dbt_target").glob(f"warehouse_dbt-{failed.run_id[:7]}-*"))
        assert len(kept) == 1 and (kept[0] / "run_results.json").exists()
        messages = [entry.user_message for entry in instance.all_logs(failed.run_id)]
        assert any(str(kept[0]) in m for m in messages), "the kept folder's path is logged"
        write_feature_lake(tmp_path / "data")
        for _ in range(2):
            result = dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)
            assert result.success
            assert list((tmp_path / "dbt_target").glob(f"warehouse_dbt-{result.run_id[:7]}-*")) == []
        assert len(list((tmp_path / "dbt_target").glob("warehouse_dbt-*"))) == 1  # the failed build's only
