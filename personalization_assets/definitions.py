"""The single entry point: `dagster dev`, `dg`, the webserver, the CLI and the tests load `defs` from here.

Folder = layer: each layer package exposes one `defs(settings)` returning its `dg.Definitions` (assets, checks,
the resources it owns, its jobs, schedules and sensors), and this module merges them, with the resources every
layer shares (`resources.build_resources`) and the executor. Two layers are handed the others' definitions: the
privacy layer derives the erasure plan from the lineage of every asset, and automation targets them.

Local and production differ only in the resources (chosen by PERSONALIZATION_ENV); the asset graph is
identical. Settings and privacy policies are validated while this module loads, so a misconfiguration
fails here with a message naming the setting (or policy file and key) and the fix.
"""

from __future__ import annotations

import dagster as dg

from personalization_assets import automation, consented, exports, features, privacy, raw, warehouse
from personalization_assets.automation import staleness
from personalization_assets.core.policies import get_policy
from personalization_assets.resources import build_resources
from personalization_assets.settings import Settings, load_settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    get_policy()  # validate privacy_policies/ at load time: a bad file fails here, naming file and key
    shared = dg.Definitions(
        resources=build_resources(settings),
        # steps run in the run's own process: our steps are few and heavy (DuckDB uses the cores); the
        # multiprocess executor's per-step process start (≈3 s each here) dominated small runs. Every run is tagged
        # with the fingerprint of the code it runs, also when launched from the UI (automation/staleness.py)
        executor=staleness.fingerprinting_executor,
    )
    data = dg.Definitions.merge(
        shared,
        raw.defs(settings),
        consented.defs(settings),
        features.defs(settings),
        warehouse.defs(settings),
        exports.defs(settings),
    )
    # every run this code launches (the privacy jobs' and the automation's) names the code, policies and settings it
    # ran with, so a later `personalization materialize` does not rebuild what they built (automation/staleness.py)
    run_tags = staleness.run_tags()
    data = dg.Definitions.merge(data, privacy.defs(settings, lineage=data, job_tags=run_tags))
    defs = dg.Definitions.merge(data, automation.defs(settings, platform=data, run_tags=run_tags))
    inputs_of_step = automation.step_inputs(data)
    return defs.map_resolved_asset_specs(func=lambda spec: automation.automate(spec, inputs_of_step))


defs = build_definitions()
