"""Deterministic demo data generator: a CDP landing zone (events, CRM, catalog, privacy requests).

`generate_landing_zone(fs, root, users=..., events=..., seed=...)` streams the documented landing-zone
layout (hive by default; `layout="segment-s3"` or `"rudderstack-s3"` writes a CDP's S3 destination layout, see
generator/layouts.py) into any pyarrow filesystem (local directory or S3 prefix) and writes a manifest of the planted
privacy cases to `<root>/_generator/manifest.json`. Same arguments (including `end`) => identical bytes.
"""

from personalization_assets.generator.generate import (
    MANIFEST,
    GenerationSummary,
    generate_landing_zone,
)

__all__ = ["MANIFEST", "GenerationSummary", "generate_landing_zone"]
