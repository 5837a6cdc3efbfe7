"""Hand-built feature tables (the features layer's output, personalization_assets/features/models.py)
for the warehouse tests.

20 persons, snapshot AS_OF:
- k01..k16: known users with personalization consent (in user_rfm, content_affinity, engagement);
  k10 and k11 have identical RFM values (a tie: they share their scores), k15 is a new user (first seen
  5 days before AS_OF), k04 has no content events (no top category);
- a01, a02: anonymous-only persons (personalization consent, but is_known_user = false);
- n01, n02: no personalization consent (only in purpose_eligibility, identity_map and sessions);
  n01 is eligible for sale_share all the same.
sale_share eligibility is false for k03 (opted out of sale/share) and k07 (Global Privacy Control).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from personalization_assets.core.schemas import arrow_schema
from personalization_assets.features.models import FEATURE_MODELS

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
PURPOSES = ("personalization", "analytics", "advertising", "sale_share")


def pseudonym(name: str) -> str:
    return "v1:" + hashlib.sha256(name.encode()).hexdigest()


@dataclass(frozen=True)
class Person:
    name: str
    recency_days: int
    frequency: int
    monetary: float
    orders: int
    first_seen_days_ago: float
    known: bool = True
    # category -> events (affinity = share of the person's events)
    categories: tuple[tuple[str, int], ...] = ()

    @property
    def person_id(self) -> str:
        return pseudonym(self.name)


CONSENTED = (
    Person("k01", 1, 30, 900.0, 9, 400, categories=(("sports", 8), ("news", 2))),
    Person("k02", 2, 22, 450.0, 5, 380, categories=(("news", 5), ("music", 5))),
    Person("k03", 4, 18, 1200.0, 11, 300, categories=(("sports", 3), ("news", 3), ("music", 4))),
    Person("k04", 6, 12, 0.0, 0, 250),
    Person("k05", 9, 9, 120.0, 2, 200, categories=(("travel", 7), ("music", 3))),
    Person("k06", 12, 7, 80.0, 1, 190, categories=(("news", 1),)),
    Person("k07", 20, 15, 600.0, 6, 180, categories=(("sports", 2), ("travel", 2), ("news", 6))),
    Person("k08", 35, 4, 45.0, 1, 170, categories=(("music", 9), ("news", 1))),
    Person("k09", 48, 3, 0.0, 0, 160, categories=(("travel", 4), ("sports", 6))),
    Person("k10", 70, 2, 25.0, 1, 150, categories=(("news", 3), ("music", 7))),
    Person("k11", 70, 2, 25.0, 1, 150, categories=(("news", 7), ("music", 3))),
    Person("k12", 95, 5, 300.0, 3, 140, categories=(("sports", 1), ("travel", 1), ("music", 1), ("news", 1))),
    Person("k13", 120, 1, 10.0, 1, 130, categories=(("travel", 5),)),
    Person("k14", 160, 1, 0.0, 0, 330, categories=(("news", 2), ("sports", 1))),
    Person("k15", 0, 3, 60.0, 1, 5, categories=(("music", 2), ("travel", 1))),
    Person("k16", 28, 6, 150.0, 2, 90, categories=(("sports", 5),)),
    Person("a01", 3, 6, 0.0, 0, 40, known=False, categories=(("sports", 4),)),
    Person("a02", 50, 1, 0.0, 0, 60, known=False, categories=(("news", 1),)),
)
NOT_CONSENTED = ("n01", "n02")
SALE_SHARE_NOT_ELIGIBLE = {"k03", "k07"}
KNOWN = tuple(p for p in CONSENTED if p.known)


def _eligibility(name: str, purpose: str) -> bool:
    if name in NOT_CONSENTED:
        # no personalization consent; n01 still allows sale/share (it must not reach the audience)
        return name == "n01" and purpose == "sale_share"
    if purpose == "sale_share":
        return name not in SALE_SHARE_NOT_ELIGIBLE
    return True


def _typed(table: str, columns: dict) -> pa.Table:
    """A fixture table with the Arrow schema of its pandera model (core/schemas.py): exactly the model's columns."""
    schema = arrow_schema(FEATURE_MODELS[table])
    if set(columns) != set(schema.names):
        raise ValueError(f"fixture {table}: columns {sorted(set(columns) ^ set(schema.names))} differ from {FEATURE_MODELS[table].__name__}")
    return pa.Table.from_pydict(columns, schema=schema)


