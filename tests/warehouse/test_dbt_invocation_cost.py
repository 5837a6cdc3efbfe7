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


def _unit_test_observations(result) -> list:
    return [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
            and "dbt/unit_test" in e.event_specific_data.asset_observation.metadata]


def test_unit_tests_count_as_passed_only_when_every_one_of_the_manifest_passed():
    from personalization_assets.warehouse.assets import all_unit_tests_passed

    manifest = {"unit_tests": {"unit_test.p.a": {}, "unit_test.p.b": {}}}
    ok = {"results": [{"unique_id": "unit_test.p.a", "status": "pass"}, {"unique_id": "unit_test.p.b", "status": "pass"},
                      {"unique_id": "model.p.m", "status": "success"}]}
    assert all_unit_tests_passed(ok, manifest)
    assert not all_unit_tests_passed({"results": ok["results"][:1]}, manifest)  # one was excluded or skipped
    assert not all_unit_tests_passed({"results": [{**ok["results"][0], "status": "fail"}, ok["results"][1]]}, manifest)
    assert not all_unit_tests_passed(ok, {"unit_tests": {}})


def _dbt_log_messages(target_dir) -> list[str]:
    out = []
    for line in (target_dir / "dbt.log").read_text().splitlines():
        try:
            out.append(json.loads(line)["info"]["msg"])
        except (ValueError, KeyError):
            out.append(line)
    return out


def test_a_dbt_build_reuses_the_last_runs_parse_and_leaves_no_invocation_folder_unless_it_failed(dbt_manifest, tmp_path):
    """Two builds on one data dir: a failed one (no feature tables yet), then a successful one.

    * The second reuses the first's parse ("Partial parsing enabled", never "Unable to do partial parsing"): the
      state is kept with the data, keyed by the project's content, not in the code's dbt/target.
    * Each `dbt build` writes ~5 MB into its own target folder; nothing removed them (1.4 GB a day at a tick every
      5 minutes). A successful build's folder is removed once read; a failed build's is kept for inspection and its
      path logged."""
    from personalization_assets import warehouse as warehouse_layer
    from personalization_assets.core.storage import LakeStorage
    from personalization_assets.settings import load_settings
    from personalization_assets.warehouse import assets as warehouse_assets
    from personalization_assets.warehouse.assets import project_fingerprint

    removed: list[tuple[str, list[str]]] = []
    remove = warehouse_assets.remove_invocation_folder

    def read_then_remove(path):  # the successful build's dbt.log, read before its folder goes
        removed.append((path.name, _dbt_log_messages(path)))
        remove(path)

    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp_path / "data", tmp_path / "dbt_target")
        mp.setattr(warehouse_assets, "remove_invocation_folder", read_then_remove)
        defs = warehouse_layer.defs(load_settings())
        resources = {"lake": LakeStorage(url=str(tmp_path / "data" / "lake")), **defs.resources}
        dbt_assets = [a for a in defs.assets if "warehouse_dbt" in a.node_def.name]
        # no feature tables in the lake yet: the staging models' sources are missing and the build fails
        instance = dg.DagsterInstance.ephemeral()
        failed = dg.materialize(dbt_assets, resources=resources, raise_on_error=False, instance=instance)
        assert not failed.success
        kept = list((tmp_path / "dbt_target").glob(f"warehouse_dbt-{failed.run_id[:7]}-*"))
        assert len(kept) == 1 and (kept[0] / "run_results.json").exists()
        assert not removed
        messages = [entry.user_message for entry in instance.all_logs(failed.run_id)]
        assert any(str(kept[0]) in m for m in messages), "the kept folder's path is logged"
        # the failed build ran no complete, passing set of unit tests: nothing recorded
        assert not list((tmp_path / "data" / "dbt_state").glob("unit_tests_passed-*"))
        write_feature_lake(tmp_path / "data")
        result = dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)
        assert result.success
        assert len(_unit_test_observations(result)) == 7, "the first successful build of this project content runs the unit tests"
        # the next build of the same project content leaves them out (they test SQL on fixed inputs, not the data)
        again = dg.materialize(dbt_assets, resources=resources, raise_on_error=False, instance=instance)
        assert again.success
        assert _unit_test_observations(again) == []
        assert any("dbt unit tests not run" in e.user_message for e in instance.all_logs(again.run_id))
        assert [p.name for p in (tmp_path / "data" / "dbt_state").glob("unit_tests_passed-*")] == [
            warehouse_assets.unit_tests_marker(str(tmp_path / "data" / "dbt_state"), project_fingerprint(), "local").name]
        # another project content (or dbt / adapter version) has another marker: its first build runs them again
        assert warehouse_assets.unit_tests_marker("d", "other", "local") != warehouse_assets.unit_tests_marker("d", project_fingerprint(), "local")
    assert list((tmp_path / "dbt_target").glob(f"warehouse_dbt-{result.run_id[:7]}-*")) == []
    assert len(list((tmp_path / "dbt_target").glob("warehouse_dbt-*"))) == 1  # the failed build's only
    assert [name.split("-")[1] for name, _ in removed] == [result.run_id[:7], again.run_id[:7]]
    second = removed[0][1]
    assert not [m for m in second if "Unable to do partial parsing" in m], [m for m in second if "partial" in m.lower()]
    assert any("Partial parsing enabled" in m for m in second), [m for m in second if "pars" in m.lower()][:10]
    assert [p.name for p in (tmp_path / "data" / "dbt_state").glob("partial_parse*")] == [
        f"partial_parse-{project_fingerprint()[:32]}.msgpack"]


