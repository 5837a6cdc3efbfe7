"""Honest per-partition metadata, read the way the UI reads it: through a real dagster-webserver's GraphQL.

A range run of raw/events (one run, many hours: BackfillPolicy.single_run) must record on EACH hourly
partition that hour's own rows read / written / quarantined / suppressed, adding up to the landing files'
line counts of that hour; the run's totals live on the run (tags), not on every partition. The same run
writes consented/events: each hour records its own rows and PII counts (adding up to the run's tags), and its
anomaly checks are listed per hour (the check has the hourly partitions definition).
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.helpers import anomaly_config_file, block_on_event_anomalies, generate
from tests.ui.test_webserver_ui import gql
from tests.conftest import platform_free_environ

BIN = Path(sys.executable).parent
RAW_TOTALS = "personalization/totals/raw/events/"

MATERIALIZATIONS = """
query ($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}"""
RUN_TAGS = "query ($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } } } }"
CONSENTED_TOTALS = "personalization/totals/consented/events/"
CHECK_EXECUTIONS = """
query ($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 500) { partition status }
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name partitionDefinition { description } } } } }
  }
}"""
SELECTION = " or ".join(f"key:{k}" for k in ("raw/events", "privacy/identity_links", "privacy/consent_ledger", "privacy/consent_state",
                                               "privacy/suppression_list", "consented/events", "consented/events_state"))


def _landing_lines(landing: Path) -> Counter:
    """Lines per landing hour (partition key YYYY-MM-DD-HH:00), counted from the files themselves."""
    counts: Counter = Counter()
    for f in (landing / "events").rglob("*"):
        if not f.is_file():
            continue
        parts = dict(p.split("=", 1) for p in f.relative_to(landing / "events").parts[:-1])
        data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        counts[f"{parts['date']}-{parts['hour']}:00"] += sum(1 for line in data.splitlines() if line.strip())
    return counts


def test_each_hour_records_its_own_figures_and_the_run_holds_the_totals(tmp_path):
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    generate(data / "landing", users=120, events=4000, bad_fraction=0.0, days=1, end="2026-11-28")
    lines = _landing_lines(data / "landing")
    assert len(lines) >= 20 and len(set(lines.values())) > 3  # hours differ: repeated totals could not pass

    env = platform_free_environ()
    env.update(PERSONALIZATION_DATA_DIR=str(data), DAGSTER_HOME=str(home), PERSONALIZATION_EVENTS_START="2026-01-01",
               PYTHONPATH=str(ROOT),
               # the hourly anomaly checks block here, so each hour records its warm-up pass (the UI lists them by hour);
               # with the default non-blocking checks an hour warming up records no evaluation
               PERSONALIZATION_ANOMALY_CONFIG=anomaly_config_file(tmp_path, block_on_event_anomalies))
    # one range run over every landing hour, from the CLI (as a user would)
    run = subprocess.run([str(BIN / "personalization"), "materialize", "--select", SELECTION], check=False, cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    port = free_port()
    proc = subprocess.Popen([str(BIN / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=env, stdout=open(tmp_path / "webserver.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/server_info", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "webserver.log").read_text()[-3000:]
                time.sleep(0.5)
        found = gql(url, MATERIALIZATIONS, {"path": ["raw", "events"], "partitions": sorted(lines)})
        mats = found["assetOrError"]["assetMaterializations"]
        by_partition = {m["partition"]: {e["label"]: e.get("intValue") for e in m["metadataEntries"]} for m in mats}
        assert set(by_partition) == set(lines)
        run_ids = {m["runId"] for m in mats}
        assert len(run_ids) == 1  # one range run
        for pk, md in by_partition.items():
            # this hour's own figures: read = the hour's landing lines = written + quarantined + suppressed
            assert md["records_read"] == lines[pk], pk
            assert md["rows_written"] + md["quarantined"] + md["suppressed_erased_subjects"] == lines[pk], pk
            assert md["dagster/row_count"] == md["rows_written"]
            assert "partitions" not in md  # no run-level figures on a partition
        assert sum(md["records_read"] for md in by_partition.values()) == sum(lines.values())

        q = gql(url, MATERIALIZATIONS, {"path": ["raw", "events_quarantine"], "partitions": sorted(lines)})
        q_rows = {m["partition"]: {e["label"]: e.get("intValue") for e in m["metadataEntries"]} for m in q["assetOrError"]["assetMaterializations"]}
        assert all(q_rows[pk]["rows_written"] == by_partition[pk]["quarantined"] for pk in lines)

        # the run's totals live on the run
        tags = {t["key"]: t["value"] for t in gql(url, RUN_TAGS, {"id": run_ids.pop()})["runOrError"]["tags"]}
        assert int(tags[RAW_TOTALS + "records_read"]) == sum(lines.values())
        assert int(tags[RAW_TOTALS + "rows_written"]) == sum(md["rows_written"] for md in by_partition.values())
        assert int(tags[RAW_TOTALS + "partitions"]) == len(lines)

        # consented/events: each hour its own rows and PII counts, adding up to the run's totals
        c = gql(url, MATERIALIZATIONS, {"path": ["consented", "events"], "partitions": sorted(lines)})["assetOrError"]["assetMaterializations"]
        consented = {m["partition"]: {e["label"]: e.get("intValue") for e in m["metadataEntries"]} for m in c}
        assert set(consented) == set(lines)
        assert all(md["raw_rows_read"] == by_partition[pk]["rows_written"] for pk, md in consented.items())
        assert len({md["rows_written"] for md in consented.values()}) > 3  # the hours' own figures, not one total
        assert sum(md["rows_written"] for md in consented.values()) == int(tags[CONSENTED_TOTALS + "rows_written"])
        assert sum(md["pii_redacted_total"] for md in consented.values()) == int(tags[CONSENTED_TOTALS + "pii_redacted"])
        # the anomaly checks of consented/events, per hour (warming up: the blocking checks' passes)
        for name in ("anomaly_volume", "anomaly_null_rate"):
            found = gql(url, CHECK_EXECUTIONS, {"path": ["consented", "events"], "name": name})
            assert {e["partition"] for e in found["assetCheckExecutions"]} == set(lines), name
            assert all(e["status"] == "SUCCEEDED" for e in found["assetCheckExecutions"])
            checks = {ch["name"]: ch for ch in found["assetNodeOrError"]["assetChecksOrError"]["checks"]}
            assert checks[name]["partitionDefinition"] is not None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
