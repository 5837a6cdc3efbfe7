"""Planted cases: scripted people whose privacy outcome is known, always present in the landing zone.

Each case is a short script of sessions placed at fixed fractions of the period, rendered with the same
code as the random traffic (so it looks alike), never corrupted or duplicated. ``build`` returns the
messages, the manifest entries and the privacy requests that belong to the cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.batch import (
    ADDED,
    ALIAS,
    CONSENT,
    IDENTIFY,
    JUNK_DEVICE,
    ORDER,
    PAGE,
    SHARED,
    SUBSCRIPTION,
    VIEWED,
    EventBatch,
)
from personalization_assets.generator.catalog import Catalog
from personalization_assets.generator.encode import iso_ms, iso_seconds
from personalization_assets.generator.population import PlantedPerson, Population

PERSONS = [
    PlantedPerson("never_consented", "DE", None),
    PlantedPerson("grant_then_withdraw", "FR", "FR-IDF"),
    PlantedPerson("anon_consent_then_login", "ES", "ES-MD"),
    PlantedPerson("gpc_user", "US", "US-CA", gpc=True),
    PlantedPerson("opt_out_sale_user", "US", "US-CA"),
    PlantedPerson("erased_user", "NL", "NL-NH"),
    PlantedPerson("erased_by_id", "IT", "IT-62"),
]
JUNK_ANONYMOUS_ID = "00000000-0000-0000-0000-000000000000"
JUNK_LINKS = 40
B = vocab.BIT
GRANT_EU = B["functional"] | B["analytics"] | B["personalization"] | B["performance"]
GRANT_US = GRANT_EU | B["advertising"] | B["data_sharing"]
WITHDRAWN_EU = GRANT_EU & ~B["personalization"]
TOKENS = {"page": PAGE, "view": VIEWED, "share": SHARED, "add": ADDED, "order": ORDER, "sub": SUBSCRIPTION,
          "id": IDENTIFY, "alias": ALIAS}


@dataclass
class Planted:
    batch: EventBatch  # sorted by receivedAt
    cases: dict
    requests: list[dict]


class _Script:
    def __init__(self, pop: Population, catalog: Catalog, rng: np.random.Generator, t0: int, t1: int):
        self.pop, self.catalog, self.rng, self.t0, self.t1 = pop, catalog, rng, t0, t1
        self.rows: list[dict] = []
        self.logged: set[tuple[int, int]] = set()
        self.marks: dict[tuple[int, str], int] = {}

    def at(self, fraction: float) -> int:
        return self.t0 + int(fraction * (self.t1 - self.t0))

    def session(self, person: int, fraction: float, script: str, dev: int = 0, mask: int = 0) -> None:
        """Messages ~20-60 s apart; tokens: page view share add order sub id alias consent."""
        t = self.at(fraction)
        keyset = int(self.pop.keyset[person])
        category = int(self.rng.integers(len(vocab.CATEGORIES)))
        for i, token in enumerate(script.split()):
            kind = CONSENT if token == "consent" else TOKENS[token]
            if kind in (IDENTIFY, ALIAS):
                self.logged.add((person, dev))
            row = {"ra": t, "sa": t - 150, "ts": t - 400, "kind": kind, "user": person, "dev": dev,
                   "uid": (person, dev) in self.logged, "ref": 1 if i == 0 else 2,
                   "mid_hi": int(self.rng.integers(0, 2**63)) * 2 + 1, "mid_lo": int(self.rng.integers(0, 2**63)) * 2}
            if kind == CONSENT:
                row["consent"] = keyset * 128 + mask
                self.marks.setdefault((person, f"consent:{mask}"), row["ts"])
            if kind <= ORDER:
                row["content"] = int(self.catalog.sample(self.rng, np.array([category]))[0])
                row["dwell"] = int(self.rng.integers(5_000, 240_000))
            if kind in (ADDED, ORDER):
                pt = int(self.catalog.price_point[row["content"]])
                row["price"] = pt if pt >= 0 else 3
            if kind == SUBSCRIPTION:
                row["price"] = 0
            self.marks.setdefault((person, token), row["ts"])
            self.rows.append(row)
            t += int(self.rng.integers(20_000, 60_000))


def _request(rng, kind: str, received: int, jurisdiction: str, user_id: str | None = None, email: str | None = None) -> dict:
    r = {"request_id": f"dsr_{int(rng.integers(0, 2**63)):016x}", "type": kind}
    if user_id is not None:
        r["user_id"] = user_id
    if email is not None:
        r["email"] = email
    r["received_at"] = iso_seconds(received)
    r["jurisdiction"] = jurisdiction
    return r


def build(pop: Population, catalog: Catalog, rng: np.random.Generator, t0: int, t1: int) -> Planted:
    s = _Script(pop, catalog, rng, t0, t1)
    p = {person.case: pop.n_regular + i for i, person in enumerate(PERSONS)}
    requests: list[dict] = []

    # never_consented: logs in, reads a lot, never answers the consent banner
    x = p["never_consented"]
    s.session(x, 0.08, "page view view page id view view")
    for f in (0.3, 0.55, 0.8):
        s.session(x, f, "page view view share view")

    # grant_then_withdraw: grants on day 1, withdraws personalization mid-period, keeps reading
    x = p["grant_then_withdraw"]
    s.session(x, 0.01, "consent page view id view view", mask=GRANT_EU)
    s.session(x, 0.25, "page view view add order")
    s.session(x, 0.4, "page view view")
    s.session(x, 0.5, "consent view page", mask=WITHDRAWN_EU)
    s.session(x, 0.65, "page view view")
    s.session(x, 0.85, "view view share")

    # anon_consent_then_login: consents as an anonymous visitor, identifies later
    x = p["anon_consent_then_login"]
    s.session(x, 0.15, "consent page view view page", mask=GRANT_EU)
    s.session(x, 0.3, "page view view view")
    s.session(x, 0.45, "page view id view view share")
    s.session(x, 0.7, "page view view view")

    # gpc_user: California, grants personalization, browser sends Global Privacy Control on every message
    x = p["gpc_user"]
    s.session(x, 0.1, "consent page id view view", mask=GRANT_US)
    s.session(x, 0.4, "page view add order")
    s.session(x, 0.75, "page view view sub")

    # opt_out_sale_user: California, consents to everything, then files "do not sell or share"
    x = p["opt_out_sale_user"]
    s.session(x, 0.1, "consent page id view view", mask=GRANT_US)
    s.session(x, 0.35, "page view view order")
    s.session(x, 0.7, "page view view")
    opt_out = _request(rng, "opt_out_sale", s.at(0.5), "US-CA", pop.user_id(x), pop.identity(x).email)
    requests.append(opt_out)

    # erased_user / erased_by_id: consented users who later ask for erasure (by email / by user_id)
    x = p["erased_user"]
    s.session(x, 0.1, "consent page id view view", mask=GRANT_EU)
    s.session(x, 0.3, "page view view share")
    s.session(x, 0.45, "page view")
    erase_email = _request(rng, "erasure", s.at(0.6), "EU", email=pop.identity(x).email)
    requests.append(erase_email)
    x = p["erased_by_id"]
    s.session(x, 0.12, "consent page id view", mask=GRANT_EU)
    s.session(x, 0.4, "page view view")
    erase_id = _request(rng, "erasure", s.at(0.65), "EU", user_id=pop.user_id(x))
    requests.append(erase_id)

    # junk_anonymous_id: a buggy app build sends the all-zero anonymousId for everyone who logs in
    registered = np.flatnonzero(pop.registered[: pop.n_regular])
    if registered.shape[0] >= JUNK_LINKS:
        linked = np.sort(rng.choice(registered, JUNK_LINKS, replace=False))
    else:
        spares = np.arange(pop.n_regular + pop.n_planted, pop.n)
        linked = np.concatenate([registered, spares])[:JUNK_LINKS]
    for i, person in enumerate(linked.tolist()):
        s.logged.discard((person, JUNK_DEVICE))
        s.session(person, 0.02 + 0.9 * i / JUNK_LINKS, "view id" if i % 4 == 0 else "id", dev=JUNK_DEVICE)

    rows = sorted(s.rows, key=lambda r: (r["ra"], r["mid_hi"]))
    batch = EventBatch.from_rows(rows)
    cases = _cases(pop, s, p, linked, opt_out, erase_email, erase_id)
    return Planted(batch=batch, cases=cases, requests=requests)


def _person_entry(pop: Population, person: int, expected: str, **extra) -> dict:
    return {"user_id": pop.user_id(person), "anonymous_ids": [pop.anonymous_id(person, 0)], "email": pop.identity(person).email,
            "jurisdiction": pop.location(person).jurisdiction, "expected": expected, **extra}


def _cases(pop, s: _Script, p: dict, linked, opt_out: dict, erase_email: dict, erase_id: dict) -> dict:
    def t(person, token):
        return iso_ms(s.marks[(person, token)])

    n_events = {x: sum(1 for r in s.rows if r["user"] == x and r["dev"] != JUNK_DEVICE) for x in p.values()}
    cases = {
        "never_consented": _person_entry(
            pop, p["never_consented"], "no consent on record (EU, opt-in): keep the events in raw, but never use them for "
            "personalization (no features, no segments)", events=n_events[p["never_consented"]], identified_at=t(p["never_consented"], "id")),
        "grant_then_withdraw": _person_entry(
            pop, p["grant_then_withdraw"], "personalization allowed from the grant until the withdrawal; events after the "
            "withdrawal must not feed personalization and the user leaves personalized segments",
            events=n_events[p["grant_then_withdraw"]], granted_at=t(p["grant_then_withdraw"], f"consent:{GRANT_EU}"),
            withdrawn_at=t(p["grant_then_withdraw"], f"consent:{WITHDRAWN_EU}")),
        "anon_consent_then_login": _person_entry(
            pop, p["anon_consent_then_login"], "consent given under the anonymousId carries over to the userId after the "
            "identify: personalization allowed for the stitched profile, including the pre-login events",
            events=n_events[p["anon_consent_then_login"]], granted_at=t(p["anon_consent_then_login"], f"consent:{GRANT_EU}"),
            identified_at=t(p["anon_consent_then_login"], "id")),
        "gpc_user": _person_entry(
            pop, p["gpc_user"], "personalization allowed (consent granted), but Global Privacy Control means opted out of "
            "sale/share: exclude from advertising/data-sharing outputs", events=n_events[p["gpc_user"]]),
        "opt_out_sale_user": _person_entry(
            pop, p["opt_out_sale_user"], "personalization allowed; excluded from sale/share from the opt_out_sale request on",
            events=n_events[p["opt_out_sale_user"]], request_id=opt_out["request_id"], request_received_at=opt_out["received_at"]),
        "erased_user": _person_entry(
            pop, p["erased_user"], "erasure requested by email: after processing, nothing of this user remains downstream "
            "(events under the userId and its anonymousIds, CRM rows, features, segments)",
            events=n_events[p["erased_user"]], request_id=erase_email["request_id"], request_received_at=erase_email["received_at"]),
        "erased_by_id": _person_entry(
            pop, p["erased_by_id"], "erasure requested by user_id (no email on the request): after processing, nothing of "
            "this user remains downstream (events, CRM rows, features, segments)",
            events=n_events[p["erased_by_id"]], request_id=erase_id["request_id"], request_received_at=erase_id["received_at"]),
        "junk_anonymous_id": {
            "user_id": None, "anonymous_ids": [JUNK_ANONYMOUS_ID], "email": None,
            "expected": f"one anonymousId identified with {len(linked)} different userIds (buggy SDK): identity resolution must "
                        "not merge these users through it",
            "linked_user_ids": [pop.user_id(int(x)) for x in linked],
        },
    }
    return cases
