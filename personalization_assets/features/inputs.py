"""Arrow schemas of the features layer's inputs, from their pandera models (core/schemas.py): the empty input
tables and the test fixtures' types.

The lake views of `consented/events` and `privacy/consent_state` are registered with these schemas
when the tables have no data yet, so a feature build on an empty lake writes empty feature tables.
The fields keep the models' nullability (`nullable="model"`).
"""

from __future__ import annotations

import pyarrow as pa

from personalization_assets.core.schemas import arrow_schema
from personalization_assets.privacy.models import ConsentedEvent, ConsentState


def consented_events_schema() -> pa.Schema:
    return arrow_schema(ConsentedEvent, nullable="model")


def consent_state_schema() -> pa.Schema:
    return arrow_schema(ConsentState, nullable="model")
