"""Turning a request into spec messages stamped the way the CDPs stamp them.

`/v1/batch` carries `{"batch": [...]}`; the single-call endpoints carry one message whose `type` is the
endpoint's. The server adds what Segment's and RudderStack's servers add: `receivedAt` (always the
collector's clock, overriding anything the client sent), `sentAt` from the batch when a message has
none, `context.ip` from the connection when the client sent none, `timestamp` = `receivedAt` when missing, and a
`messageId` when missing
(messages sent without one cannot be deduplicated on retry).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from personalization_assets.collector.limits import Rejected

ENDPOINT_TYPES = {
    "track": "track", "t": "track",
    "page": "page", "p": "page",
    "screen": "screen",
    "identify": "identify", "i": "identify",
    "alias": "alias", "a": "alias",
    "group": "group", "g": "group",
}
MESSAGE_TYPES = frozenset(ENDPOINT_TYPES.values())


def iso_ms(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def extract_messages(payload: dict, endpoint: str) -> list[dict]:
    """The messages of a request body, or Rejected(400) if its shape is wrong (nothing is written then)."""
    if endpoint == "batch":
        batch = payload.get("batch")
        if not isinstance(batch, list) or not batch:
            raise Rejected(400, "malformed_batch", '"batch" must be a non-empty array of messages')
        messages = batch
    else:
        message = dict(payload)
        message.setdefault("type", ENDPOINT_TYPES[endpoint])
        if message["type"] != ENDPOINT_TYPES[endpoint]:
            raise Rejected(400, "wrong_type", f"/v1/{endpoint} takes {ENDPOINT_TYPES[endpoint]} messages, not {message['type']!r}")
        messages = [message]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Rejected(400, "malformed_message", f"message {i} is not a JSON object")
        if m.get("type") not in MESSAGE_TYPES:
            raise Rejected(400, "unknown_type", f"message {i} has type {m.get('type')!r}; expected one of {sorted(MESSAGE_TYPES)}")
        mid = m.get("messageId")
        if mid is not None and (not isinstance(mid, str) or not mid or len(mid) > 256):
            raise Rejected(400, "bad_message_id", f"message {i}: messageId must be a string of 1-256 characters")
    return messages


def stamp(messages: list[dict], payload: dict, received_at: datetime, client_ip: str | None) -> list[dict]:
    """Server-side fields, added in place (the messages are this request's own copies)."""
    received = iso_ms(received_at)
    sent_at = payload.get("sentAt") if isinstance(payload.get("sentAt"), str) else None
    batch_context = payload.get("context") if "batch" in payload and isinstance(payload.get("context"), dict) else {}
    for m in messages:
        m.pop("writeKey", None)  # a browser SDK's key must not land in the lake
        m["receivedAt"] = received
        if not m.get("timestamp"):  # as Segment does: an event without a time happened when it was received
            m["timestamp"] = received
        if sent_at and not m.get("sentAt"):
            m["sentAt"] = sent_at
        if not m.get("messageId"):
            m["messageId"] = f"collector-{uuid.uuid4()}"
        if m.get("context") is None:
            m["context"] = {}
        context = m["context"]
        if not isinstance(context, dict):
            continue  # not ours to repair: ingestion quarantines it with its reason
        for k, v in batch_context.items():  # a batch-level context applies to every message (Segment's batch API)
            context.setdefault(k, v)
        if client_ip and not context.get("ip"):
            context["ip"] = client_ip
    return messages
