"""Pandera models of the privacy and consented tables (the contract later layers build on)."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import pandera.pandas as pda
from pandera.typing import Series

from personalization_assets.core.tracking_plan import MESSAGE_TYPES, TIMESTAMP_SOURCES

UtcTimestamp = Annotated[pd.DatetimeTZDtype, "us", "UTC"]
PSEUDONYM = r"^v\d+:[0-9a-f]{64}$"
DECISIONS = ["granted", "denied", "withdrawn"]
LEDGER_SOURCES = ["cmp_event", "gpc_signal", "privacy_request"]
# which input decided the jurisdiction (privacy_policies/jurisdictions.yaml): a subject's comes from its events'
# location, else its CRM country, else `unknown`; a privacy request's from the request itself
SUBJECT_JURISDICTION_SOURCES = ["event_location", "crm_country", "unknown"]
DECISION_JURISDICTION_SOURCES = [*SUBJECT_JURISDICTION_SOURCES, "request"]


def _pseudonym(description: str, nullable: bool = True):
    return pda.Field(nullable=nullable, str_matches=PSEUDONYM, description=description)


class ConsentedEvent(pda.DataFrameModel):
    """An event kept because its subject's consent for at least one purpose was in force at its time."""

    message_id: Series[str] = pda.Field(description="CDP messageId (random id, not personal).")
    type: Series[str] = pda.Field(isin=MESSAGE_TYPES, description="Message type (group: the user joined a group/account; not a content engagement).")
    event: Series[str] = pda.Field(nullable=True, description="Event name (track).")
    anonymous_pseudonym: Series[str] = _pseudonym("Keyed pseudonym of anonymousId.")
    user_pseudonym: Series[str] = _pseudonym("Keyed pseudonym of userId.")
    previous_pseudonym: Series[str] = _pseudonym("Keyed pseudonym of previousId (alias).")
    group_pseudonym: Series[str] = _pseudonym("Keyed pseudonym of groupId (group calls): the account, never a consent subject.")
    consent_subject: Series[str] = _pseudonym("Subject whose consent governs the event: the user pseudonym, or the anonymous pseudonym when it is not linked to exactly one user.", nullable=False)
    timestamp: Series[UtcTimestamp] = pda.Field(description="Event time (UTC).")
    timestamp_source: Series[str] = pda.Field(isin=TIMESTAMP_SOURCES, description="How the event time was obtained: timestamp, clock_skew_corrected or original_timestamp.")
    received_at: Series[UtcTimestamp] = pda.Field(description="CDP receive time (UTC).")
    landing_hour: Series[UtcTimestamp] = pda.Field(description="Landing hour (partition) of the event.")
    cdp_source_id: Series[str] = pda.Field(nullable=True, description="CDP source id from the landing layout.")
    ip_prefix: Series[str] = pda.Field(nullable=True, description="Client IP truncated to /24 (IPv4) or /48 (IPv6).")
    request_ip_prefix: Series[str] = pda.Field(nullable=True, description="IP the CDP received the request from (RudderStack request_ip), truncated like ip_prefix.")
    context_library_name: Series[str] = pda.Field(nullable=True, description="SDK that sent the event (platform).")
    channel: Series[str] = pda.Field(nullable=True, description="Channel of the call: web, mobile, server (RudderStack).")
    context_locale: Series[str] = pda.Field(nullable=True, description="Client locale.")
    context_country: Series[str] = pda.Field(nullable=True, description="Country (ISO 3166-1).")
    context_region: Series[str] = pda.Field(nullable=True, description="Subdivision (ISO 3166-2).")
    jurisdiction: Series[str] = pda.Field(description="Jurisdiction whose policy applied (EU, US-CA, default, unknown).")
    page_url: Series[str] = pda.Field(nullable=True, description="Page URL without query string and fragment.")
    page_referrer: Series[str] = pda.Field(nullable=True, description="Referrer URL without query string and fragment.")
    content_id: Series[str] = pda.Field(nullable=True, description="Content id.")
    category: Series[str] = pda.Field(nullable=True, description="Content category.")
    price: Series[pd.Float64Dtype] = pda.Field(nullable=True, ge=0, description="Price.")
    currency: Series[str] = pda.Field(nullable=True, description="Currency.")
    dwell_ms: Series[pd.Int64Dtype] = pda.Field(nullable=True, ge=0, description="Dwell time in ms.")
    email_pseudonym: Series[str] = _pseudonym("Keyed pseudonym of traits.email (normalized).")
    phone_pseudonym: Series[str] = _pseudonym("Keyed pseudonym of traits.phone (E.164).")
    purposes: Series[object] = pda.Field(description="Purposes whose consent was in force at the event time (non-empty list).")

    @pda.dataframe_check(ignore_na=False, error="an event must be kept for at least one purpose")
    def has_purpose(cls, df: pd.DataFrame) -> Series[bool]:
        return df["purposes"].map(lambda p: p is not None and len(p) > 0)

    class Config:
        strict = True


