"""The tracking plan: the contract every landed record is validated against, declared as pandera models.

Each model is the single declaration of a raw table: column names, types, nullability, value checks,
descriptions (shown as table schema in the Dagster UI) and, for JSON sources, the path of each column
inside the CDP message (``metadata={"json": "context.page.url"}``). Ingestion derives its extraction SQL
and its type checks from these declarations; there is no hand-written per-column validation code.

Checks that span columns are pandera dataframe checks with ``ignore_na=False``: pandera skips rows that
are entirely null by default, which would let an all-null record pass.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import pandera.pandas as pda
from pandera.typing import Series

MESSAGE_TYPES = ["track", "page", "screen", "identify", "alias", "group"]
# how `timestamp` was obtained (RawEvent.timestamp_source)
TIMESTAMP_SOURCES = ["timestamp", "clock_skew_corrected", "original_timestamp"]
CONSENT_EVENT = "Segment Consent Preference Updated"
PRIVACY_REQUEST_TYPES = ["erasure", "opt_out_sale", "opt_in_sale"]

UtcTimestamp = Annotated[pd.DatetimeTZDtype, "us", "UTC"]

ID_LENGTH = {"min_value": 1, "max_value": 256}

# Shortest identifier a data-subject request may name (after trimming). A request erases, or opts out of
# sale, whoever holds the identifier, so it must name a real one: a 1-character id is never an account id
# (it is a form-filling error or a test value — and under substring matching it used to erase nearly every
# quarantined line). 2-character ids are accepted because legacy CRMs do have short numeric ids ("42")
# and every lookup is exact, so such a request erases only the holder of exactly that id. Emails must in
# addition look like one (`invalid_email`; the shortest, "a@b", has 3 characters). A blank or shorter
# identifier quarantines the request with its own reason for a human to check; it is never executed.
MIN_SUBJECT_IDENTIFIER_CHARS = 2
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"


def _json(path: str, **extra) -> dict:
    return {"json": path, **extra}


# `traits` means the USER's traits in identify (and any other call that sends them), but the GROUP's (company's)
# traits in a group call. RudderStack's SDKs send user traits in `context.traits` on every call. So: user traits
# = top-level `traits` (except on group calls) else `context.traits`; group traits = top-level `traits` of a
# group call only. Group traits never reach the user identity columns (trait_email/phone/name).
NOT_GROUP = "{type} is distinct from 'group'"
IS_GROUP = "{type} = 'group'"


def _user_trait(name: str) -> dict:
    return _json(f"traits.{name}", fallback=f"context.traits.{name}", only_if=NOT_GROUP)


# The CDPs' clock-skew rule when a message has no `timestamp` (Segment and RudderStack compute it server-side;
# a message straight from an SDK or a replay may lack it): receivedAt - (sentAt - originalTimestamp) when sentAt
# and originalTimestamp are both present, else originalTimestamp. None of them: `missing_timestamp`.
EVENT_TIME = "coalesce({timestamp}, {received_at} - ({sent_at} - {original_timestamp}), {original_timestamp})"
EVENT_TIME_SOURCE = (
    "case when {timestamp} is not null then 'timestamp' "
    "when {received_at} is not null and {sent_at} is not null and {original_timestamp} is not null then 'clock_skew_corrected' "
    "when {original_timestamp} is not null then 'original_timestamp' end"
)


class RawEvent(pda.DataFrameModel):
    """A Segment/RudderStack spec message as stored in `raw/events` (one row per accepted message)."""

    message_id: Series[str] = pda.Field(str_length=ID_LENGTH, description="CDP messageId; unique per message.", metadata=_json("messageId"))
    type: Series[str] = pda.Field(isin=MESSAGE_TYPES, description="Message type: track, page, screen, identify, alias or group.", metadata=_json("type"))
    event: Series[str] = pda.Field(nullable=True, str_length={"max_value": 256}, description="Event name (track messages).", metadata=_json("event"))
    anonymous_id: Series[str] = pda.Field(nullable=True, str_length=ID_LENGTH, description="Device/browser id set by the SDK (direct identifier).", metadata=_json("anonymousId"))
    user_id: Series[str] = pda.Field(nullable=True, str_length=ID_LENGTH, description="Logged-in user id (direct identifier).", metadata=_json("userId"))
    previous_id: Series[str] = pda.Field(nullable=True, str_length=ID_LENGTH, description="alias: the id being merged into userId.", metadata=_json("previousId"))
    group_id: Series[str] = pda.Field(nullable=True, str_length=ID_LENGTH, description="group: the group (company, account) the user belongs to (groupId).", metadata=_json("groupId"))
    timestamp: Series[UtcTimestamp] = pda.Field(
        description="Event time (UTC): `timestamp` when the message has one; else the CDPs' clock-skew correction "
        "receivedAt - (sentAt - originalTimestamp) when sentAt and originalTimestamp are present; else originalTimestamp "
        "(timestamp_source says which).", metadata=_json("timestamp", derive=EVENT_TIME))
    timestamp_source: Series[str] = pda.Field(isin=TIMESTAMP_SOURCES, description="How `timestamp` was obtained: timestamp (sent), clock_skew_corrected or original_timestamp.", metadata={"derive": EVENT_TIME_SOURCE})
    original_timestamp: Series[UtcTimestamp] = pda.Field(nullable=True, description="originalTimestamp: the device clock when the call was made (UTC), not corrected for skew.", metadata=_json("originalTimestamp"))
    received_at: Series[UtcTimestamp] = pda.Field(description="Time the CDP received the message (UTC).", metadata=_json("receivedAt"))
    sent_at: Series[UtcTimestamp] = pda.Field(nullable=True, description="Time the SDK sent the batch (UTC).", metadata=_json("sentAt"))
    context_ip: Series[str] = pda.Field(nullable=True, description="Client IP address (quasi-identifier).", metadata=_json("context.ip"))
    context_user_agent: Series[str] = pda.Field(nullable=True, description="Client user agent.", metadata=_json("context.userAgent"))
    context_locale: Series[str] = pda.Field(nullable=True, description="Client locale, e.g. de-DE.", metadata=_json("context.locale"))
    context_country: Series[str] = pda.Field(nullable=True, description="ISO 3166-1 country from context.location.", metadata=_json("context.location.country"))
    context_region: Series[str] = pda.Field(nullable=True, description="ISO 3166-2 subdivision from context.location (e.g. US-CA).", metadata=_json("context.location.region"))
    page_url: Series[str] = pda.Field(nullable=True, description="Page URL (context.page.url).", metadata=_json("context.page.url"))
    page_referrer: Series[str] = pda.Field(nullable=True, description="Referrer URL (context.page.referrer).", metadata=_json("context.page.referrer"))
    consent_preferences: Series[str] = pda.Field(nullable=True, description="context.consent.categoryPreferences as JSON {category: bool}.", metadata=_json("context.consent.categoryPreferences", kind="object"))
    gpc: Series[pd.BooleanDtype] = pda.Field(nullable=True, description="Global Privacy Control signal (our documented context.gpc extension).", metadata=_json("context.gpc"))
    content_id: Series[str] = pda.Field(nullable=True, description="properties.content_id.", metadata=_json("properties.content_id"))
    category: Series[str] = pda.Field(nullable=True, description="properties.category (content category).", metadata=_json("properties.category"))
    price: Series[pd.Float64Dtype] = pda.Field(nullable=True, ge=0, description="properties.price (purchases, subscriptions).", metadata=_json("properties.price"))
    currency: Series[str] = pda.Field(nullable=True, str_length={"min_value": 3, "max_value": 3}, description="properties.currency (ISO 4217).", metadata=_json("properties.currency"))
    dwell_ms: Series[pd.Int64Dtype] = pda.Field(nullable=True, ge=0, description="properties.dwell_ms: time on content in milliseconds.", metadata=_json("properties.dwell_ms"))
    trait_email: Series[str] = pda.Field(nullable=True, description="User's email (direct identifier): traits.email, else context.traits.email (RudderStack); never a group call's traits.", metadata=_user_trait("email"))
    trait_phone: Series[str] = pda.Field(nullable=True, description="User's phone (direct identifier): traits.phone, else context.traits.phone; never a group call's traits.", metadata=_user_trait("phone"))
    trait_name: Series[str] = pda.Field(nullable=True, description="User's name (direct identifier): traits.name, else context.traits.name; never a group call's traits.", metadata=_user_trait("name"))
    properties: Series[str] = pda.Field(nullable=True, description="All properties as JSON (nothing in the message is lost).", metadata=_json("properties", kind="object"))
    traits: Series[str] = pda.Field(
        nullable=True, description="The USER's traits as JSON: top-level `traits` (not on group calls), else `context.traits` "
        "(RudderStack). When both are present they are merged key by key, top-level `traits` winning (RFC 7386 merge: "
        "recursive; a key top-level traits sets to null is removed).",
        metadata=_json("traits", kind="object", fallback="context.traits", only_if=NOT_GROUP))
    group_traits: Series[str] = pda.Field(nullable=True, description="group calls: the GROUP's traits (company name, plan, ...) as JSON. Never used as the user's traits.", metadata=_json("traits", kind="object", only_if=IS_GROUP))
    context_library_name: Series[str] = pda.Field(nullable=True, description="SDK that sent the message (context.library.name, e.g. analytics.js).", metadata=_json("context.library.name"))
    context_library_version: Series[str] = pda.Field(nullable=True, description="SDK version (context.library.version).", metadata=_json("context.library.version"))
    channel: Series[str] = pda.Field(nullable=True, description="Channel of the call (web, mobile, server, sources): RudderStack.", metadata=_json("channel"))
    integrations: Series[str] = pda.Field(nullable=True, description="Destination routing flags as JSON (integrations), set by the SDK / CDP.", metadata=_json("integrations", kind="object"))
    cdp_metadata: Series[str] = pda.Field(nullable=True, description="The CDP's delivery bookkeeping as JSON (_metadata: bundled / unbundled destinations): Segment.", metadata=_json("_metadata", kind="object"))
    version: Series[pd.Float64Dtype] = pda.Field(nullable=True, description="Version of the tracking API that received the message (version, a number): Segment.", metadata=_json("version"))
    project_id: Series[str] = pda.Field(nullable=True, description="Segment source (project) id (projectId).", metadata=_json("projectId"))
    write_key_sha256: Series[str] = pda.Field(
        nullable=True, str_matches=r"^[0-9a-f]{64}$",
        description="SHA-256 of the source's writeKey when the message carries one. The key itself is a credential and "
        "is never stored; the hash tells which key sent the message (e.g. a leaked one still in use).",
        metadata=_json("writeKey", derive="sha256({write_key_sha256})"))
    rudder_id: Series[str] = pda.Field(nullable=True, description="rudderId: RudderStack's id of the device/user pair (direct identifier).", metadata=_json("rudderId"))
    request_ip: Series[str] = pda.Field(nullable=True, description="IP address the CDP received the request from (request_ip, quasi-identifier): RudderStack.", metadata=_json("request_ip"))
    cdp_source_id: Series[str] = pda.Field(nullable=True, description="CDP source id from the landing layout (segment-logs/<id>/, rudder-logs/<id>/; 'hive' for events/date=/hour=)")
    source_file: Series[str] = pda.Field(description="Landing file the message was read from.")
    line_no: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Line number in the landing file.")
    landing_hour: Series[UtcTimestamp] = pda.Field(description="Start of the landing hour (the partition) the message arrived in.")

    @pda.dataframe_check(ignore_na=False, error="neither userId nor anonymousId is set")
    def missing_identity(cls, df: pd.DataFrame) -> Series[bool]:
        return df["user_id"].notna() | df["anonymous_id"].notna()

    @pda.dataframe_check(ignore_na=False, error="track message without an event name")
    def track_without_event(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["type"] != "track") | df["event"].notna()

    @pda.dataframe_check(ignore_na=False, error="alias message without previousId and userId")
    def alias_without_ids(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["type"] != "alias") | (df["previous_id"].notna() & df["user_id"].notna())

    @pda.dataframe_check(ignore_na=False, error="group message without groupId")
    def group_without_group_id(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["type"] != "group") | df["group_id"].notna()

    class Config:
        strict = False


class Quarantine(pda.DataFrameModel):
    """A rejected record: where it came from, why, and its exact original bytes."""

    source: Series[str] = pda.Field(isin=["events", "crm", "catalog", "privacy_requests"], description="Landing source.")
    source_file: Series[str] = pda.Field(description="Landing file the record was read from.")
    line_no: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Line number in the file (0 = the file as a whole).")
    reason: Series[str] = pda.Field(description="Machine-readable reason code, e.g. malformed_json, duplicate_message_id.")
    detail: Series[str] = pda.Field(nullable=True, description="Human-readable explanation.")
    original_text: Series[str] = pda.Field(nullable=True, description="The record as text (invalid UTF-8 bytes escaped).")
    original_bytes: Series[object] = pda.Field(nullable=True, description="The record's exact bytes.")

    class Config:
        strict = False


class RawCrmProfile(pda.DataFrameModel):
    """A CRM export row (`landing/crm/*.csv`). `is_current` marks the latest `updated_at` per user."""

    user_id: Series[str] = pda.Field(str_length=ID_LENGTH, description="CRM user id (direct identifier).")
    email: Series[str] = pda.Field(nullable=True, str_matches=r"^[^@\s]+@[^@\s]+$", description="Email (direct identifier).")
    phone: Series[str] = pda.Field(nullable=True, description="Phone number (direct identifier).")
    first_name: Series[str] = pda.Field(nullable=True, description="First name (direct identifier).")
    last_name: Series[str] = pda.Field(nullable=True, description="Last name (direct identifier).")
    country: Series[str] = pda.Field(nullable=True, str_length={"min_value": 2, "max_value": 5}, description="ISO country or subdivision (e.g. DE, US-CA).")
    birth_date: Series[pda.Date] = pda.Field(nullable=True, description="Birth date (quasi-identifier).")
    signup_at: Series[UtcTimestamp] = pda.Field(nullable=True, description="Signup time (UTC).")
    plan: Series[str] = pda.Field(nullable=True, description="Subscription plan.")
    updated_at: Series[UtcTimestamp] = pda.Field(description="Last update in the CRM; the latest wins per user.")
    is_current: Series[pd.BooleanDtype] = pda.Field(description="True for the latest row per user_id.")
    source_file: Series[str] = pda.Field(description="Landing file.")
    line_no: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Line number in the CSV file (header = line 1).")

    class Config:
        strict = False


class RawContent(pda.DataFrameModel):
    """A content catalog entry (`landing/catalog/*.jsonl`)."""

    content_id: Series[str] = pda.Field(str_length=ID_LENGTH, description="CMS content id.", metadata=_json("content_id"))
    title: Series[str] = pda.Field(nullable=True, description="Title.", metadata=_json("title"))
    category: Series[str] = pda.Field(description="Content category.", metadata=_json("category"))
    tags: Series[str] = pda.Field(nullable=True, description="Tags as a JSON array.", metadata=_json("tags", kind="array"))
    author: Series[str] = pda.Field(nullable=True, description="Author name.", metadata=_json("author"))
    published_at: Series[UtcTimestamp] = pda.Field(nullable=True, description="Publication time (UTC).", metadata=_json("published_at"))
    premium: Series[pd.BooleanDtype] = pda.Field(nullable=True, description="Premium (paywalled) content.", metadata=_json("premium"))
    price: Series[pd.Float64Dtype] = pda.Field(nullable=True, ge=0, description="Price when sold individually.", metadata=_json("price"))
    source_file: Series[str] = pda.Field(description="Landing file.")
    line_no: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Line number.")

    class Config:
        strict = False


def _all_ok(df: pd.DataFrame, ok, columns=("user_id", "email")) -> pd.Series:
    """True where each named column is null or, trimmed, satisfies `ok` (a vectorized predicate)."""
    result = pd.Series(True, index=df.index)
    for c in columns:
        v = df[c].astype("string").str.strip()
        result &= (df[c].isna() | ok(v)).fillna(False).astype(bool)
    return result


class RawPrivacyRequest(pda.DataFrameModel):
    """A data-subject request (`landing/privacy_requests/*.jsonl`)."""

    request_id: Series[str] = pda.Field(str_length=ID_LENGTH, description="Request id from the privacy portal.", metadata=_json("request_id"))
    type: Series[str] = pda.Field(isin=PRIVACY_REQUEST_TYPES, description="erasure, opt_out_sale or opt_in_sale.", metadata=_json("type"))
    user_id: Series[str] = pda.Field(nullable=True, description="Subject's user id (direct identifier).", metadata=_json("user_id"))
    email: Series[str] = pda.Field(nullable=True, description="Subject's email (direct identifier).", metadata=_json("email"))
    received_at: Series[UtcTimestamp] = pda.Field(description="When the request was received (UTC).", metadata=_json("received_at"))
    jurisdiction: Series[str] = pda.Field(nullable=True, description="Jurisdiction the request was made under (EU, US-CA, …).", metadata=_json("jurisdiction"))
    source_file: Series[str] = pda.Field(description="Landing file.")
    line_no: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Line number.")

    @pda.dataframe_check(ignore_na=False, error="request names neither user_id nor email")
    def missing_subject(cls, df: pd.DataFrame) -> Series[bool]:
        return df["user_id"].notna() | df["email"].notna()

    @pda.dataframe_check(ignore_na=False, error="user_id or email is empty or only white space")
    def blank_identifier(cls, df: pd.DataFrame) -> Series[bool]:
        return _all_ok(df, lambda v: v.str.len() > 0)

    @pda.dataframe_check(ignore_na=False, error=f"user_id or email shorter than {MIN_SUBJECT_IDENTIFIER_CHARS} characters")
    def identifier_too_short(cls, df: pd.DataFrame) -> Series[bool]:
        return _all_ok(df, lambda v: (v.str.len() == 0) | (v.str.len() >= MIN_SUBJECT_IDENTIFIER_CHARS))

    @pda.dataframe_check(ignore_na=False, error="email is not an email address")
    def invalid_email(cls, df: pd.DataFrame) -> Series[bool]:
        return _all_ok(df, lambda v: (v.str.len() < MIN_SUBJECT_IDENTIFIER_CHARS) | v.str.match(EMAIL_PATTERN), columns=("email",))

    class Config:
        strict = False
