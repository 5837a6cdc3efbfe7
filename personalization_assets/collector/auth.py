"""Write-key authentication, as the Segment and RudderStack HTTP APIs do it.

Server SDKs send HTTP Basic auth with the write key as the user name and an empty password. Browser SDKs
(analytics.js) send the key as `writeKey` in the JSON body instead, to avoid a CORS preflight. Keys are
compared in constant time; the key itself is never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping


class AuthError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0]


def authenticate(headers: Mapping[str, str], body_write_key: object, keys: tuple[str, ...]) -> int:
    """The index of the matching write key (for metrics and logs), or AuthError (401)."""
    header = headers.get("authorization")
    if header:
        candidate = _basic_user(header)
        if candidate is None:
            raise AuthError("bad_auth_header", "Authorization must be HTTP Basic with the write key as user name")
    elif isinstance(body_write_key, str) and body_write_key:
        candidate = body_write_key
    else:
        raise AuthError("no_auth", "no write key: send HTTP Basic auth with the write key as user name")
    found = -1
    for i, key in enumerate(keys):  # no early exit: the time taken does not depend on which key matched
        if hmac.compare_digest(candidate.encode(), key.encode()):
            found = i
    if found < 0:
        raise AuthError("bad_write_key", "unknown write key")
    return found
