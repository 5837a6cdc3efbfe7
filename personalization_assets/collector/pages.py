"""The consent preference center, `/privacy/preferences`: server-rendered, a little JavaScript, accessible.

Who the visitor is, and nothing the request merely names:

- a logged-in user only through a signed subject token (collector/auth.py) that the customer's backend
  issues under PERSONALIZATION_PREFERENCE_TOKEN_SECRET and links to once as `GET ?token=…`; the center
  verifies it, keeps it in an HttpOnly, SameSite=Lax cookie (Secure over https), redirects to the bare URL
  (the token leaves the address bar and history) and verifies the cookie again on every request;
- the anonymous id only from the `ajs_anonymous_id` cookie (analytics.js's, or set here on a first visit).

A `userId` or `anonymousId` named in the query, a form field or the JSON body, and a user id in analytics.js's
`ajs_user_id` cookie without a token, are refused (4xx with the reason): anyone can put them in a request, so
honouring them would let anyone change or read anyone's consent. Without the secret the center serves
anonymous visitors only. Every change is written through the collector's own durable path as a
`Segment Consent Preference Updated` event; a request with `Sec-GPC: 1` records the Global Privacy Control
signal (once per subject).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from personalization_assets.collector.auth import (
    Subject,
    TokenError,
    verify_subject_token,
)
from personalization_assets.collector.config import PREFERENCE_TOKEN_SECRET_ENV
from personalization_assets.collector.limits import Rejected, read_body
from personalization_assets.collector.messages import stamp
from personalization_assets.collector.preferences import (
    categories_for,
    consent_event,
    purpose_views,
)
from personalization_assets.collector.tracking_api import now_utc

_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                autoescape=jinja2.select_autoescape(["html"]))
PATH = "/privacy/preferences"
COOKIE_MAX_AGE = 365 * 24 * 3600
ANONYMOUS_COOKIE = "ajs_anonymous_id"
USER_COOKIE = "ajs_user_id"  # analytics.js's; readable and writable by any script of the site: never an identity
TOKEN_COOKIE = "pc_subject_token"
TOKEN_COOKIE_PATH = "/privacy"  # not sent to /v1/*
# every response: not cached, and the URL (which held the token on the first request) never sent as Referer
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

_TOKEN_FLOW = (f"a logged-in visitor is identified only by a signed subject token: your backend issues it for the logged-in "
               f"user with issue_subject_token (personalization_assets.collector.auth) under {PREFERENCE_TOKEN_SECRET_ENV} "
               f"and links to {PATH}?token=<token>")
_NOT_CONFIGURED = (f"this collector has no {PREFERENCE_TOKEN_SECRET_ENV}, so it serves anonymous visitors only. Fix: set "
                   f"{PREFERENCE_TOKEN_SECRET_ENV} to the secret your backend signs subject tokens with")


class Refused(Exception):
    """A request the center does not act on: `status`, a stable `code`, a `message` naming the fix."""

    def __init__(self, status: int, code: str, message: str, clear_token: bool = False):
        super().__init__(message)
        self.status, self.code, self.message, self.clear_token = status, code, message, clear_token


@dataclass(frozen=True)
class Visitor:
    user_id: str | None
    anonymous_id: str | None


def _cookie_id(request: Request, name: str) -> str | None:
    raw = request.cookies.get(name)
    if not raw:
        return None
    value = unquote(raw)
    try:  # analytics.js stores JSON-encoded strings ("\"abc\"")
        decoded = json.loads(value)
        value = decoded if isinstance(decoded, str) else value
    except ValueError:
        pass
    return value.strip() or None


def _secret(request: Request) -> str | None:
    return request.app.state.config.preference_token_secret


def _refuse_named_ids(request: Request, names: Iterable[str], where: str) -> None:
    """The request itself names an id (query, form, JSON body): refused whatever else it carries."""
    names = set(names)
    if "userId" in names:
        if _secret(request) is None:
            raise Refused(403, "token_not_configured", f"the preference center does not take userId from {where}; {_NOT_CONFIGURED}.")
        raise Refused(400, "user_id_not_accepted", f"the preference center does not take userId from {where}: {_TOKEN_FLOW}.")
    if "anonymousId" in names:
        raise Refused(400, "anonymous_id_not_accepted", f"the preference center does not take anonymousId from {where}: the "
                      f"anonymous visitor is the {ANONYMOUS_COOKIE} cookie (analytics.js's, or set by this page on the first visit).")
    if "token" in names:
        raise Refused(400, "token_not_accepted_here", f"the subject token is accepted only on GET {PATH}?token=<token> (then kept "
                      f"in an HttpOnly cookie), not in {where}.")


def _verify(request: Request, token: str, from_cookie: bool) -> Subject:
    secret = _secret(request)
    if secret is None:
        raise Refused(403, "token_not_configured", f"a subject token was given but {_NOT_CONFIGURED}.", clear_token=from_cookie)
    try:
        return verify_subject_token(secret, token)
    except TokenError as exc:
        raise Refused(401, exc.reason, f"{exc.message} ({_TOKEN_FLOW}).", clear_token=from_cookie) from None


def _visitor(request: Request) -> Visitor:
    """The user from the token cookie (verified now), the anonymous id from its cookie; a user id in analytics.js's
    cookie without a token is refused rather than ignored, so a logged-in visitor never sees, or changes,
    someone else's or an anonymous record believing it is theirs."""
    token = request.cookies.get(TOKEN_COOKIE)
    user = _verify(request, token, from_cookie=True).user_id if token else None
    if user is None and _cookie_id(request, USER_COOKIE):
        if _secret(request) is None:
            raise Refused(403, "token_not_configured", f"the preference center does not take the user id from the {USER_COOKIE} "
                          f"cookie; {_NOT_CONFIGURED}.")
        raise Refused(401, "token_required", f"the preference center does not take the user id from the {USER_COOKIE} cookie "
                      f"(any script can write it): {_TOKEN_FLOW}.")
    return Visitor(user, _cookie_id(request, ANONYMOUS_COOKIE))


