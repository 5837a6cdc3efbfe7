"""The ONLY place the tests touch Dagster's private modules (`dagster._…`), each for a reason no public API covers.
tests/test_public_dagster_api.py fails on a `dagster._` import anywhere else in tests/ or bench/. On a Dagster
upgrade, this file is the one to check.

* Validating a dagster.yaml WITHOUT opening its storage: `DagsterInstance.from_config` connects to Postgres at
  construction, so the offline checks of infra/dagster/dagster.prod.yaml use the loader it calls
  (`dagster_instance_config`) and the config processor of a configurable class (`process_config`,
  `ConfigurableClassData.rehydrate`), as `from_config` itself does.
* Putting an asset in a freshness state: the FreshnessDaemon records `FreshnessStateChange` events in a
  deployment; no public call sets the state, and Dagster's own tests report the same event.
* Resetting the defs-state storage that Dagster keeps in a process-wide context variable (see
  tests/conftest.py::_reset_dagster_process_state).
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
from dagster._config import process_config
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.defs_state.base import _current_storage
from dagster._serdes.config_class import ConfigurableClassData

__all__ = ["FreshnessState", "instance_config", "process_config", "rehydrate", "report_freshness_state",
           "reset_defs_state_storage"]


def instance_config(instance_dir: Path | str) -> tuple[dict, object]:
    """(validated config, custom instance class or None) of `instance_dir`/dagster.yaml, as Dagster's loader reads it.
    Raises dagster.DagsterInvalidConfigError on an invalid file."""
    return dagster_instance_config(str(instance_dir))


def rehydrate(section: dict, as_type: type):
    """The configurable class a dagster.yaml section names (`module`, `class`, `config`), built from its config the
    way the instance builds it (the config is validated against the class's schema)."""
    import yaml

    return ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config", {}))).rehydrate(as_type=as_type)


def report_freshness_state(instance: dg.DagsterInstance, key: dg.AssetKey, state: FreshnessState,
                           previous: FreshnessState = FreshnessState.UNKNOWN) -> None:
    """Record that `key`'s freshness state changed from `previous` to `state` now (what the FreshnessDaemon records)."""
    instance.report_runless_asset_event(
        FreshnessStateChange(key=key, previous_state=previous, new_state=state, state_change_timestamp=time.time())
    )


def reset_defs_state_storage() -> None:
    """Forget the defs-state storage of the last instance entered in this process."""
    _current_storage.set(None)
