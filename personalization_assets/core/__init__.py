"""The core: low-level pieces every layer may import, and that import no layer.

Lake and landing access (`storage`), the privacy policy loader (`policies`), pseudonym keys and the
pseudonymizer, the hash-chained append-only log, the access audit, the suppression matcher of quarantine
rows, hour partitions, the tracking plan (raw schemas), Secrets Manager loading, asset keys shared
across layers (`asset_keys`) and the platform config resource. Nothing in here imports a layer
(raw, privacy, features, warehouse, exports, …): the import contract in pyproject.toml
(`lint-imports`) enforces it.
"""
