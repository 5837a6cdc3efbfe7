"""Who the preference center acts for, against a real collector on loopback.

A logged-in user only through a subject token signed under PERSONALIZATION_PREFERENCE_TOKEN_SECRET (given once
as `?token=`, then an HttpOnly cookie); the anonymous visitor only through the `ajs_anonymous_id` cookie. A user
or anonymous id named in the query, a form, a JSON body, or analytics.js's `ajs_user_id` cookie changes nobody's
consent and shows nobody's choices: checked in the center's store on disk and in what reached the landing zone.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from urllib.parse import quote

import pytest
import requests
from segment.analytics.client import Client as SegmentClient

from personalization_assets.collector.auth import issue_subject_token
from personalization_assets.core.tracking_plan import CONSENT_EVENT
from tests.collector.conftest import (
    TOKEN_SECRET,
    WRITE_KEY,
    landing_messages,
    landing_objects,
    stored_choices,
)

SETTING = "PERSONALIZATION_PREFERENCE_TOKEN_SECRET"
EVERYTHING = ["personalization", "analytics", "advertising", "sale_share"]
# what a CMP on the customer's site recorded for the victims: every category denied
ALL_DENIED = {c: False for c in ("personalization", "analytics", "performance", "advertising", "marketing", "data_sharing")}
CENTER = "personalization-preference-center"


def _victim(center, tag: str) -> tuple[str, str]:
    """A user whose consent was recorded through the collector by the Segment SDK (all denied): (user id, anonymous id)."""
    user, anon = f"victim-{tag}-{uuid.uuid4().hex[:8]}", f"victim-anon-{uuid.uuid4()}"
    client = SegmentClient(write_key=WRITE_KEY, host=center.collector.url, upload_size=10, upload_interval=0.05, max_retries=3)
    client.track(user_id=user, anonymous_id=anon, event=CONSENT_EVENT, context={"consent": {"categoryPreferences": ALL_DENIED}},
                 message_id=f"{user}-cmp")
    client.flush()
    client.shutdown()
    stored = stored_choices(center.state_dir)
    assert stored[f"user:{user}"][0] == {p: "denied" for p in EVERYTHING} == stored[f"anon:{anon}"][0]
    return user, anon


def _center_events(landing, *, user: str | None = None, anon: str | None = None) -> list[dict]:
    """Consent events the preference center wrote for that user id or anonymous id."""
    return [m for m in landing_messages(landing) if m.get("event") == CONSENT_EVENT
            and m.get("context", {}).get("library", {}).get("name") == CENTER
            and ((user is not None and m.get("userId") == user) or (anon is not None and m.get("anonymousId") == anon))]


def _visitor_session(center_url: str) -> tuple[requests.Session, str]:
    """A browser that opened the center once (no token): it holds the anonymous id cookie the center set."""
    s = requests.Session()
    assert s.get(center_url, timeout=10).status_code == 200
    return s, json.loads(s.cookies["ajs_anonymous_id"])


def _signed_in(center_url: str, user_id: str, **headers) -> tuple[requests.Session, requests.Response]:
    """A browser following the link the customer's backend made for its logged-in user: (session, the 303)."""
    s = requests.Session()
    r = s.get(center_url, params={"token": issue_subject_token(TOKEN_SECRET, user_id, 600)}, headers=headers,
              allow_redirects=False, timeout=10)
    return s, r


def _boxes(page: str) -> dict[str, bool]:
    return {m.group(1): " checked" in m.group(0).replace("\n", " ")
            for m in re.finditer(r'<input type="checkbox" id="purpose-(\w+)"[^>]*>', page)}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- forged ids -------------------------------------------------------------------------------------------------