def feature_tables() -> dict[str, pa.Table]:
    """The six feature tables, typed like the features layer writes them: the types come from the pandera models."""
    as_of = lambda n: [AS_OF] * n
    user_rfm = _typed("user_rfm", 
        {
            "person_id": [p.person_id for p in CONSENTED],
            "recency_days": [p.recency_days for p in CONSENTED],
            "frequency": [p.frequency for p in CONSENTED],
            "monetary": [p.monetary for p in CONSENTED],
            "orders": [p.orders for p in CONSENTED],
            "first_seen_at": [AS_OF - timedelta(days=p.first_seen_days_ago) for p in CONSENTED],
            "last_seen_at": [AS_OF - timedelta(days=p.recency_days) for p in CONSENTED],
            "is_known_user": [p.known for p in CONSENTED],
            "as_of": as_of(len(CONSENTED)),
        }
    )

    affinity_rows = []
    for p in CONSENTED:
        total = sum(n for _, n in p.categories)
        if not total:
            continue
        top = min(p.categories, key=lambda c: (-c[1], c[0]))[0]
        for category, n in p.categories:
            affinity_rows.append((p.person_id, category, n / total, float(n), n, category == top, top))
    content_affinity = _typed("content_affinity", 
        {
            "person_id": [r[0] for r in affinity_rows],
            "category": [r[1] for r in affinity_rows],
            "affinity": [r[2] for r in affinity_rows],
            # extra column of the features contract: the warehouse does not load it
            "decayed_weight": [r[3] for r in affinity_rows],
            "events": [r[4] for r in affinity_rows],
            "is_top": [r[5] for r in affinity_rows],
            "top_category": [r[6] for r in affinity_rows],
            "as_of": as_of(len(affinity_rows)),
        }
    )

    engagement = _typed("engagement", 
        {
            "person_id": [p.person_id for p in CONSENTED],
            "active_days": [max(1, p.frequency // 2) for p in CONSENTED],
            "sessions": [max(1, p.frequency) for p in CONSENTED],
            "sessions_per_week": [p.frequency / 13.0 for p in CONSENTED],
            "avg_session_dwell_ms": [60_000.0 + 1000 * i for i, _ in enumerate(CONSENTED)],
            "preferred_hour": [(7 * i) % 24 for i, _ in enumerate(CONSENTED)],
            "preferred_dow": [i % 7 for i, _ in enumerate(CONSENTED)],
            "as_of": as_of(len(CONSENTED)),
        }
    )

    everyone = [p.name for p in CONSENTED] + list(NOT_CONSENTED)
    known_names = {p.name for p in KNOWN}
    identity_rows = []
    for name in everyone:
        identity_rows.append((pseudonym(f"anon-{name}"), "anonymous", pseudonym(name), 2 if name in known_names else 1, False))
        if name in known_names:
            identity_rows.append((pseudonym(f"user-{name}"), "user", pseudonym(name), 2, False))
    identity_map = _typed("identity_map", 
        {
            "identifier": [r[0] for r in identity_rows],
            "identifier_kind": [r[1] for r in identity_rows],
            "person_id": [r[2] for r in identity_rows],
            "component_size": [r[3] for r in identity_rows],
            "is_junk": [r[4] for r in identity_rows],
            "as_of": as_of(len(identity_rows)),
        }
    )

    eligibility_rows = [(pseudonym(n), purpose, _eligibility(n, purpose)) for n in everyone for purpose in PURPOSES]
    purpose_eligibility = _typed("purpose_eligibility", 
        {
            "person_id": [r[0] for r in eligibility_rows],
            "purpose": [r[1] for r in eligibility_rows],
            "eligible": [r[2] for r in eligibility_rows],
            "consent_subjects": [1] * len(eligibility_rows),
            "as_of": as_of(len(eligibility_rows)),
        }
    )

    session_rows = []
    for i, name in enumerate(everyone):
        start = AS_OF - timedelta(days=1 + i, hours=3)
        session_rows.append(
            (pseudonym(name), hashlib.md5(f"{name}|{i}".encode()).hexdigest(), start, start + timedelta(minutes=12), 5 + i, 2 + i % 3, 60_000 + 500 * i, f"c{i:03d}", i % 4 == 0)
        )
    sessions = _typed("sessions", 
        {
            "person_id": [r[0] for r in session_rows],
            "session_id": [r[1] for r in session_rows],
            "session_start": [r[2] for r in session_rows],
            "session_end": [r[3] for r in session_rows],
            "events": [r[4] for r in session_rows],
            "pages": [r[5] for r in session_rows],
            "dwell_ms": [r[6] for r in session_rows],
            "landing_content_id": [r[7] for r in session_rows],
            "converted": [r[8] for r in session_rows],
            "as_of": as_of(len(session_rows)),
        }
    )
    return {
        "user_rfm": user_rfm,
        "content_affinity": content_affinity,
        "engagement": engagement,
        "identity_map": identity_map,
        "purpose_eligibility": purpose_eligibility,
        "sessions": sessions,
    }


def write_feature_lake(data_dir: Path) -> dict[str, Path]:
    """Write the tables where the features layer puts them: <data_dir>/lake/features/<table>/data.parquet."""
    paths = {}
    for table, data in feature_tables().items():
        path = Path(data_dir) / "lake" / "features" / table / "data.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, path)
        paths[table] = path
    return paths
