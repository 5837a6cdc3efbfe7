"""Reading a request body within the CDPs' limits: content type, gzip, 500 KB a batch, 32 KB a message.

Every rejection is a `Rejected` with an HTTP status and a machine-readable reason (also the metrics label),
raised before anything is written. The body is read and decompressed incrementally, so neither a huge
upload nor a gzip bomb is ever held in memory beyond the limit.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator

from personalization_assets.collector.config import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES

# analytics.js posts text/plain (no CORS preflight); the server SDKs post application/json.
ACCEPTED_CONTENT_TYPES = ("application/json", "text/plain")


class Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_CONTENT_TYPES:
        raise Rejected(415, "unsupported_content_type",
                       f"Content-Type {media or '(none)'!r} is not accepted: send application/json (or text/plain)")


async def read_body(chunks: AsyncIterator[bytes], content_encoding: str | None, limit: int = MAX_BATCH_BYTES) -> bytes:
    """The request body, decompressed if gzip-encoded; Rejected(400) once it exceeds `limit` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise Rejected(415, "unsupported_content_encoding", f"Content-Encoding {encoding!r} is not supported (use gzip)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    out = bytearray()
    too_large = Rejected(400, "batch_too_large", f"the request body is larger than the {limit // 1024} KB batch limit")
    try:
        async for chunk in chunks:
            if inflater is None:
                out += chunk
            else:
                # never inflate more than the limit allows (a gzip bomb stops here)
                out += inflater.decompress(chunk, limit + 1 - len(out))
                if inflater.unconsumed_tail and len(out) > limit:
                    raise too_large
            if len(out) > limit:
                raise too_large
        if inflater is not None:
            out += inflater.flush()
            if not inflater.eof:
                raise Rejected(400, "malformed_gzip", "the gzip body is truncated")
    except zlib.error:
        raise Rejected(400, "malformed_gzip", "the body is not valid gzip") from None
    if len(out) > limit:
        raise too_large
    return bytes(out)


def parse_json(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "malformed_json", "the body must be a JSON object")
    return payload


def message_size(message: dict) -> int:
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


def check_message_sizes(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        size = message_size(m)
        if size > MAX_MESSAGE_BYTES:
            raise Rejected(400, "message_too_large",
                           f"message {i} (messageId {str(m.get('messageId'))[:64]!r}) is {size // 1024} KB; the limit is "
                           f"{MAX_MESSAGE_BYTES // 1024} KB a message")
