"""Bad requests get the right status and the reason, write nothing, and are counted in the metrics."""

from __future__ import annotations

import base64
import gzip
import json
import uuid

import pytest
import requests

from tests.collector.conftest import (
    WRITE_KEY,
    landing_messages,
    landing_objects,
)


def _msg(i: int, size: int = 0) -> dict:
    m = {"type": "track", "event": "Article Viewed", "userId": "u1", "messageId": f"m-{i}", "timestamp": "2026-12-01T10:00:00Z"}
    if size:
        m["properties"] = {"blob": "x" * size}
    return m


def _json(body) -> bytes:
    return json.dumps(body).encode()


BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(), "Content-Type": "application/json"}
CASES = [
    # name, headers, body, status, reason
    ("no auth", {"Content-Type": "application/json"}, _json({"batch": [_msg(1)]}), 401, "no_auth"),
    ("unknown key", {**BASIC, "Authorization": "Basic " + base64.b64encode(b"not-a-key-at-all:").decode()}, _json({"batch": [_msg(1)]}), 401, "bad_write_key"),
    ("unknown key in the body", {"Content-Type": "text/plain"}, _json({"batch": [_msg(1)], "writeKey": "wrong-key-123"}), 401, "bad_write_key"),
    ("not basic auth", {**BASIC, "Authorization": "Bearer abc"}, _json({"batch": [_msg(1)]}), 401, "bad_auth_header"),
    ("malformed JSON", BASIC, b'{"batch": [{"type": "track",', 400, "malformed_json"),
    ("a 40 KB message", BASIC, _json({"batch": [_msg(1), _msg(2, size=40 * 1024)]}), 400, "message_too_large"),
    ("a 600 KB batch", BASIC, _json({"batch": [_msg(i, size=20 * 1024) for i in range(30)]}), 400, "batch_too_large"),
    ("a gzip body inflating to 600 KB", {**BASIC, "Content-Encoding": "gzip"},
     gzip.compress(_json({"batch": [_msg(i, size=20 * 1024) for i in range(30)]})), 400, "batch_too_large"),
    ("a body that is not gzip", {**BASIC, "Content-Encoding": "gzip"}, _json({"batch": [_msg(1)]}), 400, "malformed_gzip"),
    ("a wrong content type", {**BASIC, "Content-Type": "application/x-www-form-urlencoded"}, b"batch=1", 415, "unsupported_content_type"),
    ("no content type", {"Authorization": BASIC["Authorization"]}, _json({"batch": [_msg(1)]}), 415, "unsupported_content_type"),
    ("an empty batch", BASIC, _json({"batch": []}), 400, "malformed_batch"),
    ("a message that is not an object", BASIC, _json({"batch": [_msg(1), "hello"]}), 400, "malformed_message"),
    ("an unknown message type", BASIC, _json({"batch": [{**_msg(1), "type": "purchase"}]}), 400, "unknown_type"),
]


