"""Asset keys read across layers, defined once. A key mirrors its storage (`raw/events` <->
`<lake>/raw/events/...`); the first part is the layer (group), except the dbt `segments/*` marts of the
warehouse."""

import dagster as dg

# Metadata key listing the assets a step reads from their *last* materialization without a dependency edge:
# only where the edge would close a cycle (raw ingestion drops erased subjects with privacy/suppression_list,
# itself derived from raw data). tests/test_lineage.py checks that it is declared.
SIDE_INPUTS_METADATA = "lineage/side_inputs"
# Metadata key of a materialization that is due again at a time (ISO 8601) whatever its inputs: a DP export that kept
# its previous release inside the release period. `personalization materialize` runs it again from then on
# (automation/staleness.py).
STALE_AFTER_METADATA = "personalization/stale_after"

# raw
RAW_EVENTS = dg.AssetKey(["raw", "events"])
RAW_EVENTS_QUARANTINE = dg.AssetKey(["raw", "events_quarantine"])
RAW_MANIFEST = dg.AssetKey(["raw", "landing_manifest"])
RAW_CRM = dg.AssetKey(["raw", "crm_profiles"])
RAW_CATALOG = dg.AssetKey(["raw", "content_catalog"])
RAW_REQUESTS = dg.AssetKey(["raw", "privacy_requests"])

# privacy
IDENTITY_LINKS = dg.AssetKey(["privacy", "identity_links"])
CONSENT_LEDGER = dg.AssetKey(["privacy", "consent_ledger"])
CONSENT_STATE = dg.AssetKey(["privacy", "consent_state"])
SUPPRESSION_LIST = dg.AssetKey(["privacy", "suppression_list"])
ACCESS_AUDIT_LOG = dg.AssetKey(["privacy", "access_audit_log"])
ERASURE_LOG = dg.AssetKey(["privacy", "erasure_log"])
RETENTION_LOG = dg.AssetKey(["privacy", "retention_log"])
KEY_ROTATION_LOG = dg.AssetKey(["privacy", "key_rotation_log"])

# consented
CONSENTED_EVENTS = dg.AssetKey(["consented", "events"])
CONSENTED_EVENTS_STATE = dg.AssetKey(["consented", "events_state"])
CONSENTED_CRM = dg.AssetKey(["consented", "crm_profiles"])
CONSENTED_CATALOG = dg.AssetKey(["consented", "content_catalog"])

# features
FEATURES_LAYER = "features"
USER_RFM = dg.AssetKey([FEATURES_LAYER, "user_rfm"])
CONTENT_AFFINITY = dg.AssetKey([FEATURES_LAYER, "content_affinity"])

# warehouse (dbt marts: group segments)
FEATURES_LOADED = dg.AssetKey(["warehouse", "features_loaded"])
USER_SEGMENTS = dg.AssetKey(["segments", "user_segments"])
SEGMENT_SIZES = dg.AssetKey(["segments", "segment_sizes"])

# exports
SEGMENT_SIZES_DP = dg.AssetKey(["exports", "segment_sizes_dp"])
CONTENT_POPULARITY_DP = dg.AssetKey(["exports", "content_popularity_dp"])
