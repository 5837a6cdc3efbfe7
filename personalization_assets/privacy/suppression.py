"""The Arrow schema of privacy/suppression_list (one row per identifier a privacy request asks to erase), shared by
the privacy layer that writes it and the layers that read it (consented tier, raw ingestion's side input)."""

import pyarrow as pa

SUPPRESSION_SCHEMA = pa.schema([("request_id", pa.string()), ("identifier", pa.string()), ("identifier_kind", pa.string()),
                                ("requested_at", pa.timestamp("us", tz="UTC"))])


class LateSuppression:
    """The identifiers that reached the suppression list after a step read it (an erasure request processed meanwhile
    by another run). A step that decides rows from the list it read at its start and writes them later calls
    `filter` under the partition's writer lock (`hash_chain.partition_writer_lock`), which the erasure holds while it
    rewrites that partition: either the erasure comes after the write and removes the subject's rows, or it came before
    and the list the write checks already names the subject. Without it, a build that read the list before an erasure
    wrote the erased subject's rows back after the erasure had verified that partition.

    Costs a listing per call (the list's fingerprint); the list is read only when its fingerprint is not the one taken
    before the step's read (a change, or the list's first appearance)."""

    def __init__(self, lake, columns: list[str]):
        self.lake, self.columns = lake, list(columns)
        self._start = self._fingerprint()  # taken BEFORE the step reads the list: a change after it is never missed
        self._seen: dict | None = None
        self._ids: set[str] = set()

    def _fingerprint(self) -> dict:
        return dict(self.lake.partition_fingerprints("privacy", "suppression_list"))

    def identifiers(self) -> set[str]:
        """Every identifier of the list now, if it changed since the step's read; else the empty set."""
        now = self._fingerprint()
        if now == self._start:
            return set()
        if now != self._seen:
            table = self.lake.read_table("privacy", "suppression_list", columns=["identifier"]) if now else None
            self._ids = {i for i in table["identifier"].to_pylist() if i} if table is not None else set()
            self._seen = now
        return self._ids

    def filter(self, table: pa.Table) -> tuple[pa.Table, int]:
        """`table` without the rows of a subject on the list now (any of `columns` holding a listed pseudonym), and how
        many rows that removed. Unchanged when the list did not change since the step's read."""
        import pyarrow.compute as pc

        from personalization_assets.privacy.erasure import lake_rows_matching

        ids = self.identifiers()
        if not ids or not table.num_rows:
            return table, 0
        mask = lake_rows_matching(table, self.columns, ids)
        removed = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
        return (table.filter(pc.invert(mask)) if removed else table), removed
