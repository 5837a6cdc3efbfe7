"""The preference center's subject tokens (collector/auth.py): what the customer's backend issues, what the center
accepts, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from personalization_assets.collector.auth import (
    MAX_SUBJECT_TOKEN_TTL_SECONDS,
    TokenError,
    issue_subject_token,
    verify_subject_token,
)

pytestmark = pytest.mark.unit

SECRET = "unit-test-preference-token-secret-0123456789"
NOW = 1_800_000_000


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(payload: bytes, secret: str = SECRET, version: str = "v1") -> str:
    """A token built by hand from the documented format (what a backend in another language does)."""
    body = f"{version}.{_b64(payload)}"
    return f"{body}.{_b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())}"


def _refused(token: str, secret: str = SECRET, now: float = NOW) -> str:
    with pytest.raises(TokenError) as exc:
        verify_subject_token(secret, token, now=now)
    assert exc.value.message and (not token or token not in exc.value.message)  # never echoed
    return exc.value.reason


@pytest.mark.parametrize("user_id", ["u1", "jane+news@example.com", "Zoë Ünïcode 名前 & co", "a b+c%20d/e?f=g#h", "x" * 512])
def test_a_token_carries_its_user_id_exactly_until_it_expires(user_id):
    token = issue_subject_token(SECRET, user_id, 600, now=NOW)
    assert token.startswith("v1.") and token.count(".") == 2
    assert all(c.isalnum() or c in "-_." for c in token)  # safe in a URL and a cookie as it is
    subject = verify_subject_token(SECRET, token, now=NOW + 599)
    assert subject.user_id == user_id and subject.expires_at == NOW + 600
    assert _refused(token, now=NOW + 600) == "expired_token"


def test_the_documented_format_is_what_is_issued_and_verified():
    payload = json.dumps({"sub": "u1", "exp": NOW + 60}, separators=(",", ":")).encode()
    assert issue_subject_token(SECRET, "u1", 60, now=NOW) == _signed(payload)
    # the secret as the collector reads it from the environment: surrounding whitespace (a newline) is not part of it
    assert issue_subject_token(SECRET + "\n", "u1", 60, now=NOW) == _signed(payload)
    assert verify_subject_token(SECRET, _signed(json.dumps({"exp": NOW + 60, "sub": "u1"}).encode()), now=NOW).user_id == "u1"


def test_a_token_under_another_secret_or_altered_is_refused():
    token = issue_subject_token(SECRET, "alice", 600, now=NOW)
    version, payload, mac = token.split(".")
    assert _refused(token, secret=SECRET + "-other") == "bad_token_signature"
    assert _refused(issue_subject_token(SECRET + "-other", "alice", 600, now=NOW)) == "bad_token_signature"
    forged = _b64(json.dumps({"sub": "bob", "exp": NOW + 600}, separators=(",", ":")).encode())
    assert _refused(f"{version}.{forged}.{mac}") == "bad_token_signature"  # another user, the MAC kept
    longer = _b64(json.dumps({"sub": "alice", "exp": NOW + 10**6}, separators=(",", ":")).encode())
    assert _refused(f"{version}.{longer}.{mac}") == "bad_token_signature"  # a later expiry, the MAC kept
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert _refused(f"{version}.{payload}.{flipped}") == "bad_token_signature"
    # the same MAC bytes spelled differently (base64's unused low bits of the last character) is not the token
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variant = mac[:-1] + last[last.index(mac[-1]) ^ 1]
    assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(mac + "=")
    assert _refused(f"{version}.{payload}.{variant}") == "bad_token_signature"


@pytest.mark.parametrize("token, reason", [
    ("", "malformed_token"),
    ("v1.abc", "malformed_token"),
    ("v1.a.b.c", "malformed_token"),
    ("v1.e30.!!!", "malformed_token"),
    ("v1." + "A" * 5000 + ".abc", "malformed_token"),
    ("v0.e30.abc", "unsupported_token_version"),
    ("V1.e30.abc", "unsupported_token_version"),
])
def test_a_malformed_token_is_refused_with_its_reason(token, reason):
    assert _refused(token) == reason


def test_the_version_is_checked_and_signed():
    token = issue_subject_token(SECRET, "alice", 600, now=NOW)
    assert _refused("v2." + token.split(".", 1)[1]) == "unsupported_token_version"
    payload = json.dumps({"sub": "alice", "exp": NOW + 600}).encode()
    assert _refused(_signed(payload, version="v2")) == "unsupported_token_version"


@pytest.mark.parametrize("claims", [{"exp": NOW + 60}, {"sub": "u1"}, {"sub": "", "exp": NOW + 60}, {"sub": 7, "exp": NOW + 60},
                                    {"sub": "u1", "exp": "soon"}, {"sub": "u1", "exp": True}, ["u1", NOW + 60]])
def test_an_authentic_token_with_a_bad_payload_is_refused(claims):
    assert _refused(_signed(json.dumps(claims).encode())) == "malformed_token"


def test_a_lifetime_over_the_maximum_is_refused_even_when_signed():
    payload = json.dumps({"sub": "u1", "exp": NOW + MAX_SUBJECT_TOKEN_TTL_SECONDS + 3600}).encode()
    assert _refused(_signed(payload)) == "token_lifetime_too_long"
    assert verify_subject_token(SECRET, issue_subject_token(SECRET, "u1", MAX_SUBJECT_TOKEN_TTL_SECONDS, now=NOW), now=NOW)


@pytest.mark.parametrize("secret, user_id, ttl", [("", "u1", 60), (" \n", "u1", 60), (SECRET, "", 60), (SECRET, "  ", 60), (SECRET, None, 60),
                                                  (SECRET, "x" * 513, 60), (SECRET, "u1", 0), (SECRET, "u1", -5),
                                                  (SECRET, "u1", MAX_SUBJECT_TOKEN_TTL_SECONDS + 1), (SECRET, "u1", 1.5),
                                                  (SECRET, "u1", True)])
def test_issuing_refuses_what_the_center_would_refuse(secret, user_id, ttl):
    with pytest.raises((ValueError, TypeError)):
        issue_subject_token(secret, user_id, ttl, now=NOW)