# name, how the attacker names the victim (user id u, anonymous id a), expected status and code
FORGERIES = [
    ("form, no cookie, no Origin", lambda s, url, u, a: s.post(url, data={"userId": u, "purpose": EVERYTHING}), 400, "user_id_not_accepted"),
    ("form over the caller's own anonymous cookie", lambda s, url, u, a: s.post(url, data={"userId": u, "purpose": EVERYTHING}),
     400, "user_id_not_accepted"),
    ("query string of a form post", lambda s, url, u, a: s.post(url, params={"userId": u}, data={"purpose": EVERYTHING}),
     400, "user_id_not_accepted"),
    ("JSON body over the caller's own cookie", lambda s, url, u, a: s.post(url, json={"granted": EVERYTHING, "userId": u}),
     400, "user_id_not_accepted"),
    ("ajs_user_id cookie, form", lambda s, url, u, a: s.post(url, data={"purpose": EVERYTHING}, cookies={"ajs_user_id": json.dumps(u)}),
     401, "token_required"),
    ("ajs_user_id cookie, JSON", lambda s, url, u, a: s.post(url, json={"granted": EVERYTHING}, cookies={"ajs_user_id": quote(json.dumps(u))}),
     401, "token_required"),
    ("anonymousId in the form", lambda s, url, u, a: s.post(url, data={"anonymousId": a, "purpose": EVERYTHING}), 400, "anonymous_id_not_accepted"),
    ("anonymousId in the JSON body", lambda s, url, u, a: s.post(url, json={"granted": EVERYTHING, "anonymousId": a}),
     400, "anonymous_id_not_accepted"),
    ("anonymousId in the query string", lambda s, url, u, a: s.post(url, params={"anonymousId": a}, json={"granted": EVERYTHING}),
     400, "anonymous_id_not_accepted"),
]


