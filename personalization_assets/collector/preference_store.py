"""The choices the preference center shows: the latest decision per purpose for each user id and anonymous id.

Fed by every consent event the collector writes (the center's own and those sent by SDKs or a CMP
through the collector), after it is durable, using ingestion's rule. Consent recorded elsewhere (a CDP
writing straight to S3, privacy requests) is not seen here; the consent ledger stays the authority.

The store holds personal data, so it follows the platform's rules for it:

* **No raw identifier.** A row is keyed by the identifier's pseudonym under the platform's keys (`user:` or `anon:` +
  `v<version>:<hmac>`, as ingestion pseudonymizes `userId` and `anonymousId`, trimmed the same way); a visitor is
  looked up by computing it. A store written before kept raw ids: they are pseudonymized by `prepare` (the first
  sync), and the file is vacuumed so they do not linger in free pages (`secure_delete` is on for every delete).
* **Erasure reaches it.** `forget` deletes the rows of every identifier on the suppression list (the user, each
  identifier ever linked to them, whatever key version either side was made with: pseudonyms chain across
  versions) and every row a message carrying one of them wrote (`links`: an erased user's other device, whose message
  ingestion dropped, so the platform never linked it); no later message ingestion drops as theirs is recorded. The
  collector calls it whenever the list changes (`SuppressionFeed`).
* **Time, not arrival, orders decisions** (the ledger's rule): a decision takes effect at its `timestamp`, never after
  its `receivedAt`; a purpose keeps the latest one, a denial winning at the same instant; an older decision that
  arrives late changes nothing. A GPC signal is sticky.
* **Never in the way of the tracking API.** Work that grows with the store (re-keying after a rotation, the old
  store's migration, deleting erased subjects, applying pending events) runs in the sync thread in batches, each in
  its own transaction (a kill keeps the progress), releasing the lock between batches; a flush without a consent
  event does not take the lock.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from personalization_assets.collector.preferences import effective
from personalization_assets.core.policies import PrivacyPolicy
from personalization_assets.core.pseudonymize import PSEUDONYM_RE, KeyChain, normalize
from personalization_assets.core.tracking_plan import CONSENT_EVENT, RawEvent

log = logging.getLogger("personalization.collector")

KINDS = {"userId": "user", "anonymousId": "anon"}
# consent events kept (compacted: a few hundred bytes each) until the suppression list was first applied; beyond this
# many the oldest go, logged and counted: the store is a display cache, the consent ledger keeps every decision
MAX_PENDING = 200_000
BATCH = 1_000  # rows or events per transaction of the sync thread's work (the lock is released between batches)
_SUBJECT_RE = re.compile(r"^(user|anon):(v\d+:[0-9a-f]{64})$")


class NewerKeyError(RuntimeError):
    """The suppression list holds pseudonyms of a key version newer than the collector's active one."""


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


def _erasure_fields() -> tuple[tuple[tuple[str, ...], str], ...]:
    """The identifiers ingestion drops a message for when any is erased (raw/dedup.py SUBJECT_COLUMNS), each as its
    JSON paths in a message (the tracking plan's `json`, then `fallback`: traits.email, else context.traits.email) and
    its normalization kind."""
    from personalization_assets.raw.dedup import SUBJECT_COLUMNS

    columns = RawEvent.to_schema().columns
    return tuple((tuple(p for p in (columns[c].metadata["json"], columns[c].metadata.get("fallback")) if p), kind)
                 for c, kind in SUBJECT_COLUMNS.items())


ERASURE_FIELDS = _erasure_fields()


def _field(message: dict, paths: tuple[str, ...]):
    """The value at the first of `paths` (dotted) that holds one, as ingestion's extraction reads it."""
    for path in paths:
        value = message
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Decision:
    """What the store keeps of one consent event: no raw identifier, a few hundred bytes."""

    at: str
    pseudonyms: tuple[str, ...]  # every identifier ingestion would suppress the message for (active key version)
    subjects: tuple[str, ...]  # the rows it decides: "user:<pseudonym>", "anon:<pseudonym>"
    decided: dict
    gpc: bool


def _newer(a: list, b: list) -> bool:
    """Whether decision `a` ([status, at]) replaces `b`: later, or a denial at the same instant."""
    return a[1] > b[1] or (a[1] == b[1] and a[0] == "denied")


