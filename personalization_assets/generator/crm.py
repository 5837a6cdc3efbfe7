"""CRM exports (`crm/*.csv`): a full export before the period and a delta export mid-period.

The delta re-lists some users with a later ``updated_at`` (changed plan, sometimes a changed email); the
latest row wins downstream. With bad data enabled the delta also carries a few broken rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.encode import date_text, iso_seconds
from personalization_assets.generator.population import Population
from personalization_assets.generator.writer import Writer

HEADER = ["user_id", "email", "phone", "first_name", "last_name", "country", "birth_date", "signup_at", "plan", "updated_at"]
BAD_ROW_KINDS = ("wrong_column_count", "invalid_email", "unparseable_date")
CHUNK = 20_000
DAY = 86_400_000


def _country(pop: Population, person: int) -> str:
    loc = pop.location(person)
    return "US-CA" if loc.region == "US-CA" else loc.country


def _row(pop: Population, person: int, updated_ms: int | None = None, plan: str | None = None, email: str | None = None,
         fraction: float = 0.0, before: int = 0) -> list[str]:
    """A CRM row; without `updated_ms` the update is at `fraction` of the way from signup to `before`."""
    ident = pop.identity(person)
    if updated_ms is None:
        updated_ms = ident.signup_ms + int(fraction * max(before - ident.signup_ms, 1))
    return [pop.user_id(person), email or ident.email, ident.phone, ident.first, ident.last, _country(pop, person), ident.birth_date,
            iso_seconds(ident.signup_ms), plan or ident.plan, iso_seconds(updated_ms)]


def _csv(rows: list[list[str]], header: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(HEADER)
    w.writerows(rows)
    return buf.getvalue().encode()


def _write(writer: Writer, path: str, chunks: Iterator[list[list[str]]]) -> int:
    n, header = 0, True
    for rows in chunks:
        writer.write(path, _csv(rows, header))
        header = False
        n += len(rows)
    if header:
        writer.write(path, _csv([], True))
    writer.close(path)
    return n


def write_crm(writer: Writer, root: str, pop: Population, rng: np.random.Generator, t0: int, t1: int, bad: bool) -> tuple[int, int, dict]:
    """Returns (rows written, files written, bad rows by kind)."""
    registered = np.flatnonzero(pop.registered)
    offsets = rng.random(registered.shape[0])

    def full() -> Iterator[list[list[str]]]:
        for lo in range(0, registered.shape[0], CHUNK):
            yield [_row(pop, person, fraction=r, before=t0 - DAY)
                   for person, r in zip(registered[lo : lo + CHUNK].tolist(), offsets[lo : lo + CHUNK].tolist())]

    first_day = (t0 - DAY) // DAY
    n_full = _write(writer, f"{root}/crm/customers_{date_text(first_day)}.csv", full())

    # delta export in the middle of the period: plan changes, some email changes
    regular = registered[registered < pop.n_regular]
    changed = np.sort(regular[rng.random(regular.shape[0]) < 0.08])
    mid = t0 + (t1 - t0) // 2
    rows = []
    for person in changed.tolist():
        ident = pop.identity(person)
        plans = [p for p in vocab.CRM_PLANS if p != ident.plan]
        plan = plans[int(rng.integers(len(plans)))]
        email = None
        if rng.random() < 0.3:
            local, domain = ident.email.split("@")
            others = [d for d in vocab.EMAIL_DOMAINS if d != domain]
            email = f"{local}@{others[int(rng.integers(len(others)))]}"
        rows.append(_row(pop, person, t0 + int(rng.random() * (mid - t0)), plan=plan, email=email))
    bad_counts = {k: 0 for k in BAD_ROW_KINDS}
    if bad and regular.shape[0]:
        for kind in BAD_ROW_KINDS:
            for _ in range(2):
                person = int(regular[rng.integers(regular.shape[0])])
                row = _row(pop, person, t0 + int(rng.random() * (mid - t0)))
                if kind == "wrong_column_count":
                    row = row[:-3] + [row[-1]]
                elif kind == "invalid_email":
                    row[1] = row[1].replace("@", " at ")
                else:
                    row[6] = "31/02/1990" if rng.random() < 0.5 else "not a date"
                rows.insert(int(rng.integers(len(rows) + 1)), row)
                bad_counts[kind] += 1
    n_delta = _write(writer, f"{root}/crm/customers_{date_text(mid // DAY)}.csv", iter([rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]))
    return n_full + n_delta, 2, bad_counts
