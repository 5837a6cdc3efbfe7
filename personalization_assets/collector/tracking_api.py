"""The Segment/RudderStack-compatible tracking endpoints: `POST /v1/batch`, `/v1/track`, `/v1/page`, ….

A 200 is sent only once every message of the request is durable in the landing zone. Any rejection
(401 auth, 400 limits or shape, 415 content type) is answered before anything is written, with
`{"code", "message"}` (the error shape both SDKs parse), and counted in `collector_rejects{reason}`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse

from personalization_assets.collector.auth import AuthError, authenticate
from personalization_assets.collector.limits import (
    Rejected,
    check_content_type,
    check_message_sizes,
    parse_json,
    read_body,
)
from personalization_assets.collector.messages import (
    ENDPOINT_TYPES,
    extract_messages,
    stamp,
)

log = logging.getLogger("personalization.collector")
ENDPOINTS = frozenset(ENDPOINT_TYPES) | {"batch"}


def now_utc(state) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=state.config.faults.clock_offset_s)


def _error(state, endpoint: str, status: int, reason: str, message: str) -> JSONResponse:
    state.metrics.rejects.labels(reason).inc()
    state.metrics.requests.labels(endpoint, str(status)).inc()
    return JSONResponse({"code": reason, "message": message}, status_code=status)


async def track_endpoint(request: Request) -> JSONResponse:
    state = request.app.state
    endpoint = request.path_params["endpoint"]
    if endpoint not in ENDPOINTS:
        return _error(state, "unknown", 404, "unknown_endpoint", f"/v1/{endpoint} does not exist")
    started = time.perf_counter()
    try:
        key_index = None
        if request.headers.get("authorization"):
            key_index = authenticate(request.headers, None, state.config.write_keys)
        check_content_type(request.headers.get("content-type"))
        body = await read_body(request.stream(), request.headers.get("content-encoding"))
        try:
            payload = parse_json(body)
        except Rejected:
            if key_index is None:  # an unauthenticated caller learns nothing about its body
                raise AuthError("no_auth", "no write key: send HTTP Basic auth with the write key as user name") from None
            raise
        if key_index is None:
            key_index = authenticate({}, payload.get("writeKey"), state.config.write_keys)
        messages = extract_messages(payload, endpoint)
        client_ip = request.client.host if request.client else None
        stamp(messages, payload, now_utc(state), client_ip)
        check_message_sizes(messages)  # as stored, so an accepted message never exceeds ingestion's line limit
    except AuthError as exc:
        return _error(state, endpoint, 401, exc.reason, exc.message)
    except Rejected as exc:
        return _error(state, endpoint, exc.status, exc.reason, exc.message)
    try:
        result = await state.writer.submit(messages)
    except Exception as exc:  # the landing zone is unavailable: nothing acknowledged, the SDK retries
        log.error("landing write failed (%s): %s", type(exc).__name__, exc)
        return _error(state, endpoint, 503, "write_failed", "the landing zone is unavailable; retry")
    state.metrics.messages.labels("written").inc(result.written)
    state.metrics.messages.labels("duplicate").inc(result.duplicates)
    state.metrics.requests.labels(endpoint, "200").inc()
    state.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
    return JSONResponse({"success": True})
