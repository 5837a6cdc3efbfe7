"""Privacy-portal requests (`privacy_requests/*.jsonl`, one file per day received): erasures and sale opt-outs/ins."""

from __future__ import annotations

import json

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.encode import iso_seconds
from personalization_assets.generator.population import Population
from personalization_assets.generator.writer import Writer

P_ERASURE = 0.002
P_OPT_OUT = (0.03, 0.005, 0.001)  # California, other US states, elsewhere
P_OPT_IN_AFTER_OUT = 0.15


def random_requests(pop: Population, rng: np.random.Generator, t0: int, t1: int) -> list[dict]:
    regular = np.flatnonzero(pop.registered[: pop.n_regular])
    out = []
    juris = np.array([loc.jurisdiction for loc in vocab.LOCATIONS])[pop.loc[regular]]
    p_out = np.where(juris == "US-CA", P_OPT_OUT[0], np.where(np.char.startswith(juris.astype(str), "US-"), P_OPT_OUT[1], P_OPT_OUT[2]))
    erase = rng.random(regular.shape[0]) < P_ERASURE
    opt_out = rng.random(regular.shape[0]) < p_out
    for person, e, o in zip(regular.tolist(), erase.tolist(), opt_out.tolist()):
        if not (e or o):
            continue
        jurisdiction = pop.location(person).jurisdiction
        when = t0 + int(rng.random() * (t1 - t0) * 0.95)
        if o:
            out.append(_request(pop, rng, person, "opt_out_sale", when, jurisdiction))
            if rng.random() < P_OPT_IN_AFTER_OUT:
                out.append(_request(pop, rng, person, "opt_in_sale", when + int(rng.random() * (t1 - when)), jurisdiction))
        if e:
            out.append(_request(pop, rng, person, "erasure", t0 + int(rng.random() * (t1 - t0)), jurisdiction))
    return out


def _request(pop: Population, rng: np.random.Generator, person: int, kind: str, when: int, jurisdiction: str) -> dict:
    r = {"request_id": f"dsr_{int(rng.integers(0, 2**63)):016x}", "type": kind}
    subject = rng.random()
    if subject < 0.75:
        r["user_id"] = pop.user_id(person)
    if subject >= 0.6:
        r["email"] = pop.identity(person).email
    r["received_at"] = iso_seconds(when)
    r["jurisdiction"] = jurisdiction
    return r


def write_requests(writer: Writer, root: str, requests: list[dict]) -> int:
    """One file per day received, requests in time order. Returns the number of files."""
    by_day: dict[str, list[bytes]] = {}
    for r in sorted(requests, key=lambda r: (r["received_at"], r["request_id"])):
        by_day.setdefault(r["received_at"][:10], []).append(json.dumps(r, ensure_ascii=False).encode())
    for day, lines in sorted(by_day.items()):
        writer.write_file(f"{root}/privacy_requests/requests_{day}.jsonl", b"\n".join(lines) + b"\n")
    return len(by_day)
