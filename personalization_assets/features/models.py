"""Pandera models of the feature tables (the contract of the features layer).

Each model documents its table (`dagster/column_schema`) and is validated on a sample of the written
data by the feature asset. Checks here are row-level only: the asset validates a sample, so a check
over a whole group of rows (e.g. "affinities sum to 1 per person") would be wrong on a sample; those
invariants are tested in tests/features/.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pda
from pandera.typing import Series

from personalization_assets.privacy.models import PSEUDONYM, UtcTimestamp
from personalization_assets.core.tracking_plan import MESSAGE_TYPES
IDENTIFIER_KINDS = ["anonymous", "user"]


def _person(description: str = "Person: the smallest user pseudonym of the identity component, else the identifier itself."):
    return pda.Field(str_matches=PSEUDONYM, description=description)


def _as_of():
    return pda.Field(description="Cutoff of the feature build (UTC); no event after it was used.")


class EventsClean(pda.DataFrameModel):
    """One event per messageId that may be processed for personalization at `as_of`."""

    message_id: Series[str] = pda.Field(unique=True, description="CDP messageId (one row per message: earliest received copy).")
    person_id: Series[str] = _person()
    consent_subject: Series[str] = pda.Field(str_matches=PSEUDONYM, description="Subject whose personalization consent is granted at as_of.")
    type: Series[str] = pda.Field(isin=MESSAGE_TYPES, description="Message type.")
    event: Series[str] = pda.Field(nullable=True, description="Event name (track).")
    timestamp: Series[UtcTimestamp] = pda.Field(description="Event time (UTC), <= as_of.")
    received_at: Series[UtcTimestamp] = pda.Field(description="CDP receive time (UTC) of the kept copy, <= as_of.")
    landing_hour: Series[UtcTimestamp] = pda.Field(description="Landing hour of the kept copy.")
    content_id: Series[str] = pda.Field(nullable=True, description="Content id.")
    category: Series[str] = pda.Field(nullable=True, description="Content category.")
    price: Series[pd.Float64Dtype] = pda.Field(nullable=True, ge=0, description="Price.")
    currency: Series[str] = pda.Field(nullable=True, description="Currency (ISO 4217).")
    dwell_ms: Series[pd.Int64Dtype] = pda.Field(nullable=True, ge=0, description="Dwell time in ms.")
    page_url: Series[str] = pda.Field(nullable=True, description="Page URL without query string and fragment.")
    as_of: Series[UtcTimestamp] = _as_of()

    @pda.dataframe_check(ignore_na=False, error="event after as_of")
    def not_after_as_of(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["timestamp"] <= df["as_of"]) & (df["received_at"] <= df["as_of"])

    class Config:
        strict = True


class IdentityMap(pda.DataFrameModel):
    """Every identifier seen in processable events, with the person (identity component) it belongs to."""

    identifier: Series[str] = pda.Field(unique=True, str_matches=PSEUDONYM, description="Anonymous or user pseudonym.")
    identifier_kind: Series[str] = pda.Field(isin=IDENTIFIER_KINDS, description="'user' if ever seen as a user pseudonym, else 'anonymous'.")
    person_id: Series[str] = _person()
    component_size: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Number of identifiers in the component.")
    is_junk: Series[pd.BooleanDtype] = pda.Field(description="Linked to more than max_links identifiers of the other kind: not merged.")
    as_of: Series[UtcTimestamp] = _as_of()

    @pda.dataframe_check(ignore_na=False, error="a junk identifier must be a component of its own")
    def junk_is_alone(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["is_junk"].fillna(False).astype(bool) | ((df["component_size"] == 1) & (df["person_id"] == df["identifier"]))

    class Config:
        strict = True


class Session(pda.DataFrameModel):
    """A session: a person's run of events without a gap of session_gap_minutes, cut at max_session_hours."""

    person_id: Series[str] = _person()
    session_id: Series[str] = pda.Field(unique=True, str_matches=r"^[0-9a-f]{32}$", description="md5(person_id || '|' || start in epoch microseconds).")
    session_start: Series[UtcTimestamp] = pda.Field(description="Time of the first event.")
    session_end: Series[UtcTimestamp] = pda.Field(description="Time of the last event.")
    events: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Number of events.")
    pages: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Number of page and screen events.")
    dwell_ms: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Sum of dwell_ms (null counts as 0).")
    landing_content_id: Series[str] = pda.Field(nullable=True, description="content_id of the first event that has one.")
    converted: Series[pd.BooleanDtype] = pda.Field(description="Has an 'Order Completed' or 'Subscription Started' event.")
    as_of: Series[UtcTimestamp] = _as_of()

    @pda.dataframe_check(ignore_na=False, error="session_start <= session_end <= as_of and pages <= events")
    def ordered(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["session_start"] <= df["session_end"]) & (df["session_end"] <= df["as_of"]) & (df["pages"] <= df["events"])

    class Config:
        strict = True


