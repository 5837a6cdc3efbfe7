"""The UI end to end: a real dagster-webserver on 127.0.0.1 serving the project's definitions.

Through GraphQL: every layer is present, landing -> segments is one connected graph, checks are attached,
and a materialization launched on demand succeeds. Then headless Chromium (Debian's package, driven by
Playwright with executable_path — no browser download) renders the lineage page with our asset names;
the screenshot is kept in tests/artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.conftest import platform_free_environ

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def gql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(url + "/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    data, home = root / "data", root / "home"
    home.mkdir()
    # default run coordinator: the webserver launches runs itself (no daemon needed); telemetry/nux off
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    env = platform_free_environ()
    env.update(PERSONALIZATION_DATA_DIR=str(data), DAGSTER_HOME=str(home), PERSONALIZATION_EVENTS_START="2026-01-01")
    catalog = data / "landing" / "catalog"
    catalog.mkdir(parents=True)
    (catalog / "catalog.jsonl").write_text('{"content_id": "c1", "title": "T", "category": "news", "tags": [], "author": "a", '
                                           '"published_at": "2026-01-01T00:00:00Z", "premium": false, "price": null}\n')
    port = free_port()
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bindir / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=open(root / "webserver.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/server_info", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("webserver did not start:\n" + (root / "webserver.log").read_text()[-3000:])
                time.sleep(0.5)
        yield {"url": url, "data": data}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_asset_graph_is_one_connected_lineage_with_checks(webserver):
    data = gql(webserver["url"], "{ assetNodes { assetKey { path } groupName dependencyKeys { path } "
                                 "assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    groups = {n["groupName"] for n in nodes.values()}
    assert {"raw", "privacy", "features", "segments"} <= groups, groups
    # walk upstream from every mart: each reaches raw/events
    parents = {k: {"/".join(d["path"]) for d in n["dependencyKeys"]} for k, n in nodes.items()}

    def reaches_raw(key, seen=()):
        if key == "raw/events":
            return True
        return any(reaches_raw(p, (*seen, key)) for p in parents.get(key, ()) if p not in seen)

    marts = [k for k, n in nodes.items() if n["groupName"] == "segments"]
    assert marts and all(reaches_raw(m) for m in marts), [m for m in marts if not reaches_raw(m)]
    checks = {k: [c["name"] for c in (n["assetChecksOrError"] or {}).get("checks", [])] for k, n in nodes.items()}
    assert "reconciliation" in checks["raw/events"]
    assert any(c.startswith("pandera_") for c in checks["features/user_rfm"])
    assert any(checks[m] for m in marts), "dbt tests are asset checks on the marts"


def test_launch_a_materialization_on_demand(webserver):
    url = webserver["url"]
    repo = gql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    node = repo["repositoriesOrError"]["nodes"][0]
    mutation = """
    mutation Launch($params: ExecutionParams!) {
      launchPipelineExecution(executionParams: $params) {
        __typename
        ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message }
        ... on InvalidSubsetError { message }
        ... on RunConfigValidationInvalid { errors { message } }
      }
    }"""
    params = {"selector": {"repositoryLocationName": node["location"]["name"], "repositoryName": node["name"], "pipelineName": "__ASSET_JOB",
                           "assetSelection": [{"path": ["raw", "content_catalog"]}, {"path": ["raw", "content_catalog_quarantine"]}],
                           "assetCheckSelection": [{"assetKey": {"path": ["raw", "content_catalog"]}, "name": n}
                                                   for n in ("reconciliation", "pandera_RawContent")]},
              "mode": "default", "runConfigData": "{}"}
    result = gql(url, mutation, {"params": params})["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    run_id = result["run"]["runId"]
    status = None
    deadline = time.time() + 180
    while time.time() < deadline:
        status = gql(url, "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS"
    assert (webserver["data"] / "lake" / "raw" / "content_catalog" / "data.parquet").exists()


def test_lineage_page_renders_in_headless_chromium(webserver):
    if not Path(CHROMIUM).exists():
        if os.environ.get("PERSONALIZATION_REQUIRE_INFRA_TOOLS"):
            pytest.fail("chromium missing: run infra/scripts/install-system-deps.sh")
        pytest.skip("Debian chromium not installed")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1100})
            # the global lineage page: with this many assets Dagster draws one node per group (= layer)
            page.goto(webserver["url"] + "/asset-groups", wait_until="domcontentloaded", timeout=60_000)
            try:
                for group in ("raw", "privacy", "features", "warehouse", "segments", "exports"):
                    page.locator("svg foreignObject").filter(has_text=group).first.wait_for(state="visible", timeout=60_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "lineage.png"), full_page=True)
            # the upstream lineage of a mart: every layer's assets, by name, from landing to the segment
            page.goto(webserver["url"] + "/assets/segments/user_segments?view=lineage&lineageScope=upstream&lineageDepth=12",
                      wait_until="domcontentloaded", timeout=60_000)
            try:
                for name in ("user_segments", "user_rfm", "consent_state", "events"):
                    page.locator("svg foreignObject").filter(has_text=name).first.wait_for(state="visible", timeout=60_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "lineage_user_segments.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "lineage.png").stat().st_size > 10_000
    assert (ARTIFACTS / "lineage_user_segments.png").stat().st_size > 10_000
