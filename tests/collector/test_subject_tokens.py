"""The preference center's subject tokens (collector/auth.py): JWTs (HS256) the customer's backend issues, what the
center accepts, and every way a token is refused."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from personalization_assets.collector.auth import (
    MAX_SUBJECT_TOKEN_TTL_SECONDS,
    SUBJECT_TOKEN_AUDIENCE,
    TokenError,
    issue_subject_token,
    verify_subject_token,
)

pytestmark = pytest.mark.unit

SECRET = "unit-test-preference-token-secret-0123456789"
NOW = 1_800_000_000


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(claims, secret: str = SECRET, algorithm: str = "HS256") -> str:
    """A token built with a JWT library from the documented claims (what a backend in another language does)."""
    return jwt.encode(claims, secret, algorithm=algorithm)


def _claims(**overrides) -> dict:
    return {"sub": "u1", "exp": NOW + 60, "aud": SUBJECT_TOKEN_AUDIENCE, **overrides}


def _refused(token: str, secret: str = SECRET, now: float = NOW) -> str:
    with pytest.raises(TokenError) as exc:
        verify_subject_token(secret, token, now=now)
    assert exc.value.message and (not token or token not in exc.value.message)  # never echoed
    return exc.value.reason


@pytest.mark.parametrize("user_id", ["u1", "jane+news@example.com", "Zoë Ünïcode 名前 & co", "a b+c%20d/e?f=g#h", "x" * 512])
def test_a_token_carries_its_user_id_exactly_until_it_expires(user_id):
    token = issue_subject_token(SECRET, user_id, 600, now=NOW)
    assert token.count(".") == 2 and all(c.isalnum() or c in "-_." for c in token)  # safe in a URL and a cookie as it is
    subject = verify_subject_token(SECRET, token, now=NOW + 599)
    assert subject.user_id == user_id and subject.expires_at == NOW + 600
    assert _refused(token, now=NOW + 600) == "expired_token"


def test_any_jwt_library_issues_a_token_the_center_accepts():
    header = json.loads(base64.urlsafe_b64decode(issue_subject_token(SECRET, "u1", 60, now=NOW).split(".")[0] + "=="))
    assert header["alg"] == "HS256"
    claims = jwt.decode(issue_subject_token(SECRET, "u1", 60, now=NOW), SECRET, algorithms=["HS256"], audience=SUBJECT_TOKEN_AUDIENCE,
                        options={"verify_exp": False})
    assert claims == _claims()
    assert verify_subject_token(SECRET, _signed(_claims()), now=NOW).user_id == "u1"
    # the secret as the collector reads it from the environment: surrounding whitespace (a newline) is not part of it
    assert verify_subject_token(SECRET + "\n", _signed(_claims()), now=NOW).user_id == "u1"


def test_a_token_under_another_secret_or_altered_is_refused():
    token = issue_subject_token(SECRET, "alice", 600, now=NOW)
    header, payload, mac = token.split(".")
    assert _refused(token, secret=SECRET + "-other") == "bad_token_signature"
    assert _refused(issue_subject_token(SECRET + "-other", "alice", 600, now=NOW)) == "bad_token_signature"
    forged = _b64(json.dumps(_claims(sub="bob", exp=NOW + 600)).encode())
    assert _refused(f"{header}.{forged}.{mac}") == "bad_token_signature"  # another user, the MAC kept
    longer = _b64(json.dumps(_claims(sub="alice", exp=NOW + 10**6)).encode())
    assert _refused(f"{header}.{longer}.{mac}") == "bad_token_signature"  # a later expiry, the MAC kept
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert _refused(f"{header}.{payload}.{flipped}") == "bad_token_signature"


def test_another_algorithm_or_audience_is_refused():
    unsigned = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(_claims()).encode()) + "."
    assert _refused(unsigned) == "unsupported_token_algorithm"  # `alg: none`
    assert _refused(_signed(_claims(), algorithm="HS512")) == "unsupported_token_algorithm"
    assert _refused(_signed(_claims(aud="another-service"))) == "wrong_token_audience"  # the same secret, another use


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "e30.e30.!!!", "A" * 5000])
def test_a_malformed_token_is_refused(token):
    assert _refused(token) == "malformed_token"


@pytest.mark.parametrize("claims", [{"exp": NOW + 60, "aud": SUBJECT_TOKEN_AUDIENCE}, {"sub": "u1", "aud": SUBJECT_TOKEN_AUDIENCE},
                                    {"sub": "u1", "exp": NOW + 60}, _claims(sub=""), _claims(sub=7), _claims(exp="soon"),
                                    _claims(exp=True)])
def test_an_authentic_token_with_bad_claims_is_refused(claims):
    assert _refused(_signed(claims)) in ("malformed_token", "wrong_token_audience")


def test_a_lifetime_over_the_maximum_is_refused_even_when_signed():
    assert _refused(_signed(_claims(exp=NOW + MAX_SUBJECT_TOKEN_TTL_SECONDS + 3600))) == "token_lifetime_too_long"
    assert verify_subject_token(SECRET, issue_subject_token(SECRET, "u1", MAX_SUBJECT_TOKEN_TTL_SECONDS, now=NOW), now=NOW)


@pytest.mark.parametrize("secret, user_id, ttl", [("", "u1", 60), (" \n", "u1", 60), (SECRET, "", 60), (SECRET, "  ", 60), (SECRET, None, 60),
                                                  (SECRET, "x" * 513, 60), (SECRET, "u1", 0), (SECRET, "u1", -5),
                                                  (SECRET, "u1", MAX_SUBJECT_TOKEN_TTL_SECONDS + 1), (SECRET, "u1", 1.5),
                                                  (SECRET, "u1", True)])
def test_issuing_refuses_what_the_center_would_refuse(secret, user_id, ttl):
    with pytest.raises((ValueError, TypeError)):
        issue_subject_token(secret, user_id, ttl, now=NOW)
