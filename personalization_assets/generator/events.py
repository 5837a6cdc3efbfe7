"""Render an EventBatch as Segment/RudderStack spec JSON lines (bytes, no trailing newline).

A line is assembled from fragments: a fixed-width head (messageId and the three timestamps, built with
numpy), the type, the identity (per device), the device context (per device: ip, userAgent, library,
locale, location, gpc), optional page and consent context, and the body (properties or traits). Only the
body of a few message kinds is formatted per message; everything else comes from lookup tables.

Layout (key order is fixed, which the bad-line corruptions rely on):
``{"messageId":"…","timestamp":"…","sentAt":"…","receivedAt":"…","type":…,"anonymousId":…,"userId":…,
"context":{…},"properties":{…}}``
"""

from __future__ import annotations

import json

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.batch import (
    ADDED,
    ALIAS,
    IDENTIFY,
    ORDER,
    PAGE,
    SCREEN,
    SHARED,
    SUBSCRIPTION,
    VIEWED,
    EventBatch,
)
from personalization_assets.generator.catalog import Catalog
from personalization_assets.generator.encode import (
    hex_matrix,
    iso_matrix,
    rows,
    uuid_matrix,
)
from personalization_assets.generator.population import Population

LINE = b'%s%s,%s,"context":{%s%s%s}%s}'
HEAD_TS = slice(64, 90)  # "timestamp" value including its quotes
HEAD_END = 52  # after '{"messageId":"…",'

TYPE_FRAG = np.array([
    b'"type":"page","name":"Article"',
    b'"type":"screen","name":"Article Detail"',
    b'"type":"track","event":"Content Viewed"',
    b'"type":"track","event":"Content Shared"',
    b'"type":"track","event":"Product Added"',
    b'"type":"track","event":"Order Completed"',
    b'"type":"track","event":"Subscription Started"',
    b'"type":"track","event":"Segment Consent Preference Updated"',
    b'"type":"identify"',
    b'"type":"alias"',
], dtype=object)


def _consent_lut() -> np.ndarray:
    lut = [b""]
    for keys in vocab.CONSENT_KEYSETS:
        for mask in range(128):
            prefs = {c: bool(mask & vocab.BIT[c]) for c in keys}
            lut.append(b',"consent":{"categoryPreferences":' + json.dumps(prefs, separators=(",", ":")).encode() + b"}")
    return np.array(lut, dtype=object)


CONSENT_LUT = _consent_lut()  # index: 1 + keyset * 128 + mask


def _device_luts(libraries=vocab.LIBRARIES):
    ua = []
    for t, agents in enumerate(vocab.USER_AGENTS):
        lib_name, lib_version = libraries[t]
        frags = []
        for agent in agents:
            extra = {"library": {"name": lib_name, "version": lib_version}}
            if t >= vocab.APP_IOS:
                extra["app"] = {"name": "DailyReader", "version": agent.split("/")[1].split(" ")[0]}
                extra["os"] = {"name": "iOS" if t == vocab.APP_IOS else "Android"}
            frags.append(('"userAgent":' + json.dumps(agent) + "," + json.dumps(extra, separators=(",", ":"))[1:-1]).encode())
        ua.append(frags)
    loc = []
    for location in vocab.LOCATIONS:
        where = {"country": location.country} | ({"region": location.region} if location.region else {})
        where_json = json.dumps(where, separators=(",", ":"))
        loc.append([f'"locale":"{lc}","location":{where_json}'.encode() for lc in (location.locales[0], location.locales[-1])])
    return ua, loc


UA_FRAG, LOC_FRAG = _device_luts()
# RudderStack's SDKs name themselves differently in context.library (generator/layouts.py)
RUDDER_UA_FRAG = _device_luts((("RudderLabs JavaScript SDK", "3.11.2"), ("RudderLabs JavaScript SDK", "3.11.2"),
                               ("rudder-ios-library", "1.29.1"), ("com.rudderstack.android.sdk.core", "1.25.1")))[0]
CURRENCY = [loc.currency.encode() for loc in vocab.LOCATIONS]
ITEM_PRICE = [[vocab.local_price(p, loc.currency).encode() for p in vocab.ITEM_PRICES_USD] for loc in vocab.LOCATIONS]
PLAN_PRICE = [[vocab.local_price(p, loc.currency).encode() for p in vocab.PLAN_PRICES_USD] for loc in vocab.LOCATIONS]
PLAN_NAMES = [p.encode() for p in vocab.PLANS]
CHANNELS = [c.encode() for c in vocab.SHARE_CHANNELS]
IP_FIRST = (2, 5, 24, 31, 37, 46, 62, 66, 73, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95,
            98, 99, 104, 107, 108, 109, 151, 176, 178, 185, 188, 193, 194, 195, 212, 213, 217)


def _ip(h: int) -> bytes:
    if h >> 61 == 0:  # 1 in 8 devices is on IPv6 (documentation prefix)
        return b"2001:db8:%x:%x::%x" % ((h >> 8) & 0xFFFF, (h >> 24) & 0xFFFF, (h >> 40) & 0xFFF)
    return b"%d.%d.%d.%d" % (IP_FIRST[h % len(IP_FIRST)], (h >> 8) & 0xFF, (h >> 16) & 0xFF, 1 + (h >> 24) % 254)


