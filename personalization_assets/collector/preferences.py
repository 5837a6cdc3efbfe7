"""What the preference center records: purposes chosen by a visitor -> the consent event ingestion understands.

Ingestion decides purposes from `context.consent.categoryPreferences` (purposes.yaml maps CMP categories to
purposes; a purpose is granted iff every present category of it is true). Purposes can share a category
(`advertising` belongs to both `advertising` and `sale_share`), so a withdrawal sets to false a category
that only withdrawn purposes use; when a withdrawn purpose has no such category, all its categories go
false and the purposes sharing them are withdrawn too (fail-closed). The center then shows the outcome
computed with ingestion's own rule (`purposes_from_preferences`), so what the visitor sees is what will apply.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import yaml

from personalization_assets.collector.messages import iso_ms
from personalization_assets.privacy.consent import purposes_from_preferences
from personalization_assets.core.policies import (
    PrivacyPolicy,
    get_policy,
    policy_dir,
)
from personalization_assets.core.tracking_plan import CONSENT_EVENT

SOURCE_LIBRARY = {"name": "personalization-preference-center", "version": "1"}


@dataclass(frozen=True)
class PurposeView:
    name: str
    description: str
    gpc_denies: bool


def purpose_views(policy: PrivacyPolicy | None = None) -> list[PurposeView]:
    policy = policy or get_policy()
    raw = yaml.safe_load((policy_dir() / "purposes.yaml").read_text()) or {}
    specs = raw.get("purposes", {})
    return [PurposeView(p.name, str(specs.get(p.name, {}).get("description", "")), p.gpc_denies) for p in policy.purposes.values()]


def categories_for(choices: dict[str, bool], policy: PrivacyPolicy | None = None) -> dict[str, bool]:
    """categoryPreferences expressing `choices` ({purpose: granted?}); a purpose left out counts as withdrawn."""
    policy = policy or get_policy()
    purposes = list(policy.purposes.values())
    granted = {p.name for p in purposes if choices.get(p.name)}
    users = {c: [p.name for p in purposes if c in p.categories] for p in purposes for c in p.categories}
    values = {c: True for c in users}
    for p in purposes:
        if p.name in granted:
            continue
        own = [c for c in p.categories if not any(q in granted for q in users[c])]
        for c in own or p.categories:
            values[c] = False
    return values


def effective(categories: dict[str, bool], gpc: bool, policy: PrivacyPolicy | None = None) -> dict[str, str]:
    """{purpose: granted|denied} as ingestion will decide it (GPC denies the `gpc_denies` purposes)."""
    policy = policy or get_policy()
    out = purposes_from_preferences(json.dumps(categories), policy)
    if gpc:
        out.update({p.name: "denied" for p in policy.purposes.values() if p.gpc_denies})
    return out


def consent_event(*, anonymous_id: str | None, user_id: str | None, categories: dict[str, bool] | None, gpc: bool,
                  now: datetime, page_url: str | None, user_agent: str | None) -> dict:
    """A `Segment Consent Preference Updated` track message, as a CMP integration would send it."""
    context: dict = {"library": SOURCE_LIBRARY}
    if categories is not None:
        context["consent"] = {"categoryPreferences": categories}
    if gpc:
        context["gpc"] = True
    if page_url:
        context["page"] = {"url": page_url}
    if user_agent:
        context["userAgent"] = user_agent
    message = {
        "type": "track",
        "event": CONSENT_EVENT,
        "messageId": f"pc-{uuid.uuid4()}",
        "timestamp": iso_ms(now),
        "context": context,
        "properties": {"source": "preference_center"},
    }
    if anonymous_id:
        message["anonymousId"] = anonymous_id
    if user_id:
        message["userId"] = user_id
    return message