@pytest.mark.parametrize("name, headers, body, status, reason", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_rejected_with_its_reason_writes_nothing_and_is_counted(shared_collector, name, headers, body, status, reason):
    collector, landing = shared_collector
    before = collector.metrics().get(f'collector_rejects_total{{reason="{reason}"}}', 0)
    objects = landing_objects(landing)
    r = requests.post(collector.url + "/v1/batch", data=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["code"] == reason and r.json()["message"]
    assert landing_objects(landing) == objects
    assert collector.metrics()[f'collector_rejects_total{{reason="{reason}"}}'] == before + 1


def test_a_valid_request_of_the_same_shape_is_written(shared_collector):
    collector, landing = shared_collector
    ids = [f"valid-{uuid.uuid4()}" for _ in range(2)]
    batch = [{**_msg(1), "messageId": ids[0]}, {**_msg(2, size=30 * 1024), "messageId": ids[1]}]  # 30 KB: under the limit
    r = requests.post(collector.url + "/v1/batch", data=_json({"batch": batch}), headers=BASIC, timeout=10)
    assert r.status_code == 200, r.text
    assert [m["messageId"] for m in landing_messages(landing) if m["messageId"] in ids] == ids


def test_write_keys_are_never_logged_or_exposed(shared_collector):
    collector, _ = shared_collector
    assert WRITE_KEY not in collector.log.read_text()
    assert WRITE_KEY not in requests.get(collector.url + "/metrics", timeout=5).text
    assert WRITE_KEY not in requests.get(collector.url + "/health", timeout=5).text


def test_the_collector_refuses_to_start_without_write_keys(tmp_path):
    import subprocess
    import sys

    from tests.collector.conftest import ROOT, collector_process_env

    env = collector_process_env({"PERSONALIZATION_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path)})
    env.pop("PERSONALIZATION_COLLECTOR_WRITE_KEYS")
    proc = subprocess.run([sys.executable, "-m", "personalization_assets.cli", "collect", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "PERSONALIZATION_COLLECTOR_WRITE_KEYS" in proc.stderr and "Fix" in proc.stderr


def test_config_errors_name_the_setting_and_a_prod_collector_needs_no_warehouse(tmp_path):
    import pytest as _pytest

    from personalization_assets.collector.config import load_collector_config
    from personalization_assets.settings import ConfigError

    base = {"PERSONALIZATION_DATA_DIR": str(tmp_path), "PERSONALIZATION_COLLECTOR_WRITE_KEYS": "a-long-key-1,another-key-2"}
    assert load_collector_config(base).write_keys == ("a-long-key-1", "another-key-2")
    assert "a-long-key-1" not in repr(load_collector_config(base))
    prod_urls = {"PERSONALIZATION_ENV": "prod", "PERSONALIZATION_LANDING_URL": "s3://landing/cdp", "PERSONALIZATION_LAKE_URL": "s3://lake/p",
                 "PERSONALIZATION_LEDGER_URL": "s3://ledger/p"}
    keys = '{"1": "' + "ab" * 32 + '"}'
    for change, setting in [({"PERSONALIZATION_COLLECTOR_WRITE_KEYS": " , "}, "PERSONALIZATION_COLLECTOR_WRITE_KEYS"),
                            ({"PERSONALIZATION_COLLECTOR_WRITE_KEYS": "short"}, "PERSONALIZATION_COLLECTOR_WRITE_KEYS"),
                            ({"PERSONALIZATION_COLLECTOR_DEDUP_HOURS": "0"}, "PERSONALIZATION_COLLECTOR_DEDUP_HOURS"),
                            ({"PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS": "0"}, "PERSONALIZATION_COLLECTOR_ERASURE_POLL_SECONDS"),
                            ({"PERSONALIZATION_ENV": "prod"}, "PERSONALIZATION_LANDING_URL"),
                            ({"PERSONALIZATION_ENV": "prod", "PERSONALIZATION_LANDING_URL": "/tmp/x"}, "PERSONALIZATION_LANDING_URL"),
                            # the preference center's store: pseudonyms, the suppression list, the audit of that read
                            ({**prod_urls, "PERSONALIZATION_LAKE_URL": ""}, "PERSONALIZATION_LAKE_URL"),
                            ({**prod_urls, "PERSONALIZATION_LEDGER_URL": ""}, "PERSONALIZATION_LEDGER_URL"),
                            (prod_urls, "PERSONALIZATION_PSEUDONYM_KEYS")]:
        with _pytest.raises(ConfigError) as exc:
            load_collector_config({**base, **change})
        assert setting in str(exc.value) and "Fix" in str(exc.value)
    # no Snowflake settings: the collector pod is not given those secrets
    prod = load_collector_config({**base, **prod_urls, "PERSONALIZATION_PSEUDONYM_KEYS": keys})
    assert prod.landing.url == "s3://landing/cdp" and prod.platform.lake_url == "s3://lake/p"
    assert "ab" * 32 not in repr(prod)
