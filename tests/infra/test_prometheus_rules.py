"""Alerting rules: promtool accepts them, their unit tests pass, and they use exactly the metric names
the exporter publishes (a contract with personalization_assets)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from .conftest import INFRA, require_tool

RULES = INFRA / "monitoring" / "alerts.yml"
RULE_TESTS = INFRA / "monitoring" / "alerts_test.yml"
README = INFRA / "monitoring" / "README.md"

METRICS = {
    "personalization_rows_in_total": {"asset", "partition"},
    "personalization_rows_out_total": {"asset", "partition"},
    "personalization_rows_quarantined_total": {"asset", "partition", "reason"},
    "personalization_run_duration_seconds": {"job", "status"},
    "personalization_runs_failed_total": {"job"},
    "personalization_freshness_lag_seconds": {"asset"},
    "personalization_dp_budget_remaining_epsilon": {"period"},
    "personalization_last_success_timestamp_seconds": {"job"},
    "personalization_anomaly_check_failed": {"asset", "check", "partition", "severity"},
    "personalization_anomaly_score": {"asset", "check", "partition"},
    "personalization_landing_to_fresh_lag_seconds": {"layer"},
}
REQUIRED_ALERT_TOPICS = {
    "latency": "personalization_run_duration_seconds",
    "freshness": "personalization_freshness_lag_seconds",
    "quarantine": "personalization_rows_quarantined_total",
    "failed runs": "personalization_runs_failed_total",
    "dp budget": "personalization_dp_budget_remaining_epsilon",
    "data anomalies": "personalization_anomaly_check_failed",
    "landing-to-fresh lag": "personalization_landing_to_fresh_lag_seconds",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool(
        "promtool",
        ["promtool"],
        "sudo infra/scripts/install-system-deps.sh (Debian package prometheus)",
    )


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules(promtool):
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_unit_tests(promtool):
    result = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(promtool, tmp_path):
    """Proof the unit tests bite: the same tests against rules with a raised threshold fail."""
    tampered = RULES.read_text(encoding="utf-8").replace(
        "personalization:quarantine_ratio:30m > 0.01",
        "personalization:quarantine_ratio:30m > 0.5",
    )
    assert tampered != RULES.read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(tampered)
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text(encoding="utf-8"))
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "PersonalizationQuarantineRateHigh" in result.stdout + result.stderr


def test_unit_tests_cover_quarantine_and_failed_runs():
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    tested = {
        t["alertname"]
        for case in tests
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert {"PersonalizationQuarantineRateHigh", "PersonalizationRunFailed"} <= tested
    # alerts on data: each has a case where it fires and one where it stays quiet
    data_alerts = {"PersonalizationDataAnomaly", "PersonalizationDataAnomalyBlocking", "PersonalizationLayerLagHigh", "PersonalizationLayerLagCritical"}
    assert data_alerts <= tested, data_alerts - tested
    silent = {
        t["alertname"]
        for case in tests
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts") == []
    }
    assert {
        "PersonalizationQuarantineRateHigh",
        "PersonalizationRunFailed",
    } <= silent, "also test that they stay quiet"
    assert data_alerts <= silent, data_alerts - silent


def test_only_contract_metrics_and_labels_are_used(rules):
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        expr = rule["expr"]
        for name in re.findall(r"\b(personalization_[a-z_]+)\b", expr):
            assert name in METRICS, (
                f"{rule.get('alert') or rule.get('record')}: unknown metric {name}"
            )
        for metric, labels in re.findall(
            r"\b(personalization_[a-z_]+)\{([^}]*)\}", expr
        ):
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", labels))
            assert used <= METRICS[metric], (
                f"{metric} has no label(s) {used - METRICS[metric]}"
            )
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert any(label in labels for labels in METRICS.values()), (
                    f"grouping by unknown label {label}"
                )
        for name in re.findall(r"\b(personalization:[a-z_:0-9]+)\b", expr):
            assert name in recorded


def test_every_topic_has_an_alert_with_documented_threshold(rules):
    alerts = [rule for rule in rules if "alert" in rule]
    readme = README.read_text(encoding="utf-8")
    for topic, metric in REQUIRED_ALERT_TOPICS.items():
        matching = [
            a
            for a in alerts
            if metric in a["expr"]
            or ("quarantine_ratio" in a["expr"] and topic == "quarantine")
        ]
        assert matching, f"no alert for {topic}"
    for alert in alerts:
        assert alert["annotations"].get("threshold"), (
            f"{alert['alert']} has no threshold annotation"
        )
        assert alert["labels"].get("severity") in {"warning", "critical"}
        assert alert["alert"] in readme, (
            f"{alert['alert']} is not documented in infra/monitoring/README.md"
        )


# ------------------------------------------------------------------------------------------------
# the event collector's metrics: scraped from its pod, a contract with collector/metrics.py itself
# ------------------------------------------------------------------------------------------------

COLLECTOR_METRIC = re.compile(r"\b(collector_[a-z_]+)\b")


def _collector_contract() -> dict[str, set[str]]:
    """{exported series name: label names} of the collector's real registry (counters as `_total`, histograms as
    `_bucket`/`_count`/`_sum`), read from its metric objects: labelled metrics export nothing until used."""
    from personalization_assets.collector.metrics import CollectorMetrics

    out: dict[str, set[str]] = {}
    for metric in vars(CollectorMetrics()).values():
        kind = getattr(metric, "_type", None)
        if kind is None:
            continue
        name, labels = metric._name, set(metric._labelnames)
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out.update({f"{name}_bucket": labels | {"le"}, f"{name}_count": labels, f"{name}_sum": labels})
        else:
            out[name] = labels
    return out


def test_collector_rules_use_only_what_the_collector_exports(rules):
    contract = _collector_contract()
    assert "collector_rejects_total" in contract and contract["collector_rejects_total"] == {"reason"}
    used = set()
    for rule in rules:
        expr = rule["expr"]
        for name in COLLECTOR_METRIC.findall(expr):
            assert name in contract, f"{rule.get('alert') or rule.get('record')}: the collector exports no {name}"
            used.add(name)
        for metric, labels in re.findall(r"\b(collector_[a-z_]+)\{([^}]*)\}", expr):
            names = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", labels))
            assert names <= contract[metric], f"{metric} has no label(s) {names - contract[metric]}"
    assert used, "no alert watches the collector"
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    for case in tests:
        for series in case.get("input_series", []):
            name, _, labels = series["series"].partition("{")
            if name.startswith("collector_"):
                assert name in contract, f"alerts_test.yml feeds {name}, which the collector does not export"
                names = set(re.findall(r"(\w+)\s*=", labels))
                assert names <= contract[name], f"alerts_test.yml: {name} has no label(s) {names - contract[name]}"
    readme = README.read_text(encoding="utf-8")
    documented = {n for n in contract if not n.endswith(("_bucket", "_count", "_sum"))} | {
        n[: -len("_bucket")] for n in contract if n.endswith("_bucket")
    }
    missing = sorted(n for n in documented if n not in readme)
    assert not missing, f"infra/monitoring/README.md does not document {missing}"


def test_collector_alerts_fire_and_stay_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    cases = [t for case in tests for t in case.get("alert_rule_test", [])]
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] if g["name"] == "personalization-collector" for r in g["rules"]}
    assert alerts == {"PersonalizationCollectorWritesFailing", "PersonalizationCollectorDown", "PersonalizationPreferenceCenterNotSynced"}
    assert alerts <= {t["alertname"] for t in cases if t.get("exp_alerts")}, "each collector alert has a case where it fires"
    assert alerts <= {t["alertname"] for t in cases if t.get("exp_alerts") == []}, "and one where it stays quiet"
