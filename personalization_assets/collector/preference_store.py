"""The choices the preference center shows: the latest decision per purpose for each user id and anonymous id.

Fed by every consent event the collector writes (the center's own and those sent by SDKs or a CMP
through the collector), after it is durable, using ingestion's rule. Consent recorded elsewhere (a CDP
writing straight to S3, privacy requests) is not seen here; the consent ledger stays the authority.

The store holds personal data, so it follows the platform's rules for it:

* **No raw identifier.** A row is keyed by the identifier's pseudonym under the platform's keys (`user:` or `anon:` +
  `v<version>:<hmac>`, as ingestion pseudonymizes `userId` and `anonymousId`, trimmed the same way); a visitor is
  looked up by computing it. A store written before kept raw ids: they are pseudonymized when it is opened, and the
  file is vacuumed so they do not linger in free pages (`secure_delete` is on for every later delete).
* **Erasure reaches it.** `forget` deletes the rows of every identifier on the suppression list (the user, each
  identifier ever linked to them, whatever key version either side was made with: pseudonyms chain across
  versions), and no later consent event of theirs is recorded: ingestion drops their events likewise. The collector
  calls it whenever the list changes (`SuppressionFeed`).
* **Time, not arrival, orders decisions** (the ledger's rule): a decision takes effect at its `timestamp`, never after
  its `receivedAt`; a purpose keeps the latest one, a denial winning at the same instant; an older decision that
  arrives late changes nothing. A GPC signal is sticky.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from personalization_assets.collector.preferences import effective
from personalization_assets.core.policies import PrivacyPolicy
from personalization_assets.core.pseudonymize import PSEUDONYM_RE, KeyChain, normalize
from personalization_assets.core.tracking_plan import CONSENT_EVENT

log = logging.getLogger("personalization.collector")

KINDS = {"userId": "user", "anonymousId": "anon"}
# pending consent events kept until the suppression list was first read (then applied); beyond this many the oldest
# go, logged and counted: the store is a display cache, the consent ledger keeps every decision
MAX_PENDING = 100_000


class NewerKeyError(RuntimeError):
    """The suppression list holds pseudonyms of a key version newer than the collector's active one."""
_SUBJECT_RE = re.compile(r"^(user|anon):(v\d+:[0-9a-f]{64})$")


