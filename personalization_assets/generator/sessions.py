"""Session simulation: the regular messages received in one time window, fully vectorized.

A window's budget of messages is cut into sessions (geometric lengths), each session is given to a person
(power-law activity) and one of their devices, and its messages are bursts seconds-minutes apart placed
inside the window by receivedAt. Per-person state (devices seen, logged in, consent withdrawn) carries
over between windows, so a device's first visit asks for consent, later visits may log in (identify or
alias), and a withdrawal happens at the person's first session after their withdrawal time. Sessions
never cross a window boundary. A few app sessions are delivered late (offline phones): their receivedAt
is in the window, their timestamps hours to 2 days (sometimes 4-10 days) earlier.
"""

from __future__ import annotations

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.batch import (
    ADDED,
    ALIAS,
    CONSENT,
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
from personalization_assets.generator.population import Population

HOUR, DAY = 3_600_000, 86_400_000
MEAN_SESSION = 7
MAX_SESSION = 60
P_LOGIN = 0.35  # a registered user's not-logged-in device logs in during a session
P_REIDENTIFY = 0.08  # a logged-in session starts with an identify (app start / trait refresh)
P_LATE = 0.04  # app sessions delivered late
P_VERY_LATE = 0.15  # of the late ones, 4-10 days late
LATE_STEP_MS = 40  # offline messages arrive in one burst, this far apart
WEB_KINDS = np.array([PAGE, VIEWED, SHARED, ADDED, ORDER, SUBSCRIPTION], dtype=np.uint8)
WEB_KIND_CDF = np.cumsum([0.37, 0.5, 0.05, 0.045, 0.015, 0.002]) / 0.982
PLAN_CDF = np.cumsum([0.6, 0.25, 0.15])
REF_CDF = np.cumsum(vocab.REFERRER_WEIGHTS)
WITHDRAW_CLEARS = np.uint8(vocab.BIT["personalization"] | vocab.BIT["advertising"] | vocab.BIT["marketing"] | vocab.BIT["data_sharing"])


def session_lengths(rng: np.random.Generator, m: int) -> np.ndarray:
    """Geometric session lengths (mean ~7, capped) summing to exactly m."""
    parts, total = [], 0
    while total < m:
        k = int((m - total) / MEAN_SESSION * 1.2) + 8
        lengths = np.minimum(rng.geometric(1.0 / MEAN_SESSION, k), MAX_SESSION)
        parts.append(lengths)
        total += int(lengths.sum())
    if not parts:
        return np.zeros(0, np.int64)
    lengths = np.concatenate(parts).astype(np.int64)
    c = np.cumsum(lengths)
    s = int(np.searchsorted(c, m))
    lengths = lengths[: s + 1].copy()
    lengths[-1] -= c[s] - m
    return lengths


def _first_per_key(keys: np.ndarray, order: np.ndarray, size: int) -> np.ndarray:
    """Mask of the first element (in `order`) of each distinct key."""
    mask = np.zeros(size, bool)
    if order.shape[0]:
        _, first = np.unique(keys[order], return_index=True)
        mask[order[first]] = True
    return mask


def simulate(pop: Population, catalog: Catalog, rng: np.random.Generator, a: int, b: int, m: int) -> EventBatch:
    """`m` regular messages with receivedAt in [a, b); updates the population's state."""
    lengths = session_lengths(rng, m)
    n_s = lengths.shape[0]
    u = pop.sample_users(rng, n_s)
    d = pop.sample_devices(rng, u)
    app = pop.device_type(u, d) >= vocab.APP_IOS
    first = np.cumsum(lengths) - lengths
    sid = np.repeat(np.arange(n_s), lengths)
    pos = np.arange(m) - first[sid]
    width = b - a

    # --- times: bursts inside the session, sessions placed inside the window
    gaps = rng.lognormal(np.log(18_000), 1.1, m)
    gaps[first] = 0.0
    cum = np.cumsum(gaps)
    off = cum - cum[first][sid]
    dur = off[first + lengths - 1]
    scale = np.where(dur > 0.9 * width, 0.9 * width / np.maximum(dur, 1.0), 1.0)
    off = (off * scale[sid]).astype(np.int64)
    dur = off[first + lengths - 1]
    start = a + (rng.random(n_s) * (width - dur)).astype(np.int64)
    ra = start[sid] + off
    net = rng.integers(20, 400, m)
    queued = np.where(app[sid], rng.integers(0, 20_000, m), np.minimum(rng.exponential(150.0, m), 3_000).astype(np.int64))
    sa = ra - net
    ts = sa - queued
    late = app & (rng.random(n_s) < P_LATE)
    if getattr(pop, "all_consent", False):  # benchmark scenario: nothing may predate a device's consent
        late[:] = False
    delay = np.where(rng.random(n_s) < P_VERY_LATE, rng.integers(4 * DAY, 10 * DAY, n_s), rng.integers(HOUR, 2 * DAY, n_s))
    flush = a + (rng.random(n_s) * np.maximum(width - lengths * LATE_STEP_MS, 1)).astype(np.int64)
    le = late[sid]
    ra = np.where(le, flush[sid] + pos * LATE_STEP_MS, ra)
    sa = np.where(le, flush[sid] - net, sa)
    ts = np.where(le, flush[sid] - delay[sid] - (dur[sid] - off), ts)

    # --- what happens: content views by default; consent, login and withdrawal where the state says so
    base = WEB_KINDS[np.searchsorted(WEB_KIND_CDF, rng.random(m), side="right").clip(0, 5)]
    kind = np.where(app[sid] & (base == PAGE), SCREEN, base).astype(np.uint8)
    bits = (np.uint8(1) << d).astype(np.uint8)
    seen_before = (pop.seen[u] & bits) > 0
    logged_before = (pop.logged[u] & bits) > 0
    order = np.argsort(start, kind="stable")
    consent_now = _first_per_key(u * 4 + d, order, n_s) & ~seen_before & pop.consenter[u]
    due = pop.withdraw_at[u] <= start
    cand = np.flatnonzero(due & ~pop.withdrawn[u])
    withdraw_now = _first_per_key(u[cand], np.argsort(start[cand], kind="stable"), cand.shape[0])
    wd = np.zeros(n_s, bool)
    wd[cand[withdraw_now]] = True
    at0 = consent_now | wd
    kind[first[at0]] = CONSENT
    mask = np.where(due, pop.grant[u] & ~WITHDRAW_CLEARS, pop.grant[u])
    cval = (pop.keyset[u] * 128 + mask).astype(np.int16)

    taken = at0.astype(np.int64)
    login = pop.registered[u] & ~logged_before & (lengths - taken >= 1) & (rng.random(n_s) < P_LOGIN)
    login_pos = np.where(login, taken + (rng.random(n_s) * np.maximum(lengths - taken, 1)).astype(np.int64), 1 << 40)
    kind[(first + login_pos)[login]] = np.where(pop.alias[u[login]], ALIAS, IDENTIFY)
    reid = logged_before & ~at0 & (rng.random(n_s) < P_REIDENTIFY)
    kind[first[reid]] = IDENTIFY
    uid = logged_before[sid] | (pos >= login_pos[sid])
    known = (seen_before & pop.consenter[u])[sid] | (at0[sid] & (pos > 0))
    echo = known & pop.echo[u][sid]
    consent = np.where((kind == CONSENT) | echo, cval[sid], -1).astype(np.int16)

    # --- content, prices, referrers
    ue = u[sid]
    needs_content = kind <= ORDER
    content = np.where(needs_content, catalog.sample(rng, pop.sample_categories(rng, ue)), -1).astype(np.int32)
    dwell = np.clip(rng.lognormal(np.log(40_000), 1.0, m), 500, 1_800_000).astype(np.int32)
    item_pt = catalog.price_point[np.maximum(content, 0)]
    item_pt = np.where(item_pt >= 0, item_pt, rng.integers(0, len(vocab.ITEM_PRICES_USD), m))
    plan = np.searchsorted(PLAN_CDF, rng.random(m), side="right").clip(0, 2)
    price = np.where((kind == ADDED) | (kind == ORDER), item_pt, np.where(kind == SUBSCRIPTION, plan, -1)).astype(np.int8)
    ref = np.where(pos == 0, np.searchsorted(REF_CDF, rng.random(m), side="right").clip(0, len(REF_CDF) - 1), 2).astype(np.int8)
    mid_hi = rng.integers(0, np.iinfo(np.uint64).max, m, dtype=np.uint64, endpoint=True)
    mid_lo = rng.integers(0, np.iinfo(np.uint64).max, m, dtype=np.uint64, endpoint=True)

    if getattr(pop, "all_consent", False):
        # benchmark scenario: the consent event precedes every other event of its session
        session_min = np.full(n_s, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(session_min, sid, ts)
        idx = first[at0]
        ts = ts.copy()
        ts[idx] = np.minimum(ts[idx], session_min[at0] - 1)

    # --- carry the state to the next window
    np.bitwise_or.at(pop.seen, u, bits)
    np.bitwise_or.at(pop.logged, u[login], bits[login])
    pop.withdrawn[u[wd]] = True
    return EventBatch(ra=ra, sa=sa, ts=ts, kind=kind, user=ue, dev=d[sid], uid=uid, consent=consent, content=content,
                      dwell=dwell, price=price, ref=ref, mid_hi=mid_hi, mid_lo=mid_lo, locked=kind >= CONSENT)