def _project_copy(dest, description: str):
    """A copy of the dbt project whose user_segments model carries `description` (a schema-file-only change)."""
    import shutil

    from personalization_assets.warehouse.project import dbt_project

    shutil.copytree(dbt_project.project_dir, dest, ignore=shutil.ignore_patterns("target", "logs"))
    yml = dest / "models" / "marts" / "user_segments.yml"
    text = yml.read_text()
    marker = "  - name: user_segments\n    description: |\n      "
    assert marker in text
    yml.write_text(text.replace(marker, marker + f"{description}. ", 1))
    return dest


def _parse(project, target, cache_dir, seed):
    """`dbt parse` of `project` into `target`, the partial-parse state seeded by `seed` and saved as the dbt step does;
    returns user_segments' description in the manifest."""
    import subprocess
    import sys
    from pathlib import Path

    from personalization_assets.warehouse.assets import project_fingerprint, save_partial_parse

    fingerprint = project_fingerprint(project)
    seed(cache_dir, target, fingerprint)
    dbt = Path(sys.executable).parent / "dbt"
    proc = subprocess.run([str(dbt), "parse", "--project-dir", str(project), "--profiles-dir", str(project), "--target", "local",
                           "--target-path", str(target)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    save_partial_parse(target, cache_dir, fingerprint)
    manifest = json.loads((target / "manifest.json").read_text())
    return manifest["nodes"]["model.personalization.user_segments"]["description"].split(".")[0]


def test_a_partial_parse_state_of_another_checkout_never_reaches_this_one(tmp_path, monkeypatch):
    """Two checkouts of the project (two versions) on one data dir, run alternately: A, B, A. dbt trusts a schema file
    whose modification time equals the one it recorded without reading it, and B's state carried A's time for the file
    B had changed: A's third parse kept B's schema (its unit tests, its descriptions). Measured: after an older
    checkout ran dbt on this data dir, the current code's build failed on the older unit tests until the state was
    deleted. States are now kept per project content (`project_fingerprint`). With the state seeded whatever project
    saved it (the code before), the third parse here returns "version B" (checked with real dbt 1.11)."""
    from personalization_assets.warehouse.assets import seed_partial_parse

    isolated_env(monkeypatch, tmp_path / "data", tmp_path / "unused_target")
    a = _project_copy(tmp_path / "a", "version A")
    b = _project_copy(tmp_path / "b", "version B")
    cache = str(tmp_path / "data" / "dbt_state")
    assert _parse(a, tmp_path / "t1", cache, seed_partial_parse) == "version A"
    assert _parse(b, tmp_path / "t2", cache, seed_partial_parse) == "version B"
    assert _parse(a, tmp_path / "t3", cache, seed_partial_parse) == "version A"


def test_the_state_is_kept_per_project_content_not_per_modification_time(tmp_path):
    from personalization_assets.warehouse.assets import project_fingerprint, save_partial_parse, seed_partial_parse

    a = _project_copy(tmp_path / "a", "version A")
    before = project_fingerprint(a)
    yml = a / "models" / "marts" / "user_segments.yml"
    stat = yml.stat()
    yml.write_text(yml.read_text().replace("version A", "version Z"))
    import os

    os.utime(yml, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same modification time, other content
    after = project_fingerprint(a)
    assert after != before
    (a / "target").mkdir()
    (a / "target" / "anything.json").write_text("{}")  # artifacts are not the project
    assert project_fingerprint(a) == after
    target, cache = tmp_path / "t", str(tmp_path / "cache")
    target.mkdir()
    (target / "partial_parse.msgpack").write_bytes(b"state of A")
    save_partial_parse(target, cache, before)
    assert not seed_partial_parse(cache, tmp_path / "t2", after) and not (tmp_path / "t2").exists()
    assert seed_partial_parse(cache, tmp_path / "t3", before) and (tmp_path / "t3" / "partial_parse.msgpack").read_bytes() == b"state of A"
