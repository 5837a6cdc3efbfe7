"""The choices the preference center shows: the latest decision per purpose for each user id and anonymous id.

Fed by every consent event the collector writes (the center's own and those sent by SDKs or a CMP
through the collector), after it is durable, using ingestion's rule. Consent recorded elsewhere (a CDP
writing straight to S3, privacy requests) is not seen here; the consent ledger stays the authority.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from personalization_assets.collector.preferences import effective
from personalization_assets.core.policies import PrivacyPolicy
from personalization_assets.core.tracking_plan import CONSENT_EVENT


class PreferenceStore:
    def __init__(self, path: Path, policy: PrivacyPolicy):
        self.policy = policy
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("pragma journal_mode=wal")
        self._conn.execute(
            "create table if not exists subjects (subject text primary key, purposes text not null, gpc integer not null, "
            "updated_at text not null)"
        )

    @staticmethod
    def _subjects(message: dict) -> list[str]:
        out = []
        if isinstance(message.get("userId"), str) and message["userId"]:
            out.append("user:" + message["userId"])
        if isinstance(message.get("anonymousId"), str) and message["anonymousId"]:
            out.append("anon:" + message["anonymousId"])
        return out

    def _get(self, subject: str) -> tuple[dict, bool, str] | None:
        row = self._conn.execute("select purposes, gpc, updated_at from subjects where subject = ?", (subject,)).fetchone()
        return (json.loads(row[0]), bool(row[1]), row[2]) if row else None

    def observe(self, messages: list[dict]) -> None:
        """Apply the consent events among durable messages (in time order per subject)."""
        consent = [m for m in messages if m.get("type") == "track" and m.get("event") == CONSENT_EVENT]
        consent.sort(key=lambda m: str(m.get("timestamp") or m.get("receivedAt")))
        with self._lock:
            for m in consent:
                context = m.get("context") if isinstance(m.get("context"), dict) else {}
                prefs = (context.get("consent") or {}).get("categoryPreferences") if isinstance(context.get("consent"), dict) else None
                gpc = context.get("gpc") is True
                decided = effective(prefs, gpc, self.policy) if isinstance(prefs, dict) else (
                    effective({}, gpc, self.policy) if gpc else {})
                when = str(m.get("timestamp") or m.get("receivedAt"))
                for subject in self._subjects(m):
                    old = self._get(subject)
                    purposes, old_gpc = (old[0], old[1]) if old else ({}, False)
                    purposes = {**purposes, **decided}
                    sticky_gpc = old_gpc or gpc
                    if sticky_gpc:  # a GPC denial is sticky, as in the consent ledger
                        purposes.update({p.name: "denied" for p in self.policy.purposes.values() if p.gpc_denies})
                    self._conn.execute(
                        "insert into subjects values (?, ?, ?, ?) on conflict(subject) do update set purposes = excluded.purposes, "
                        "gpc = excluded.gpc, updated_at = excluded.updated_at",
                        (subject, json.dumps(purposes), int(sticky_gpc), when),
                    )

    def current(self, user_id: str | None, anonymous_id: str | None) -> tuple[dict[str, str], bool]:
        """({purpose: granted|denied}, gpc) for the visitor: the user id's record, else the anonymous id's."""
        with self._lock:
            for subject in (f"user:{user_id}" if user_id else None, f"anon:{anonymous_id}" if anonymous_id else None):
                if subject:
                    found = self._get(subject)
                    if found:
                        return found[0], found[1]
        return {}, False

    def close(self) -> None:
        with self._lock:
            self._conn.close()