def _refusal(request: Request, exc: Refused, html: bool) -> Response:
    state = request.app.state
    state.metrics.rejects.labels(exc.code).inc()
    state.metrics.requests.labels("preferences", str(exc.status)).inc()
    if html and "text/html" in request.headers.get("accept", ""):
        body = _TEMPLATES.get_template("preferences_refused.html").render(code=exc.code, message=exc.message)
        response: Response = HTMLResponse(body, status_code=exc.status, headers=HEADERS)
    else:
        response = JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status, headers=HEADERS)
    if exc.clear_token:
        response.delete_cookie(TOKEN_COOKIE, path=TOKEN_COOKIE_PATH, httponly=True, samesite="lax")
    return response


def _gpc(request: Request) -> bool:
    return request.headers.get("sec-gpc", "").strip() == "1"


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


async def _record(request: Request, message: dict) -> None:
    client_ip = request.client.host if request.client else None
    stamp([message], {}, now_utc(request.app.state), client_ip)
    result = await request.app.state.writer.submit([message])
    request.app.state.metrics.messages.labels("written").inc(result.written)


def _consent_message(request: Request, visitor: Visitor, categories: dict | None, gpc: bool) -> dict:
    return consent_event(anonymous_id=visitor.anonymous_id, user_id=visitor.user_id, categories=categories, gpc=gpc,
                         now=now_utc(request.app.state), page_url=str(request.url.replace(query="")),
                         user_agent=request.headers.get("user-agent"))


def _unavailable(request: Request, html: bool) -> Response | None:
    """503 until the store has applied the suppression list (and while applying it fails): an erased subject's
    choices are never shown, nor a change recorded, from a store that does not know who is erased."""
    state = request.app.state
    if state.store.ready and not state.privacy.problem:
        return None
    exc = Refused(503, "preference_center_unavailable", "The preference center is not available right now (it has not "
                  "read the platform's list of erased subjects yet). Try again in a minute.")
    return _refusal(request, exc, html=html)


