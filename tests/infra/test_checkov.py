"""checkov over infra/ reports 0 failed checks; every skip carries a justification.

checkov lives in its own virtualenv (.venv-tools, created by infra/scripts/install-tools.sh) because its
pins clash with the project's. Without it the test is skipped, unless PERSONALIZATION_REQUIRE_INFRA_TOOLS
is set (make test / CI), in which case it fails.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import INFRA, REPO_ROOT, require_tool

GATE_COMMAND = ["-d", "infra", "--skip-download", "--quiet", "--compact", "-o", "json"]
SKIP_PATTERN = re.compile(r"#\s*checkov:skip=(CKV\w*_\d+):?(.*)")
# Kubernetes manifests cannot carry skip comments: checkov reads `checkov.io/skip<N>: "<CHECK>=<reason>"` annotations
ANNOTATION_SKIP_PATTERN = re.compile(r"checkov\.io/skip\d+:\s*[\"']?(CKV\w*_\d+)=([^\"']*)")
MIN_REASON_CHARS = 40


@pytest.fixture(scope="module")
def checkov() -> str:
    return require_tool(
        "checkov",
        [REPO_ROOT / ".venv-tools" / "bin" / "checkov"],
        "infra/scripts/install-tools.sh (creates .venv-tools with checkov)",
    )


def _run(checkov: str, args: list[str], cwd: Path = REPO_ROOT) -> list[dict]:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as out_dir:
        result = subprocess.run(
            # the report is read from the file checkov writes, not its stdout: a run's stdout was once cut at
            # 128 KiB (a full report is ~130 KiB) on a loaded machine, and parsed as truncated JSON
            [checkov, *args, "--output-file-path", out_dir],
            cwd=cwd,
            # checkov gives up parsing a file after 10 s; on a busy 2-core machine (the suite runs in parallel)
            # a small file can take that long, which shows up as a parsing error, not a verdict
            env={**os.environ, "HCL_PARSE_TIMEOUT_SEC": "120"},
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
        # checkov exits 1 when a check fails and 0 otherwise; anything else is a crash.
        assert result.returncode in (0, 1), (
            f"checkov crashed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
        report = Path(out_dir) / "results_json.json"
        assert report.is_file(), f"checkov wrote no report:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        parsed = json.loads(report.read_text())
    reports = parsed if isinstance(parsed, list) else [parsed]
    return [r for r in reports if isinstance(r, dict) and "check_type" in r]


def _describe(failed: list[dict]) -> str:
    return "\n".join(
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c.get('file_line_range')}"
        for c in failed
    )


def test_checkov_reports_no_failed_checks(checkov):
    reports = _run(checkov, GATE_COMMAND)
    by_type = {r["check_type"]: r for r in reports}
    assert {"terraform", "dockerfile", "kubernetes"} <= set(by_type), (
        f"frameworks scanned: {sorted(by_type)}"
    )
    assert by_type["terraform"]["summary"]["resource_count"] > 100, (
        "checkov did not see the Terraform modules"
    )
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert not failed, "checkov failed checks:\n" + _describe(failed)
    for report in reports:
        assert report["summary"]["failed"] == 0
        assert report["summary"]["parsing_errors"] == 0, (
            f"{report['check_type']}: parsing errors"
        )


def test_every_skip_is_justified_in_place(checkov):
    reports = _run(
        checkov, ["-d", "infra", "--skip-download", "--compact", "-o", "json"]
    )
    skipped = [
        c for r in reports for c in r.get("results", {}).get("skipped_checks", [])
    ]
    assert skipped, "expected the documented skips (KMS key policies, log buckets, ...)"
    for check in skipped:
        reason = (check.get("suppress_comment") or "").strip()
        if not reason:
            # checkov does not report the comment text for every framework (Dockerfiles, Kubernetes
            # annotations): read it from the suppression comment or annotation in the scanned file (its path is
            # relative to infra/, or to the repository for Kubernetes manifests).
            relative = check["file_path"].lstrip("/")
            source = INFRA / relative if (INFRA / relative).is_file() else REPO_ROOT / relative
            reasons = [
                m.group(2).strip()
                for line in source.read_text(encoding="utf-8").splitlines()
                for m in (SKIP_PATTERN.search(line), ANNOTATION_SKIP_PATTERN.search(line))
                if m and m.group(1) == check["check_id"]
            ]
            reason = reasons[0] if reasons else ""
        assert len(reason) >= MIN_REASON_CHARS, (
            f"{check['check_id']} on {check['resource']} skipped without a real reason: {reason!r}"
        )


def test_skip_comments_in_sources_all_have_reasons():
    found = 0
    for path in sorted(INFRA.rglob("*")):
        if (
            not path.is_file()
            or path.suffix not in {".tf", ".yaml", ".yml", ""}
            and path.name != "Dockerfile"
        ):
            continue
        for number, line in enumerate(
            path.read_text(encoding="utf-8", errors="ignore").splitlines(), 1
        ):
            match = SKIP_PATTERN.search(line) or ANNOTATION_SKIP_PATTERN.search(line)
            if match:
                found += 1
                assert len(match.group(2).strip()) >= MIN_REASON_CHARS, (
                    f"{path}:{number}: skip without justification"
                )
    assert found > 0


def test_checkov_detects_a_violation(checkov, tmp_path):
    """The gate can fail: an unencrypted, unversioned, publicly readable bucket is reported."""
    (tmp_path / "main.tf").write_text(
        'resource "aws_s3_bucket" "bad" {\n  bucket = "example-bad-bucket"\n}\n\n'
        'resource "aws_s3_bucket_acl" "bad" {\n  bucket = aws_s3_bucket.bad.id\n  acl    = "public-read"\n}\n'
    )
    reports = _run(
        checkov,
        [
            "-d",
            str(tmp_path),
            "--framework",
            "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        cwd=tmp_path,
    )
    failed = {
        c["check_id"]
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    }
    assert "CKV_AWS_20" in failed or "CKV2_AWS_6" in failed, failed
