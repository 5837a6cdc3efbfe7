"""Who may do what at the collector: write keys for the tracking API, signed subject tokens for the
preference center.

Write keys, as the Segment and RudderStack HTTP APIs do it: server SDKs send HTTP Basic auth with the write
key as the user name and an empty password. Browser SDKs (analytics.js) send the key as `writeKey` in the
JSON body instead, to avoid a CORS preflight. Keys are compared in constant time; the key itself is never
logged or echoed. A write key sits in every page that loads analytics.js: it says which source an event
comes from, never who the visitor is.

Subject tokens (below): the only way the preference center learns that a visitor is a logged-in user.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt


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


# -- the preference center's signed subject tokens ----------------------------------------------------------
#
# The center never believes a user id the request names (a query, form or JSON field, analytics.js's
# `ajs_user_id` cookie: all forgeable). A logged-in visitor is identified only by a token that the customer's
# own backend, which knows who is logged in, issues under the secret PERSONALIZATION_PREFERENCE_TOKEN_SECRET:
# a JSON Web Token (RFC 7519) signed with HS256, so any backend's JWT library issues it:
#
#     header  {"alg": "HS256", "typ": "JWT"}
#     claims  {"sub": "<user id>", "exp": <unix seconds>, "aud": "personalization-preference-center"}
#     key     the secret's UTF-8 bytes without surrounding whitespace, as the collector reads it
#
# PyJWT checks the signature (constant time) and refuses any other algorithm (`none` included); the audience keeps
# a token the same secret signs for another purpose out. A token lives at most MAX_SUBJECT_TOKEN_TTL_SECONDS: it
# travels in a link once, so a leaked one must not be good for long.

SUBJECT_TOKEN_AUDIENCE = "personalization-preference-center"
SUBJECT_TOKEN_ALGORITHM = "HS256"
MAX_SUBJECT_TOKEN_TTL_SECONDS = 24 * 3600
MAX_SUBJECT_TOKEN_CHARS = 2048
MAX_USER_ID_CHARS = 512
CLOCK_SKEW_SECONDS = 60  # between the issuing backend's clock and the collector's


class TokenError(Exception):
    """A subject token refused: `reason` is a stable code, `message` says why and what to do (never the token)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Subject:
    user_id: str
    expires_at: int  # unix seconds


def _key(secret: str | bytes) -> bytes:
    return secret.strip().encode("utf-8") if isinstance(secret, str) else secret  # a trailing newline from a secret store


def issue_subject_token(secret: str | bytes, user_id: str, ttl_seconds: int, *, now: float | None = None) -> str:
    """A signed token saying "this visitor is `user_id`" until now + `ttl_seconds` (1 s .. 24 h): a JWT (HS256).

    Called by the customer's backend for the logged-in user, which then links to
    `https://<collector>/privacy/preferences?token=<token>`; `secret` is the collector's
    PERSONALIZATION_PREFERENCE_TOKEN_SECRET. Never issue one for a user id taken from the browser.
    """
    if not (secret.strip() if isinstance(secret, str) else secret):
        raise ValueError("secret is empty: pass the collector's PERSONALIZATION_PREFERENCE_TOKEN_SECRET")
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be a string, not {type(user_id).__name__}")
    if not user_id.strip() or len(user_id) > MAX_USER_ID_CHARS:
        raise ValueError(f"user_id must be a non-empty string of at most {MAX_USER_ID_CHARS} characters")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 0 < ttl_seconds <= MAX_SUBJECT_TOKEN_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be a whole number in 1..{MAX_SUBJECT_TOKEN_TTL_SECONDS}")
    expires = int(time.time() if now is None else now) + ttl_seconds
    return jwt.encode({"sub": user_id, "exp": expires, "aud": SUBJECT_TOKEN_AUDIENCE}, _key(secret), algorithm=SUBJECT_TOKEN_ALGORITHM)


def verify_subject_token(secret: str | bytes, token: str, *, now: float | None = None) -> Subject:
    """The subject a token was issued for, or TokenError: malformed, another algorithm, bad signature (another
    secret, or a changed payload), another audience, expired, or a lifetime over the maximum."""
    if not isinstance(token, str) or not token or len(token) > MAX_SUBJECT_TOKEN_CHARS:
        raise TokenError("malformed_token", "the subject token is not a JWT: ask your site for a new link")
    try:
        # the expiry is checked below against `now` (the center's clock, or a test's)
        claims = jwt.decode(token, _key(secret), algorithms=[SUBJECT_TOKEN_ALGORITHM], audience=SUBJECT_TOKEN_AUDIENCE,
                            options={"require": ["sub", "exp", "aud"], "verify_exp": False})
    except jwt.InvalidAlgorithmError:
        raise TokenError("unsupported_token_algorithm", f"the subject token is not signed with {SUBJECT_TOKEN_ALGORITHM}: issue "
                         "tokens with issue_subject_token") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_token_signature", "the subject token's signature does not match: it was altered, or issued under "
                         "another PERSONALIZATION_PREFERENCE_TOKEN_SECRET") from None
    except jwt.InvalidAudienceError:
        raise TokenError("wrong_token_audience", f'the subject token is not for the preference center (its "aud" must be '
                         f'"{SUBJECT_TOKEN_AUDIENCE}"): issue tokens with issue_subject_token') from None
    except jwt.InvalidTokenError:
        raise TokenError("malformed_token", 'the subject token is not a JWT with {"sub": <user id>, "exp": <unix seconds>}: ask '
                         "your site for a new link") from None
    user_id, expires = claims.get("sub"), claims.get("exp")
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_USER_ID_CHARS \
            or isinstance(expires, bool) or not isinstance(expires, int):
        raise TokenError("malformed_token", 'the subject token\'s claims are not {"sub": <user id>, "exp": <unix seconds>}: '
                         "issue tokens with issue_subject_token")
    current = time.time() if now is None else now
    if expires <= current:
        raise TokenError("expired_token", "the subject token has expired: open the preference center again from your site")
    if expires - current > MAX_SUBJECT_TOKEN_TTL_SECONDS + CLOCK_SKEW_SECONDS:
        raise TokenError("token_lifetime_too_long", f"the subject token is valid for more than {MAX_SUBJECT_TOKEN_TTL_SECONDS} s: "
                         "issue it with a shorter ttl_seconds")
    return Subject(user_id=user_id, expires_at=expires)