class ConsentLedgerRow(pda.DataFrameModel):
    """One consent decision, append-only and hash-chained."""

    seq: Series[pd.Int64Dtype] = pda.Field(ge=1, unique=True, description="Position in the ledger (1, 2, 3, … without gaps).")
    decision_id: Series[str] = pda.Field(unique=True, description="Idempotency key: hash of source, source record and purpose.")
    identifier_pseudonym: Series[str] = _pseudonym("Identifier the decision was made under (user, anonymous or email pseudonym).", nullable=False)
    identifier_kind: Series[str] = pda.Field(isin=["user", "anonymous", "email"], description="Kind of identifier.")
    purpose: Series[str] = pda.Field(description="Purpose (privacy_policies/purposes.yaml).")
    decision: Series[str] = pda.Field(isin=DECISIONS, description="granted, denied, or withdrawn (denied after a grant).")
    effective_at: Series[UtcTimestamp] = pda.Field(description="When the decision takes effect (event time / request time).")
    recorded_at: Series[UtcTimestamp] = pda.Field(description="When the platform appended it.")
    source: Series[str] = pda.Field(isin=LEDGER_SOURCES, description="cmp_event, gpc_signal or privacy_request.")
    source_ref: Series[str] = pda.Field(description="messageId or request_id of the source record.")
    policy_version: Series[str] = pda.Field(description="Version of privacy_policies/ in force.")
    jurisdiction: Series[str] = pda.Field(description="Jurisdiction of the decision (unknown when nothing tells).")
    jurisdiction_source: Series[str] = pda.Field(
        isin=DECISION_JURISDICTION_SOURCES, nullable=True,
        description="What decided the jurisdiction: event_location (the consent event's location), crm_country (the user's "
        "current CRM country), request (the privacy request's jurisdiction field) or unknown. Null only on rows appended "
        "before the column existed (policy versions before 2026-12-05; the ledger is immutable).")
    prev_hash: Series[str] = pda.Field(str_matches=r"^[0-9a-f]{64}$", description="row_hash of the previous row (zeros for the first).")
    row_hash: Series[str] = pda.Field(str_matches=r"^[0-9a-f]{64}$", description="SHA-256 over prev_hash and this row's fields.")

    class Config:
        strict = True


class ConsentState(pda.DataFrameModel):
    """Effective consent per subject and purpose as validity intervals [valid_from, valid_to)."""

    consent_subject: Series[str] = _pseudonym("Subject pseudonym.", nullable=False)
    purpose: Series[str] = pda.Field(description="Purpose.")
    status: Series[str] = pda.Field(isin=["granted", "denied"], description="Effective status in the interval.")
    valid_from: Series[UtcTimestamp] = pda.Field(description="Start (inclusive); 1970-01-01 for the policy default before any decision.")
    valid_to: Series[UtcTimestamp] = pda.Field(nullable=True, description="End (exclusive); null = still in force.")
    basis: Series[str] = pda.Field(isin=["decision", "policy_default"], description="Explicit decision or the jurisdiction's no-record default.")
    jurisdiction: Series[str] = pda.Field(description="Jurisdiction whose policy applied (the subject's).")
    jurisdiction_source: Series[str] = pda.Field(
        isin=SUBJECT_JURISDICTION_SOURCES,
        description="What decided the subject's jurisdiction: event_location (most recent located event), crm_country "
        "(current CRM row) or unknown (neither; also a subject known only from the ledger).")
    source: Series[str] = pda.Field(nullable=True, description="Source of the decision (cmp_event, gpc_signal, privacy_request).")

    class Config:
        strict = True


class IdentityLink(pda.DataFrameModel):
    """privacy/identity_links: one row per identifier (pseudonym), resolved to its consent subject (privacy/identity.py).
    The Arrow schema of what identity.py computes (`identity.IDENTITY_SCHEMA`) is generated from this model; the
    stored table also carries `linked_user_pseudonyms` (list of strings, added by the identity_links asset), hence
    not strict."""

    identifier: Series[str] = _pseudonym("Identifier pseudonym (user, anonymous or email).", nullable=False)
    identifier_kind: Series[str] = pda.Field(isin=["user", "anonymous", "email"], description="Kind of identifier.")
    consent_subject: Series[str] = _pseudonym("Subject whose consent governs the identifier: the user it is linked to when it is linked to exactly one, else itself.", nullable=False)
    linked_users: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Distinct users an anonymous id or email was seen with (0 for a user id).")
    jurisdiction: Series[str] = pda.Field(description="The subject's jurisdiction (EU, US-CA, default, unknown, ...).")
    jurisdiction_source: Series[str] = pda.Field(isin=SUBJECT_JURISDICTION_SOURCES, description="What decided it: event_location, crm_country or unknown.")
    last_seen_at: Series[UtcTimestamp] = pda.Field(nullable=True, description="Time of the subject's most recent event (null for a subject known only from the CRM).")

    class Config:
        strict = False