@pytest.mark.parametrize("name, forge, status, code", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_forged_id_without_a_token_changes_nobodys_consent(signed_collector, name, forge, status, code):
    center = signed_collector
    victim, victim_anon = _victim(center, "forge")
    if "own" in name or "cookie" in name:
        session, _ = _visitor_session(center.url)
    else:
        session = requests.Session()
    before_store, before_objects = stored_choices(center.state_dir), landing_objects(center.landing)

    r = forge(session, center.url, victim, victim_anon)

    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    if code != "anonymous_id_not_accepted":  # the refusal says how a logged-in user is identified
        assert SETTING in r.json()["message"] and "token" in r.json()["message"]
    assert stored_choices(center.state_dir) == before_store  # nobody's choices changed
    assert landing_objects(center.landing) == before_objects  # nothing written at all
    assert _center_events(center.landing, user=victim, anon=victim_anon) == []


def test_nobodys_choices_are_shown_to_a_caller_who_names_them(signed_collector):
    center = signed_collector
    victim, victim_anon = _victim(center, "peek")
    for kwargs, status, code in [({"params": {"userId": victim}}, 400, "user_id_not_accepted"),
                                 ({"params": {"anonymousId": victim_anon}}, 400, "anonymous_id_not_accepted"),
                                 ({"cookies": {"ajs_user_id": json.dumps(victim)}}, 401, "token_required")]:
        r = requests.get(center.url, timeout=10, **kwargs)
        assert r.status_code == status and r.json()["code"] == code, (kwargs, r.text)
        assert "Not allowed" not in r.text and 'id="purpose-' not in r.text  # the victim's (all denied) choices are not shown
    # a browser is shown a page saying what to do, not a JSON body
    r = requests.get(center.url, params={"userId": victim}, headers={"Accept": "text/html"}, timeout=10)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html") and SETTING in r.text
    assert f"user:{victim}" in stored_choices(center.state_dir)


# -- valid tokens -----------------------------------------------------------------------------------------------

def test_a_valid_token_acts_for_its_user_only(signed_collector):
    center = signed_collector
    victim, _ = _victim(center, "bystander")
    user = f"member-{uuid.uuid4().hex[:8]}"
    session, r = _signed_in(center.url, user)
    # accepted once, kept in a cookie that scripts cannot read and other sites' requests do not carry, out of the URL
    assert r.status_code == 303 and r.headers["location"] == "/privacy/preferences", r.text
    set_cookie = r.headers["set-cookie"]
    assert set_cookie.startswith("pc_subject_token=eyJ") and "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    assert "Path=/privacy" in set_cookie and "Secure" not in set_cookie  # plain http here
    assert r.headers["referrer-policy"] == "no-referrer"
    page = session.get(center.url, timeout=10)
    assert page.status_code == 200 and "the account you are signed in with" in page.text
    # analytics.js's cookies: this browser's anonymous id is used; a user cookie naming someone else is ignored
    anon = f"member-anon-{uuid.uuid4()}"
    session.cookies.set("ajs_anonymous_id", json.dumps(anon))
    session.cookies.set("ajs_user_id", json.dumps(victim))
    r = session.post(center.url, json={"granted": ["analytics"]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["purposes"] == {"personalization": "denied", "analytics": "granted", "advertising": "denied", "sale_share": "denied"}

    [event] = _center_events(center.landing, user=user)
    assert event["anonymousId"] == anon and event["context"]["consent"]["categoryPreferences"]["analytics"] is True
    assert _center_events(center.landing, user=victim) == []
    stored = stored_choices(center.state_dir)
    assert stored[f"user:{user}"][0]["analytics"] == "granted"
    assert stored[f"user:{victim}"][0] == {p: "denied" for p in EVERYTHING}
    # another signed-in user sees their own (empty) record, not this one's
    other, _ = _signed_in(center.url, f"member-{uuid.uuid4().hex[:8]}")
    assert _boxes(other.get(center.url, timeout=10).text) == dict.fromkeys(EVERYTHING, False)


def test_over_https_the_token_cookie_is_secure(signed_collector):
    # uvicorn trusts X-Forwarded-Proto from loopback (FORWARDED_ALLOW_IPS), as from a TLS-terminating proxy
    _, r = _signed_in(signed_collector.url, f"member-{uuid.uuid4().hex[:8]}", **{"X-Forwarded-Proto": "https"})
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]


# -- refused tokens ---------------------------------------------------------------------------------------------

def _expired(user: str) -> str:
    return issue_subject_token(TOKEN_SECRET, user, 60, now=time.time() - 3600)


def _other_secret(user: str) -> str:
    return issue_subject_token("another-deployments-secret-0123456789abcdef", user, 600)


def _tampered(user: str) -> str:
    """The attacker's own valid token with the payload swapped for the victim's (the MAC kept)."""
    version, _, mac = issue_subject_token(TOKEN_SECRET, "attacker", 600).split(".")
    payload = _b64(json.dumps({"sub": user, "exp": int(time.time()) + 600}, separators=(",", ":")).encode())
    return f"{version}.{payload}.{mac}"


def _alg_none(user: str) -> str:
    """An unsigned JWT (`alg: none`) naming the victim."""
    claims = {"sub": user, "exp": int(time.time()) + 600, "aud": "personalization-preference-center"}
    return _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode()) + "."


BAD_TOKENS = [("expired", _expired, "expired_token"), ("another secret", _other_secret, "bad_token_signature"),
              ("tampered payload", _tampered, "bad_token_signature"), ("unsigned (alg none)", _alg_none, "unsupported_token_algorithm"),
              ("not a token", lambda user: "hello", "malformed_token")]


@pytest.mark.parametrize("name, make, code", BAD_TOKENS, ids=[t[0] for t in BAD_TOKENS])
def test_a_bad_token_is_refused_in_the_link_and_in_the_cookie(signed_collector, name, make, code):
    center = signed_collector
    victim, victim_anon = _victim(center, "token")
    token = make(victim)
    before_store, before_objects = stored_choices(center.state_dir), landing_objects(center.landing)

    r = requests.get(center.url, params={"token": token}, allow_redirects=False, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == code, r.text
    assert "set-cookie" not in r.headers and "Not allowed" not in r.text
    # the same token as the cookie, next to the caller's own anonymous id: refused, not downgraded to anonymous
    session, anon = _visitor_session(center.url)
    session.cookies.set("pc_subject_token", token, path="/privacy")
    r = session.post(center.url, json={"granted": EVERYTHING}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == code, r.text
    dropped = r.headers.get("set-cookie", "")  # the center tells the browser to drop it
    assert dropped.startswith("pc_subject_token=") and "Max-Age=0" in dropped and "Path=/privacy" in dropped
    assert stored_choices(center.state_dir) == before_store and landing_objects(center.landing) == before_objects
    assert _center_events(center.landing, user=victim, anon=victim_anon) == [] and _center_events(center.landing, anon=anon) == []
    # a browser following an expired link is told what to do
    r = requests.get(center.url, params={"token": token}, headers={"Accept": "text/html"}, timeout=10)
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html") and code in r.text


def test_the_token_is_taken_only_from_the_link(signed_collector):
    center = signed_collector
    user = f"member-{uuid.uuid4().hex[:8]}"
    token = issue_subject_token(TOKEN_SECRET, user, 600)
    session, _ = _visitor_session(center.url)
    before = landing_objects(center.landing)
    for r in (session.post(center.url, params={"token": token}, json={"granted": EVERYTHING}, timeout=10),
              session.post(center.url, json={"granted": EVERYTHING, "token": token}, timeout=10),
              session.post(center.url, data={"purpose": EVERYTHING, "token": token}, allow_redirects=False, timeout=10)):
        assert r.status_code == 400 and r.json()["code"] == "token_not_accepted_here", r.text
    assert landing_objects(center.landing) == before and f"user:{user}" not in stored_choices(center.state_dir)


# -- ids that need encoding, through the form post without JavaScript ----------------------------------------

@pytest.mark.parametrize("user_id", ["jane+news@example.com", "Zoë Ünïcode 名前 & co", "a b+c%20d/e?f=g#h"])
def test_a_user_id_needing_encoding_round_trips_through_the_form_post(signed_collector, user_id):
    center = signed_collector
    session, r = _signed_in(center.url, user_id)
    assert r.status_code == 303
    for chosen in (["analytics", "sale_share"], ["personalization"]):
        r = session.post(center.url, data={"purpose": chosen}, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["location"] == "/privacy/preferences", r.headers.get("location")
        page = session.get(center.collector.url + r.headers["location"], timeout=10)
        assert _boxes(page.text) == {p: p in chosen for p in EVERYTHING}
    events = _center_events(center.landing, user=user_id)
    assert len(events) == 2 and {e["userId"] for e in events} == {user_id}
    stored = stored_choices(center.state_dir)
    assert stored[f"user:{user_id}"][0] == {p: "granted" if p == "personalization" else "denied" for p in EVERYTHING}
    mangled = {user_id.replace("+", " "), user_id.replace("+", "%2B")} - {user_id}
    assert not {f"user:{m}" for m in mangled} & set(stored)


def test_an_anonymous_id_needing_encoding_round_trips_through_the_form_post(signed_collector):
    center = signed_collector
    anon = f"anon+1 ü/é {uuid.uuid4().hex[:6]}"
    session = requests.Session()
    session.cookies.set("ajs_anonymous_id", quote(json.dumps(anon)))  # as analytics.js writes it
    r = session.post(center.url, data={"purpose": ["advertising"]}, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/privacy/preferences"
    page = session.get(center.url, timeout=10)
    assert _boxes(page.text) == {p: p == "advertising" for p in EVERYTHING}
    [event] = _center_events(center.landing, anon=anon)
    assert "userId" not in event and event["context"]["consent"]["categoryPreferences"]["advertising"] is True
    assert stored_choices(center.state_dir)[f"anon:{anon}"][0]["advertising"] == "granted"


# -- anonymous visitors; a collector without the secret --------------------------------------------------------

def test_anonymous_visitors_still_work_and_cannot_act_on_another_anonymous_id(signed_collector):
    center = signed_collector
    _, victim_anon = _victim(center, "anon")
    session, anon = _visitor_session(center.url)
    r = session.post(center.url, json={"granted": ["personalization"]}, timeout=10)
    assert r.status_code == 200 and r.json()["purposes"]["personalization"] == "granted"
    [event] = _center_events(center.landing, anon=anon)
    assert "userId" not in event
    assert stored_choices(center.state_dir)[f"anon:{anon}"][0]["personalization"] == "granted"
    # naming the victim's anonymous id next to one's own cookie: refused, the victim's record untouched
    r = session.post(center.url, json={"granted": EVERYTHING, "anonymousId": victim_anon}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "anonymous_id_not_accepted"
    assert stored_choices(center.state_dir)[f"anon:{victim_anon}"][0] == {p: "denied" for p in EVERYTHING}
    assert _center_events(center.landing, anon=victim_anon) == [] and len(_center_events(center.landing, anon=anon)) == 1


def test_without_the_secret_tokens_and_user_ids_are_refused_naming_the_setting(shared_collector):
    collector, landing = shared_collector
    url = collector.url + "/privacy/preferences"
    user = f"member-{uuid.uuid4().hex[:8]}"
    session, _ = _visitor_session(url)
    before = landing_objects(landing)
    for r in (requests.get(url, params={"token": issue_subject_token(TOKEN_SECRET, user, 600)}, allow_redirects=False, timeout=10),
              requests.post(url, data={"userId": user, "purpose": EVERYTHING}, allow_redirects=False, timeout=10),
              session.post(url, json={"granted": EVERYTHING, "userId": user}, timeout=10),
              requests.get(url, cookies={"ajs_user_id": json.dumps(user)}, timeout=10)):
        assert r.status_code == 403 and r.json()["code"] == "token_not_configured", r.text
        assert SETTING in r.json()["message"] and "anonymous visitors only" in r.json()["message"]
    assert landing_objects(landing) == before
    assert [m for m in landing_messages(landing) if m.get("userId") == user] == []


def test_the_token_secret_is_validated_and_never_exposed(signed_collector, tmp_path):
    from personalization_assets.collector.config import load_collector_config
    from personalization_assets.settings import ConfigError

    base = {"PERSONALIZATION_DATA_DIR": str(tmp_path), "PERSONALIZATION_COLLECTOR_WRITE_KEYS": "a-long-key-1,another-key-2"}
    assert load_collector_config(base).preference_token_secret is None
    config = load_collector_config({**base, SETTING: TOKEN_SECRET})
    assert config.preference_token_secret == TOKEN_SECRET and TOKEN_SECRET not in repr(config)
    with pytest.raises(ConfigError) as exc:
        load_collector_config({**base, SETTING: "too-short-secret"})
    assert SETTING in str(exc.value) and "Fix" in str(exc.value) and "too-short-secret" not in str(exc.value)
    reused = "a-write-key-long-enough-to-be-a-secret-0001"
    with pytest.raises(ConfigError) as exc:
        load_collector_config({**base, "PERSONALIZATION_COLLECTOR_WRITE_KEYS": reused, SETTING: reused})
    assert SETTING in str(exc.value) and "write key" in str(exc.value) and reused not in str(exc.value)

    center = signed_collector
    _signed_in(center.url, f"member-{uuid.uuid4().hex[:8]}")  # at least one token verified by this collector
    assert "for logged-in users by signed subject token" in center.collector.log.read_text()
    exposed = [center.collector.log.read_text(), requests.get(center.collector.url + "/metrics", timeout=5).text,
               requests.get(center.collector.url + "/health", timeout=5).text, requests.get(center.url, timeout=5).text,
               json.dumps(landing_messages(center.landing))]
    assert not [text for text in exposed if TOKEN_SECRET in text]