class UserRfm(pda.DataFrameModel):
    """Recency, frequency and monetary value per person at as_of."""

    person_id: Series[str] = pda.Field(unique=True, str_matches=PSEUDONYM, description="Person.")
    recency_days: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Whole days from the last event to as_of (floor).")
    frequency: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Sessions starting in the window (as_of - rfm_window_days, as_of].")
    monetary: Series[pd.Float64Dtype] = pda.Field(ge=0, description="Sum of price of conversion events in the window (no currency conversion).")
    orders: Series[pd.Int64Dtype] = pda.Field(ge=0, description="Conversion events ('Order Completed', 'Subscription Started') in the window.")
    first_seen_at: Series[UtcTimestamp] = pda.Field(description="First event time (all history up to as_of).")
    last_seen_at: Series[UtcTimestamp] = pda.Field(description="Last event time.")
    is_known_user: Series[pd.BooleanDtype] = pda.Field(description="The person's component holds a user pseudonym.")
    as_of: Series[UtcTimestamp] = _as_of()

    @pda.dataframe_check(ignore_na=False, error="first_seen_at <= last_seen_at <= as_of")
    def ordered(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["first_seen_at"] <= df["last_seen_at"]) & (df["last_seen_at"] <= df["as_of"])

    class Config:
        strict = True


class ContentAffinity(pda.DataFrameModel):
    """Time-decayed share of a person's engagement per content category."""

    person_id: Series[str] = _person("Person.")
    category: Series[str] = pda.Field(description="Content category.")
    affinity: Series[pd.Float64Dtype] = pda.Field(ge=0, le=1, description="decayed_weight / sum of the person's decayed weights (sums to 1 per person).")
    decayed_weight: Series[pd.Float64Dtype] = pda.Field(ge=0, description="Sum over engagement events of 2^(-age_days / half_life_days).")
    events: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Engagement events in the category.")
    is_top: Series[pd.BooleanDtype] = pda.Field(description="Highest affinity of the person (ties: smallest category name).")
    top_category: Series[str] = pda.Field(description="The person's top category (same on every row of the person).")
    as_of: Series[UtcTimestamp] = _as_of()

    @pda.dataframe_check(ignore_na=False, error="is_top must agree with top_category")
    def top_consistent(cls, df: pd.DataFrame) -> Series[bool]:
        return df["is_top"].fillna(False).astype(bool) == (df["category"] == df["top_category"])

    class Config:
        strict = True
        unique = ["person_id", "category"]


class Engagement(pda.DataFrameModel):
    """Activity pattern per person."""

    person_id: Series[str] = pda.Field(unique=True, str_matches=PSEUDONYM, description="Person.")
    active_days: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Distinct UTC dates with an event.")
    sessions: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Sessions (all history up to as_of).")
    sessions_per_week: Series[pd.Float64Dtype] = pda.Field(ge=0, description="sessions / max(1, weeks from first_seen_at to as_of).")
    avg_session_dwell_ms: Series[pd.Float64Dtype] = pda.Field(ge=0, description="Mean of the sessions' dwell_ms.")
    preferred_hour: Series[pd.Int64Dtype] = pda.Field(ge=0, le=23, description="Most frequent UTC hour of events (ties: smallest).")
    preferred_dow: Series[pd.Int64Dtype] = pda.Field(ge=0, le=6, description="Most frequent UTC weekday, 0 = Monday (ties: smallest).")
    as_of: Series[UtcTimestamp] = _as_of()

    class Config:
        strict = True


class PurposeEligibility(pda.DataFrameModel):
    """Whether a person may be processed for a purpose at as_of (all of their consent subjects granted)."""

    person_id: Series[str] = _person("Person.")
    purpose: Series[str] = pda.Field(description="Purpose (every purpose present in privacy/consent_state).")
    eligible: Series[pd.BooleanDtype] = pda.Field(description="Every consent subject of the person has status granted at as_of (fail closed).")
    consent_subjects: Series[pd.Int64Dtype] = pda.Field(ge=1, description="Number of consent subjects of the person.")
    as_of: Series[UtcTimestamp] = _as_of()

    class Config:
        strict = True
        unique = ["person_id", "purpose"]


FEATURE_MODELS: dict[str, type[pda.DataFrameModel]] = {
    "events_clean": EventsClean,
    "identity_map": IdentityMap,
    "sessions": Session,
    "user_rfm": UserRfm,
    "content_affinity": ContentAffinity,
    "engagement": Engagement,
    "purpose_eligibility": PurposeEligibility,
}