def device_fragments(pop: Population, users: np.ndarray, devs: np.ndarray, ua_frag=UA_FRAG) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct device: identity fragments (anonymous, identified, alias) and the context fragment."""
    aids = rows([uuid_matrix(*pop.aid_bits(users, devs))])
    uids = rows([b'"usr_', hex_matrix(pop.uid_bits(users)), b'"'])
    types = pop.device_type(users, devs).tolist()
    hashes = pop.device_hash(users, devs).tolist()
    locs = pop.loc[users].tolist()
    alts = pop.loc_alt[users].tolist()
    gpcs = pop.gpc[users].tolist()
    ident = np.empty((len(aids), 3), dtype=object)
    ctx = np.empty(len(aids), dtype=object)
    for i, (aid, uid, t, h, loc, alt, gpc) in enumerate(zip(aids, uids, types, hashes, locs, alts, gpcs)):
        anon = b'"anonymousId":"' + aid + b'"'
        ident[i, 0] = anon + b',"userId":null'
        ident[i, 1] = anon + b',"userId":' + uid
        ident[i, 2] = ident[i, 1] + b',"previousId":"' + aid + b'"'
        agents = ua_frag[t]
        ctx[i] = b'"ip":"%s",%s,%s,"gpc":%s' % (_ip(h), agents[(h >> 32) % len(agents)], LOC_FRAG[loc][alt], b"true" if gpc else b"false")
    return ident, ctx


def traits(pop: Population, person: int) -> bytes:
    ident = pop.identity(person)
    loc = pop.location(person)
    t = {"email": ident.email, "phone": ident.phone, "name": f"{ident.first} {ident.last}", "first_name": ident.first,
         "last_name": ident.last, "country": loc.country}
    return b',"traits":' + json.dumps(t, ensure_ascii=False, separators=(",", ":")).encode()


def _bodies(batch: EventBatch, pop: Population, catalog: Catalog) -> list[bytes]:
    n = len(batch)
    body = np.full(n, b',"properties":{}', dtype=object)  # consent events carry no properties
    kind, content = batch.kind, batch.content

    def idx(k):
        return np.flatnonzero(kind == k)

    body[idx(ALIAS)] = b""
    i = idx(PAGE)
    body[i] = catalog.page_props[content[i]]
    i = idx(SCREEN)
    body[i] = catalog.screen_props[content[i]]
    i = idx(VIEWED)
    body[i] = [b',"properties":{%s,"dwell_ms":%d}' % t for t in zip(catalog.cc[content[i]].tolist(), batch.dwell[i].tolist())]
    i = idx(SHARED)
    body[i] = [b',"properties":{%s,"channel":"%s"}' % (c, CHANNELS[h % len(CHANNELS)])
               for c, h in zip(catalog.cc[content[i]].tolist(), (batch.mid_lo[i] >> np.uint64(7)).tolist())]
    locs = pop.loc[batch.user]
    i = idx(ADDED)
    body[i] = [b',"properties":{%s,"price":%s,"currency":"%s","quantity":1}' % (c, ITEM_PRICE[loc][p], CURRENCY[loc])
               for c, loc, p in zip(catalog.cc[content[i]].tolist(), locs[i].tolist(), batch.price[i].tolist())]
    i = idx(ORDER)
    order_ids = rows([b"ord_", hex_matrix(batch.mid_lo[i], 12)]) if i.shape[0] else []
    body[i] = [b',"properties":{"order_id":"%s",%s,"price":%s,"revenue":%s,"currency":"%s"}' % (o, c, ITEM_PRICE[loc][p], ITEM_PRICE[loc][p], CURRENCY[loc])
               for o, c, loc, p in zip(order_ids, catalog.cc[content[i]].tolist(), locs[i].tolist(), batch.price[i].tolist())]
    i = idx(SUBSCRIPTION)
    body[i] = [b',"properties":{"plan":"%s","price":%s,"currency":"%s"}' % (PLAN_NAMES[p], PLAN_PRICE[loc][p], CURRENCY[loc])
               for loc, p in zip(locs[i].tolist(), batch.price[i].tolist())]
    i = idx(IDENTIFY)
    cache: dict[int, bytes] = {}
    body[i] = [cache[p] if p in cache else cache.setdefault(p, traits(pop, p)) for p in batch.user[i].tolist()]
    return body.tolist()


def render(batch: EventBatch, pop: Population, catalog: Catalog, rudderstack: bool = False) -> list[bytes]:
    """`rudderstack`: RudderStack's SDK names in context.library and identify traits in context.traits (as its
    SDKs send them) instead of top-level traits."""
    n = len(batch)
    if n == 0:
        return []
    head = rows([b'{"messageId":"', uuid_matrix(batch.mid_hi, batch.mid_lo), b'","timestamp":"', iso_matrix(batch.ts),
                 b'","sentAt":"', iso_matrix(batch.sa), b'","receivedAt":"', iso_matrix(batch.ra), b'",'])
    typ = TYPE_FRAG[batch.kind].tolist()
    keys, inv = np.unique(batch.user.astype(np.int64) * 4 + batch.dev, return_inverse=True)
    ident_tab, ctx_tab = device_fragments(pop, keys // 4, (keys % 4).astype(np.uint8), RUDDER_UA_FRAG if rudderstack else UA_FRAG)
    variant = np.where(batch.kind == ALIAS, 2, batch.uid.astype(np.int64))
    ident = ident_tab.ravel()[inv.ravel() * 3 + variant].tolist()
    ctx = ctx_tab[inv.ravel()].tolist()
    page_i = np.flatnonzero(batch.kind == PAGE)
    page = np.full(n, b"", dtype=object)
    page[page_i] = catalog.page_ctx[batch.content[page_i].astype(np.int64) * len(vocab.REFERRERS) + batch.ref[page_i]]
    consent = CONSENT_LUT[batch.consent.astype(np.int64) + 1].tolist()
    body = _bodies(batch, pop, catalog)
    if rudderstack:
        for i in np.flatnonzero(batch.kind == IDENTIFY).tolist():
            consent[i], body[i] = consent[i] + body[i], b""  # ',"traits":{…}' moves to the end of the context
    return [LINE % t for t in zip(head, typ, ident, ctx, page.tolist(), consent, body)]

