"""The Arrow schema of privacy/suppression_list (one row per identifier a privacy request asks to erase), shared by
the privacy layer that writes it and the layers that read it (consented tier, raw ingestion's side input)."""

import pyarrow as pa

SUPPRESSION_SCHEMA = pa.schema([("request_id", pa.string()), ("identifier", pa.string()), ("identifier_kind", pa.string()),
                                ("requested_at", pa.timestamp("us", tz="UTC"))])
