"""The consent preference center, `/privacy/preferences`: server-rendered, a little JavaScript, accessible.

The visitor is identified by `?userId=` / `?anonymousId=`, else by the analytics.js cookies
(`ajs_user_id`, `ajs_anonymous_id`); a visitor with neither gets a new anonymous id cookie. Every change
is written through the collector's own durable path as a `Segment Consent Preference Updated` event. A
request with `Sec-GPC: 1` records the Global Privacy Control signal (once per subject).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import parse_qs, unquote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

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
COOKIE_MAX_AGE = 365 * 24 * 3600


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


def _identity(request: Request, form: dict | None = None) -> tuple[str | None, str | None]:
    form = form or {}
    user = form.get("userId") or request.query_params.get("userId") or _cookie_id(request, "ajs_user_id")
    anon = form.get("anonymousId") or request.query_params.get("anonymousId") or _cookie_id(request, "ajs_anonymous_id")
    return (user or None), (anon or None)


def _gpc(request: Request) -> bool:
    return request.headers.get("sec-gpc", "").strip() == "1"


async def _record(request: Request, message: dict) -> None:
    client_ip = request.client.host if request.client else None
    stamp([message], {}, now_utc(request.app.state), client_ip)
    result = await request.app.state.writer.submit([message])
    request.app.state.metrics.messages.labels("written").inc(result.written)


def _consent_message(request: Request, user: str | None, anon: str | None, categories: dict | None, gpc: bool) -> dict:
    return consent_event(anonymous_id=anon, user_id=user, categories=categories, gpc=gpc, now=now_utc(request.app.state),
                         page_url=str(request.url.replace(query="")), user_agent=request.headers.get("user-agent"))


async def preferences_get(request: Request) -> HTMLResponse:
    state = request.app.state
    user, anon = _identity(request)
    new_cookie = None
    if not user and not anon:
        anon = new_cookie = str(uuid.uuid4())
    purposes, gpc_recorded = state.store.current(user, anon)
    if _gpc(request) and not gpc_recorded:
        await _record(request, _consent_message(request, user, anon, None, True))
        purposes, gpc_recorded = state.store.current(user, anon)
    html = _TEMPLATES.get_template("preferences.html").render(
        purposes=purpose_views(state.policy), state=purposes, gpc=gpc_recorded or _gpc(request), user_id=user, anonymous_id=anon,
    )
    response = HTMLResponse(html, headers={"Cache-Control": "no-store"})
    if new_cookie:
        response.set_cookie("ajs_anonymous_id", json.dumps(new_cookie), max_age=COOKIE_MAX_AGE, samesite="lax", path="/")
    state.metrics.requests.labels("preferences", "200").inc()
    return response


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


async def preferences_post(request: Request):
    state = request.app.state
    if not _same_origin(request):
        state.metrics.rejects.labels("cross_origin").inc()
        return JSONResponse({"code": "cross_origin", "message": "preferences can only be changed from this page"}, status_code=403)
    is_json = request.headers.get("content-type", "").startswith("application/json")
    try:
        body = await read_body(request.stream(), request.headers.get("content-encoding"), limit=16 * 1024)
    except Rejected as exc:
        state.metrics.rejects.labels(exc.reason).inc()
        return JSONResponse({"code": exc.reason, "message": exc.message}, status_code=exc.status)
    if is_json:
        try:
            data = json.loads(body)
            granted = [str(p) for p in data.get("granted", [])]
            form = {k: data.get(k) for k in ("userId", "anonymousId") if isinstance(data.get(k), str)}
        except (ValueError, AttributeError, TypeError):
            state.metrics.rejects.labels("malformed_json").inc()
            return JSONResponse({"code": "malformed_json", "message": "expected {granted: [purpose, ...]}"}, status_code=400)
    else:
        fields = parse_qs(body.decode("utf-8", "replace"))
        granted = fields.get("purpose", [])
        form = {k: fields[k][0] for k in ("userId", "anonymousId") if fields.get(k)}
    user, anon = _identity(request, form)
    if not user and not anon:
        return JSONResponse({"code": "no_subject", "message": "open the page first: no user or anonymous id"}, status_code=400)
    unknown = set(granted) - set(state.policy.purposes)
    if unknown:
        state.metrics.rejects.labels("unknown_purpose").inc()
        return JSONResponse({"code": "unknown_purpose", "message": f"unknown purpose(s): {sorted(unknown)}"}, status_code=400)
    categories = categories_for({p: True for p in granted}, state.policy)
    gpc = _gpc(request)
    await _record(request, _consent_message(request, user, anon, categories, gpc))
    purposes, gpc_now = state.store.current(user, anon)
    state.metrics.requests.labels("preferences", "200").inc()
    if is_json:
        return JSONResponse({"purposes": purposes, "gpc": gpc_now})
    query = "?" + "&".join(f"{k}={v}" for k, v in (("userId", user), ("anonymousId", anon)) if v)
    return RedirectResponse("/privacy/preferences" + query, status_code=303)
