"""A failed run raises an alert that reaches a webhook receiver on 127.0.0.1 with the run, step and error."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg

from personalization_assets.automation.sensors import AlertWebhook, run_failure_alert


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append({"path": self.path, "content_type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@dg.asset
def broken_asset():
    raise RuntimeError("upstream bucket unreachable")


def test_run_failure_alert_posts_to_the_webhook():
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.received = []
    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize([broken_asset], instance=instance, raise_on_error=False)
            assert not result.success
            run = instance.get_run_by_id(result.run_id)
            failure = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"][0]
            ctx = dg.build_run_status_sensor_context(
                sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=run, dagster_event=failure,
                resources={"alert_webhook": AlertWebhook(url=f"http://127.0.0.1:{server.server_port}/hooks/dagster")},
            ).for_run_failure()
            run_failure_alert(ctx)
    finally:
        server.shutdown()
    assert len(Receiver.received) == 1
    got = Receiver.received[0]
    assert got["path"] == "/hooks/dagster" and got["content_type"] == "application/json"
    body = got["body"]
    assert body["alert"] == "dagster_run_failed" and body["run_id"] == result.run_id
    assert body["failed_steps"] == ["broken_asset"]
    assert "upstream bucket unreachable" in body["errors"][0]["error"]