async def preferences_get(request: Request) -> Response:
    state = request.app.state
    if (busy := _unavailable(request, html=True)) is not None:
        return busy
    try:
        _refuse_named_ids(request, set(request.query_params) - {"token"}, "the query string")
        token = request.query_params.get("token")
        if token is not None:  # the link from the customer's backend: verified, kept in a cookie, out of the URL
            subject = _verify(request, token, from_cookie=False)
            response = RedirectResponse(PATH, status_code=303, headers=HEADERS)
            response.set_cookie(TOKEN_COOKIE, token, max_age=max(1, subject.expires_at - int(time.time())), path=TOKEN_COOKIE_PATH,
                                httponly=True, samesite="lax", secure=_https(request))
            state.metrics.requests.labels("preferences", "303").inc()
            return response
        visitor = _visitor(request)
    except Refused as exc:
        return _refusal(request, exc, html=True)
    new_cookie = None
    if not visitor.user_id and not visitor.anonymous_id:
        new_cookie = str(uuid.uuid4())
        visitor = Visitor(None, new_cookie)
    purposes, gpc_recorded = await asyncio.to_thread(state.store.current, visitor.user_id, visitor.anonymous_id)
    if _gpc(request) and not gpc_recorded:
        await _record(request, _consent_message(request, visitor, None, True))
        purposes, gpc_recorded = await asyncio.to_thread(state.store.current, visitor.user_id, visitor.anonymous_id)
    html = _TEMPLATES.get_template("preferences.html").render(
        purposes=purpose_views(state.policy), state=purposes, gpc=gpc_recorded or _gpc(request), signed_in=visitor.user_id is not None,
    )
    response = HTMLResponse(html, headers=HEADERS)
    if new_cookie:
        response.set_cookie(ANONYMOUS_COOKIE, json.dumps(new_cookie), max_age=COOKIE_MAX_AGE, samesite="lax", path="/",
                            secure=_https(request))
    state.metrics.requests.labels("preferences", "200").inc()
    return response


def _same_origin(request: Request) -> bool:
    """A browser says where a post comes from (Origin; Sec-Fetch-Site in current browsers); only this page may post.
    A client sending neither is not a browser acting for someone else: it can only use its own cookies."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


async def preferences_post(request: Request):
    state = request.app.state
    if (busy := _unavailable(request, html=False)) is not None:
        return busy
    if not _same_origin(request):
        state.metrics.rejects.labels("cross_origin").inc()
        return JSONResponse({"code": "cross_origin", "message": "preferences can only be changed from this page"}, status_code=403,
                            headers=HEADERS)
    is_json = request.headers.get("content-type", "").startswith("application/json")
    try:
        body = await read_body(request.stream(), request.headers.get("content-encoding"), limit=16 * 1024)
    except Rejected as exc:
        state.metrics.rejects.labels(exc.reason).inc()
        return JSONResponse({"code": exc.reason, "message": exc.message}, status_code=exc.status, headers=HEADERS)
    if is_json:
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise TypeError
            granted = [str(p) for p in data.get("granted", [])]
        except (ValueError, TypeError):
            state.metrics.rejects.labels("malformed_json").inc()
            return JSONResponse({"code": "malformed_json", "message": "expected {granted: [purpose, ...]}"}, status_code=400,
                                headers=HEADERS)
        named, where = set(data), "the JSON body"
    else:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        granted = fields.get("purpose", [])
        named, where = set(fields), "the form"
    try:
        _refuse_named_ids(request, request.query_params, "the query string")
        _refuse_named_ids(request, named, where)
        visitor = _visitor(request)
    except Refused as exc:
        return _refusal(request, exc, html=False)
    if not visitor.user_id and not visitor.anonymous_id:
        state.metrics.rejects.labels("no_subject").inc()
        return JSONResponse({"code": "no_subject", "message": f"open {PATH} first: no subject token and no {ANONYMOUS_COOKIE} cookie"},
                            status_code=400, headers=HEADERS)
    unknown = set(granted) - set(state.policy.purposes)
    if unknown:
        state.metrics.rejects.labels("unknown_purpose").inc()
        return JSONResponse({"code": "unknown_purpose", "message": f"unknown purpose(s): {sorted(unknown)}"}, status_code=400,
                            headers=HEADERS)
    categories = categories_for({p: True for p in granted}, state.policy)
    await _record(request, _consent_message(request, visitor, categories, _gpc(request)))
    purposes, gpc_now = await asyncio.to_thread(state.store.current, visitor.user_id, visitor.anonymous_id)
    state.metrics.requests.labels("preferences", "200").inc()
    if is_json:
        return JSONResponse({"purposes": purposes, "gpc": gpc_now}, headers=HEADERS)
    # the visitor is in the cookies, so the URL carries no id (nothing to encode, nothing to forge)
    return RedirectResponse(PATH, status_code=303, headers=HEADERS)