def _instant(value) -> str | None:
    """A message time as a sortable UTC string (microseconds), or None when it is not an ISO-8601 instant with an
    explicit offset (ingestion quarantines a timestamp without one: `timestamp_without_offset`)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decided_at(message: dict) -> str | None:
    """When a consent event's decision takes effect: its timestamp, but never later than its receivedAt (the
    ledger's consent clock: a client clock running ahead cannot push a decision past one made after it). None when
    either is present but not an instant ingestion accepts: the message is quarantined there, so not shown here."""
    received, stamped = _instant(message.get("receivedAt")), _instant(message.get("timestamp"))
    if (message.get("timestamp") is not None and stamped is None) or (message.get("receivedAt") is not None and received is None):
        return None
    return min(t for t in (received, stamped) if t) if received or stamped else None


def _traits_email(message: dict):
    """`traits.email`, else `context.traits.email` (ingestion's `trait_email` and its fallback)."""
    for holder in (message, message.get("context") if isinstance(message.get("context"), dict) else {}):
        traits = holder.get("traits") if isinstance(holder, dict) else None
        if isinstance(traits, dict) and traits.get("email") is not None:
            return traits["email"]
    return None


class PreferenceStore:
    def __init__(self, path: Path, policy: PrivacyPolicy, chain: KeyChain):
        self.policy = policy
        self.chain = chain
        self._lock = threading.Lock()
        self._suppressed: set[str] = set()  # pseudonyms (active version) of erased subjects, from the last `forget`
        # False until the suppression list was read once: consent events wait (an erased subject's new device would
        # otherwise be recorded before the store knows they are erased)
        self.ready = False
        self._pending: list[dict] = []
        self.pending_dropped = 0
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("pragma journal_mode=wal")
        self._conn.execute("pragma secure_delete=on")  # a deleted row's bytes are zeroed, not left in free pages (Debian's build
        # defaults to it; others may not)
        self._conn.execute(
            "create table if not exists choices (subject text primary key, purposes text not null, gpc_at text, "
            "updated_at text not null)"
        )
        self._migrate_raw_ids()
        with self._lock:
            self._rekey_all()  # the keys are read once per process: rows of an older version are forwarded now

    # --- keys ---------------------------------------------------------------------------------------------------

    def _pseudonym(self, value) -> str | None:
        n = normalize(value, "id") if isinstance(value, str) else None
        return self.chain.pseudonym(n) if n else None

    def _subject(self, kind: str, value) -> str | None:
        p = self._pseudonym(value)
        return f"{kind}:{p}" if p else None

    def _subjects(self, message: dict) -> list[str]:
        return [s for field, kind in KINDS.items() if (s := self._subject(kind, message.get(field)))]

    def _erased(self, message: dict) -> bool:
        """Whether ingestion drops the message as an erased subject's: any of its identifiers on the suppression list
        (raw/dedup.py SUBJECT_COLUMNS: userId, anonymousId, previousId, traits.email)."""
        if not self._suppressed:
            return False
        values = [(message.get(f), "id") for f in ("userId", "anonymousId", "previousId")] + [(_traits_email(message), "email")]
        for value, kind in values:
            n = normalize(value, kind) if isinstance(value, str) else None
            if n and self.chain.pseudonym(n) in self._suppressed:
                return True
        return False

    def _active(self, pseudonym: str) -> str | None:
        """`pseudonym` forwarded to the active key version (None: made with a version newer than the active one)."""
        m = PSEUDONYM_RE.match(pseudonym)
        if not m:
            return None
        if m.group(1) == self.chain.active:
            return pseudonym
        try:
            return self.chain.rekey(pseudonym)
        except (ValueError, KeyError):
            return None

    # --- rows ---------------------------------------------------------------------------------------------------

    def _get(self, subject: str) -> tuple[dict, str | None] | None:
        row = self._conn.execute("select purposes, gpc_at from choices where subject = ?", (subject,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def _apply(self, subject: str, decided: dict[str, str], gpc: bool, at: str) -> None:
        old = self._get(subject)
        purposes, gpc_at = old if old else ({}, None)
        for purpose, status in decided.items():
            kept = purposes.get(purpose)
            if kept is None or at > kept[1] or (at == kept[1] and status == "denied"):
                purposes[purpose] = [status, at]
        if gpc:
            gpc_at = min(gpc_at, at) if gpc_at else at
        self._conn.execute(
            "insert into choices values (?, ?, ?, ?) on conflict(subject) do update set purposes = excluded.purposes, "
            "gpc_at = excluded.gpc_at, updated_at = excluded.updated_at",
            (subject, json.dumps(purposes, sort_keys=True), gpc_at, max([at] + [v[1] for v in purposes.values()])),
        )

    def observe(self, messages: list[dict]) -> None:
        """Apply the consent events among durable messages (kept pending until the suppression list was read once)."""
        consent = [m for m in messages if m.get("type") == "track" and m.get("event") == CONSENT_EVENT]
        with self._lock:
            if not self.ready:
                self._pending.extend(consent)
                if len(self._pending) > MAX_PENDING:
                    over = len(self._pending) - MAX_PENDING
                    del self._pending[:over]
                    self.pending_dropped += over
                    log.error("preference store: %d consent events dropped from the display store while the suppression "
                              "list cannot be read (the consent ledger has them)", over)
                return
            self._observe(consent)

    def _observe(self, consent: list[dict]) -> None:
        if not consent:
            return
        self._conn.execute("begin")
        try:
            for m in consent:
                at = decided_at(m)
                if at is None:
                    continue
                context = m.get("context") if isinstance(m.get("context"), dict) else {}
                prefs = (context.get("consent") or {}).get("categoryPreferences") if isinstance(context.get("consent"), dict) else None
                gpc = context.get("gpc") is True
                decided = effective(prefs, gpc, self.policy) if isinstance(prefs, dict) else (
                    effective({}, gpc, self.policy) if gpc else {})
                if self._erased(m):
                    continue  # ingestion drops the whole message (any identifier erased): the center keeps nothing
                for subject in self._subjects(m):
                    self._apply(subject, decided, gpc, at)
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise

    def current(self, user_id: str | None, anonymous_id: str | None) -> tuple[dict[str, str], bool]:
        """({purpose: granted|denied}, gpc) for the visitor: the user id's record, else the anonymous id's."""
        with self._lock:
            for subject in (self._subject("user", user_id), self._subject("anon", anonymous_id)):
                found = self._get(subject) if subject else None
                if found:
                    purposes, gpc_at = found
                    view = {p: v[0] for p, v in purposes.items()}
                    if gpc_at:  # a GPC denial is sticky, as in the consent ledger
                        view.update({p.name: "denied" for p in self.policy.purposes.values() if p.gpc_denies})
                    return view, gpc_at is not None
        return {}, False

    def _rekey_all(self) -> None:
        """Forward every row made with an older key version to the active one (the chain needs no raw id)."""
        stale = [s for (s,) in self._conn.execute("select subject from choices")
                 if (m := _SUBJECT_RE.match(s)) and not m.group(2).startswith(f"v{self.chain.active}:")]
        if not stale:
            return
        self._conn.execute("begin")
        try:
            for subject in stale:
                kind, pseudonym = subject.split(":", 1)
                new = self._active(pseudonym)
                row = self._conn.execute("select purposes, gpc_at, updated_at from choices where subject = ?", (subject,)).fetchone()
                self._conn.execute("delete from choices where subject = ?", (subject,))
                if new is None or row is None:
                    continue
                target = f"{kind}:{new}"
                purposes, gpc_at = json.loads(row[0]), row[1]
                merged = self._get(target)
                if merged:  # the visitor came back under the new key meanwhile: one row, each purpose's latest
                    for purpose, (status, at) in merged[0].items():
                        kept = purposes.get(purpose)
                        if kept is None or at > kept[1] or (at == kept[1] and status == "denied"):
                            purposes[purpose] = [status, at]
                    gpc_at = min(t for t in (gpc_at, merged[1]) if t) if (gpc_at or merged[1]) else None
                self._conn.execute(
                    "insert or replace into choices values (?, ?, ?, ?)",
                    (target, json.dumps(purposes, sort_keys=True), gpc_at, row[2]))
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise

    # --- erasure ------------------------------------------------------------------------------------------------

    def forget(self, identifiers: set[str]) -> int:
        """Delete the rows of every identifier on the suppression list (`identifiers`: its pseudonyms, any key version
        up to the active one) and refuse their later consent events; the first call also applies the consent events
        kept pending until then. Returns the rows deleted. Raises NewerKeyError, changing nothing, when the list was
        re-keyed to a version newer than the collector's keys (its pseudonyms would match nobody here)."""
        newer = sorted({m.group(1) for i in identifiers if i and (m := PSEUDONYM_RE.match(i))
                        and int(m.group(1)) > int(self.chain.active)}, key=int)
        if newer:
            raise NewerKeyError(
                f"the suppression list holds pseudonyms of key version {newer[-1]}, newer than this collector's active "
                f"version {self.chain.active}. Fix: restart the collector with the platform's key map "
                "(PERSONALIZATION_PSEUDONYM_KEYS and PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION as the platform's); until "
                "then it keeps refusing the subjects of the list it read before.")
        wanted = {a for i in identifiers if i and (a := self._active(i))}
        with self._lock:
            self._suppressed = wanted
            deleted = self._delete_subjects(wanted)
            if not self.ready:
                self.ready = True
                pending, self._pending = self._pending, []
                self._observe(pending)
            return deleted

    def _delete_subjects(self, wanted: set[str]) -> int:
        if not wanted:
            return 0
        doomed = [s for (s,) in self._conn.execute("select subject from choices") if s.split(":", 1)[1] in wanted]
        if doomed:
            self._conn.execute("begin")
            try:
                self._conn.executemany("delete from choices where subject = ?", [(s,) for s in doomed])
                self._conn.execute("commit")
            except BaseException:
                self._conn.execute("rollback")
                raise
            self._conn.execute("pragma wal_checkpoint(truncate)")  # the deleted rows leave the write-ahead log too
        return len(doomed)

    # --- the store before pseudonyms --------------------------------------------------------------------------

    def _migrate_raw_ids(self) -> None:
        """A store written before pseudonyms (table `subjects`, keyed `user:<raw id>`): each row pseudonymized and
        merged, the table dropped and the file vacuumed, so no raw id stays on disk."""
        if not self._conn.execute("select 1 from sqlite_master where type = 'table' and name = 'subjects'").fetchone():
            return
        rows = self._conn.execute("select subject, purposes, gpc, updated_at from subjects").fetchall()
        self._conn.execute("begin")
        try:
            for subject, purposes, gpc, updated_at in rows:
                kind, _, raw = subject.partition(":")
                target = self._subject(kind, raw) if kind in ("user", "anon") else None
                at = _instant(updated_at) or _instant(datetime.now(timezone.utc).isoformat())
                if target:
                    self._apply(target, {p: s for p, s in json.loads(purposes).items()}, bool(gpc), at)
            self._conn.execute("drop table subjects")
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise
        self._conn.execute("pragma wal_checkpoint(truncate)")
        self._conn.execute("vacuum")
        log.info("preference store: %d rows keyed by raw identifiers pseudonymized", len(rows))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SuppressionFeed:
    """The suppression list as the collector sees it: `sync` reads it when its fingerprint changed since the last
    list it applied (a listing, no data read otherwise), records the read in the access audit log first, and hands
    its identifiers to `apply`; the list counts as applied only once `apply` returned, so a failure is retried at
    the next sync."""

    def __init__(self, lake, record_read: Callable[[], None]):
        self.lake = lake
        self.record_read = record_read
        self._applied: dict | None = None
        self.applied_at: float | None = None  # when a list was last applied (or found unchanged): time.time()

    def sync(self, apply: Callable[[set[str]], object]) -> bool:
        """Apply the list if it changed; returns whether it did."""
        import time

        now = dict(self.lake.partition_fingerprints("privacy", "suppression_list"))
        if now == self._applied:
            self.applied_at = time.time()
            return False
        ids: set[str] = set()
        if now:
            self.record_read()
            table = self.lake.read_table("privacy", "suppression_list", columns=["identifier"])
            ids = {i for i in table["identifier"].to_pylist() if i}
        apply(ids)
        self._applied = now
        self.applied_at = time.time()
        return True