class PreferenceStore:
    def __init__(self, path: Path, policy: PrivacyPolicy, chain: KeyChain):
        self.policy = policy
        self.chain = chain
        self._lock = threading.Lock()
        self._suppressed: set[str] = set()  # pseudonyms (active version) of erased subjects, from the last `forget`
        self._cleared: set[str] = set()  # those whose rows this process has deleted (a failed batch is redone)
        # False until the suppression list was applied once: consent events wait (an erased subject's new device would
        # otherwise be recorded before the store knows they are erased) and the center answers 503
        self.ready = False
        self.prepared = False  # `prepare` ran: no raw id, no row of an older key version left
        self._pending: list[Decision] = []
        self.pending_dropped = 0
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("pragma journal_mode=wal")
        # a deleted row's bytes are zeroed, not left in free pages (Debian's build defaults to it; others may not)
        self._conn.execute("pragma secure_delete=on")
        self._conn.execute("create table if not exists choices (subject text primary key, purposes text not null, gpc_at text, "
                           "updated_at text not null)")
        # every identifier pseudonym of a message -> each row that message wrote (for the erasure)
        self._conn.execute("create table if not exists links (pseudonym text not null, subject text not null, "
                           "primary key (pseudonym, subject)) without rowid")
        self._conn.execute("create index if not exists links_by_subject on links (subject)")

    # --- keys ---------------------------------------------------------------------------------------------------

    def _pseudonym(self, value, kind: str = "id") -> str | None:
        n = normalize(value, kind) if isinstance(value, str) else None
        return self.chain.pseudonym(n) if n else None

    def _subject(self, kind: str, value) -> str | None:
        p = self._pseudonym(value)
        return f"{kind}:{p}" if p else None

    def _active(self, pseudonym: str) -> str | None:
        """`pseudonym` forwarded to the active key version (None: not a pseudonym, or of a newer version)."""
        m = PSEUDONYM_RE.match(pseudonym)
        if not m:
            return None
        if m.group(1) == self.chain.active:
            return pseudonym
        try:
            return self.chain.rekey(pseudonym)
        except (ValueError, KeyError):
            return None

    def decision(self, message: dict) -> Decision | None:
        """The store's view of a consent event; None for any other message or one ingestion would not accept."""
        if message.get("type") != "track" or message.get("event") != CONSENT_EVENT:
            return None
        at = decided_at(message)
        if at is None or any(message.get(f) is not None and not isinstance(message.get(f), str)
                             for f in ("userId", "anonymousId", "previousId")):
            return None  # ingestion quarantines it (a time without offset, an id of another JSON type: no coercion)
        context = message.get("context") if isinstance(message.get("context"), dict) else {}
        prefs = (context.get("consent") or {}).get("categoryPreferences") if isinstance(context.get("consent"), dict) else None
        gpc = context.get("gpc") is True
        decided = effective(prefs, gpc, self.policy) if isinstance(prefs, dict) else (effective({}, gpc, self.policy) if gpc else {})
        pseudonyms = tuple(dict.fromkeys(p for paths, kind in ERASURE_FIELDS if (p := self._pseudonym(_field(message, paths), kind))))
        subjects = tuple(s for field, kind in KINDS.items() if (s := self._subject(kind, message.get(field))))
        return Decision(at, pseudonyms, subjects, decided, gpc) if subjects else None

    # --- rows ---------------------------------------------------------------------------------------------------

    def _get(self, subject: str) -> tuple[dict, str | None] | None:
        row = self._conn.execute("select purposes, gpc_at from choices where subject = ?", (subject,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def _put(self, subject: str, purposes: dict, gpc_at: str | None) -> None:
        updated = max([v[1] for v in purposes.values()] + ([gpc_at] if gpc_at else []) + [""])
        self._conn.execute(
            "insert into choices values (?, ?, ?, ?) on conflict(subject) do update set purposes = excluded.purposes, "
            "gpc_at = excluded.gpc_at, updated_at = excluded.updated_at",
            (subject, json.dumps(purposes, sort_keys=True), gpc_at, updated))

    def _merge(self, subject: str, purposes: dict, gpc_at: str | None) -> None:
        """Fold decisions into the subject's row: each purpose keeps its latest, GPC its first signal."""
        old = self._get(subject)
        if old:
            for purpose, kept in old[0].items():
                if purpose not in purposes or _newer(kept, purposes[purpose]):
                    purposes[purpose] = kept
            gpc_at = min(t for t in (gpc_at, old[1]) if t) if (gpc_at or old[1]) else None
        self._put(subject, purposes, gpc_at)

    def _transaction(self, work: Callable[[], None]) -> None:
        self._conn.execute("begin")
        try:
            work()
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise

    def _observe(self, decisions: list[Decision]) -> None:
        def work():
            for d in decisions:
                if self._suppressed.intersection(d.pseudonyms):
                    continue  # ingestion drops the whole message (any identifier erased): the center keeps nothing
                for subject in d.subjects:
                    self._merge(subject, {p: [s, d.at] for p, s in d.decided.items()}, d.at if d.gpc else None)
                    self._conn.executemany("insert or ignore into links values (?, ?)", [(p, subject) for p in d.pseudonyms])

        if decisions:
            self._transaction(work)

    def observe(self, messages: list[dict]) -> None:
        """Apply the consent events among durable messages (kept pending until the suppression list was applied)."""
        decisions = [d for m in messages if (d := self.decision(m))]
        if not decisions:
            return  # most flushes: no consent event, no lock
        with self._lock:
            if not self.ready:
                self._pending.extend(decisions)
                if len(self._pending) > MAX_PENDING:
                    over = len(self._pending) - MAX_PENDING
                    del self._pending[:over]
                    self.pending_dropped += over
                    log.error("preference store: %d consent events dropped from the display store while the suppression "
                              "list cannot be applied (the consent ledger has them)", over)
                return
            self._observe(decisions)

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

    # --- the sync thread's work -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Before the first `forget` (the sync thread): a store of raw ids pseudonymized, every row and link of an older
        key version forwarded to the active one. In batches of their own transactions; the center waits meanwhile."""
        self._migrate_raw_ids()
        active = f"v{self.chain.active}:"
        while True:
            with self._lock:
                stale = [s for (s,) in self._conn.execute(
                    "select subject from choices where substr(subject, instr(subject, ':') + 1, ?) <> ? limit ?",
                    (len(active), active, BATCH))]
                if not stale:
                    break
                self._transaction(lambda: self._rekey_rows(stale))
        while True:
            with self._lock:
                rows = self._conn.execute("select pseudonym, subject from links where substr(pseudonym, 1, ?) <> ? "
                                          "or substr(subject, instr(subject, ':') + 1, ?) <> ? limit ?",
                                          (len(active), active, len(active), active, BATCH)).fetchall()
                if not rows:
                    break
                self._transaction(lambda: self._rekey_links(rows))
        self.prepared = True

    def _forward_subject(self, subject: str) -> str | None:
        m = _SUBJECT_RE.match(subject)
        new = self._active(m.group(2)) if m else None
        return f"{m.group(1)}:{new}" if new else None

    def _rekey_rows(self, stale: list[str]) -> None:
        for subject in stale:
            row = self._get(subject)
            self._conn.execute("delete from choices where subject = ?", (subject,))
            target = self._forward_subject(subject)
            if row and target:  # the visitor may be there under the new key already: one row, each purpose's latest
                self._merge(target, row[0], row[1])

    def _rekey_links(self, rows: list[tuple[str, str]]) -> None:
        for pseudonym, subject in rows:
            self._conn.execute("delete from links where pseudonym = ? and subject = ?", (pseudonym, subject))
            p, s = self._active(pseudonym), self._forward_subject(subject)
            if p and s:
                self._conn.execute("insert or ignore into links values (?, ?)", (p, s))

    def forget(self, identifiers: set[str]) -> int:
        """Apply the suppression list (`identifiers`: its pseudonyms, any key version up to the active one): refuse
        from now on every message carrying one; delete the rows of each identifier new since the last list and every
        row a message carrying one wrote; the first call also applies the consent events kept pending. Returns the
        rows deleted. Raises NewerKeyError, changing nothing, when the list was re-keyed to a version newer than the
        collector's keys (its pseudonyms would match nobody here)."""
        newer = sorted({m.group(1) for i in identifiers if i and (m := PSEUDONYM_RE.match(i))
                        and int(m.group(1)) > int(self.chain.active)}, key=int)
        if newer:
            raise NewerKeyError(
                f"the suppression list holds pseudonyms of key version {newer[-1]}, newer than this collector's active "
                f"version {self.chain.active}. Fix: restart the collector with the platform's key map "
                "(PERSONALIZATION_PSEUDONYM_KEYS and PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION as the platform's); until "
                "then it keeps refusing the subjects of the list it read before.")
        if not self.prepared:
            self.prepare()
        wanted = {a for i in identifiers if i and (a := self._active(i))}
        with self._lock:
            self._suppressed = wanted  # refused at once; their rows go below, batch by batch
            fresh = sorted(wanted - self._cleared)
        deleted = 0
        for start in range(0, len(fresh), BATCH):
            batch = fresh[start:start + BATCH]
            with self._lock:
                deleted += self._delete_for(batch)
                self._cleared.update(batch)
        if deleted:
            with self._lock:
                self._conn.execute("pragma wal_checkpoint(truncate)")  # the deleted rows leave the write-ahead log too
        while not self.ready:
            with self._lock:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                self._observe(batch)
                if not self._pending:
                    self.ready = True
        return deleted

    def _delete_for(self, pseudonyms: list[str]) -> int:
        subjects: set[str] = set()
        for p in pseudonyms:
            subjects.update((f"user:{p}", f"anon:{p}"))
            subjects.update(s for (s,) in self._conn.execute("select subject from links where pseudonym = ?", (p,)))
        present = [s for s in subjects if self._conn.execute("select 1 from choices where subject = ?", (s,)).fetchone()]

        def work():
            self._conn.executemany("delete from choices where subject = ?", [(s,) for s in present])
            self._conn.executemany("delete from links where subject = ?", [(s,) for s in subjects])

        self._transaction(work)
        return len(present)

    # --- the store before pseudonyms --------------------------------------------------------------------------

    def _migrate_raw_ids(self) -> None:
        """A store written before pseudonyms (table `subjects`, keyed `user:<raw id>`): each row pseudonymized and
        merged, the table dropped and the file vacuumed, so no raw id stays on disk."""
        with self._lock:
            if not self._conn.execute("select 1 from sqlite_master where type = 'table' and name = 'subjects'").fetchone():
                return
            rows = self._conn.execute("select subject, purposes, gpc, updated_at from subjects").fetchall()

            def work():
                for subject, purposes, gpc, updated_at in rows:
                    kind, _, raw = subject.partition(":")
                    target = self._subject(kind, raw) if kind in ("user", "anon") else None
                    at = _instant(updated_at) or _instant(datetime.now(timezone.utc).isoformat())
                    if target:
                        self._merge(target, {p: [s, at] for p, s in json.loads(purposes).items()}, at if gpc else None)
                self._conn.execute("drop table subjects")

            self._transaction(work)
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
    the next sync — except a NewerKeyError, which the same list with the same keys would raise again: it is raised
    again without reading (or auditing) the list until the list changes."""

    def __init__(self, lake, record_read: Callable[[], None]):
        self.lake = lake
        self.record_read = record_read
        self._applied: dict | None = None
        self._refused: tuple[dict, NewerKeyError] | None = None
        self.applied_at: float | None = None  # when a list was last applied (or found unchanged): time.time()

    def sync(self, apply: Callable[[set[str]], object]) -> bool:
        """Apply the list if it changed; returns whether it did."""
        import time

        now = dict(self.lake.partition_fingerprints("privacy", "suppression_list"))
        if now == self._applied:
            self.applied_at = time.time()
            return False
        if self._refused and self._refused[0] == now:
            raise self._refused[1]
        ids: set[str] = set()
        if now:
            self.record_read()
            table = self.lake.read_table("privacy", "suppression_list", columns=["identifier"])
            ids = {i for i in table["identifier"].to_pylist() if i}
        try:
            apply(ids)
        except NewerKeyError as exc:
            self._refused = (now, exc)
            raise
        self._applied, self._refused = now, None
        self.applied_at = time.time()
        return True
