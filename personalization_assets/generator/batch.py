"""EventBatch: a column-oriented batch of messages before rendering (one numpy array per attribute)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# message kinds
PAGE, SCREEN, VIEWED, SHARED, ADDED, ORDER, SUBSCRIPTION, CONSENT, IDENTIFY, ALIAS = range(10)
KIND_NAMES = ("page", "screen", "Content Viewed", "Content Shared", "Product Added", "Order Completed",
              "Subscription Started", "Segment Consent Preference Updated", "identify", "alias")
CONTENT_KINDS = (PAGE, SCREEN, VIEWED, SHARED, ADDED, ORDER)
JUNK_DEVICE = 3  # device slot of the buggy SDK's all-zero anonymousId


@dataclass
class EventBatch:
    ra: np.ndarray  # receivedAt, epoch ms (int64)
    sa: np.ndarray  # sentAt
    ts: np.ndarray  # timestamp (event time)
    kind: np.ndarray  # uint8, one of the kinds above
    user: np.ndarray  # int64 person index
    dev: np.ndarray  # uint8 device slot (0..2, or JUNK_DEVICE)
    uid: np.ndarray  # bool: message carries userId
    consent: np.ndarray  # int16: -1 none, else keyset * 128 + category bitmask
    content: np.ndarray  # int32 catalog index, -1 none
    dwell: np.ndarray  # int32 ms
    price: np.ndarray  # int8 item price point / plan index, -1 none
    ref: np.ndarray  # int8 referrer index
    mid_hi: np.ndarray  # uint64 messageId bits
    mid_lo: np.ndarray
    locked: np.ndarray  # bool: never corrupted or duplicated (planted, consent, identity messages)

    def __len__(self) -> int:
        return int(self.ra.shape[0])

    def take(self, idx: np.ndarray) -> EventBatch:
        return EventBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def window(self, lo: int, hi: int) -> EventBatch:
        """Messages with lo <= receivedAt < hi (the batch must be sorted by receivedAt)."""
        a, b = np.searchsorted(self.ra, [lo, hi])
        return self.take(slice(int(a), int(b)))

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        return EventBatch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(EventBatch)})

    @staticmethod
    def from_rows(rows: list[dict]) -> EventBatch:
        """A small batch from dicts (planted cases); missing attributes take neutral defaults."""
        defaults = {"consent": -1, "content": -1, "dwell": 0, "price": -1, "ref": 0, "dev": 0, "uid": False, "locked": True}
        dtypes = {"ra": np.int64, "sa": np.int64, "ts": np.int64, "kind": np.uint8, "user": np.int64, "dev": np.uint8,
                  "uid": bool, "consent": np.int16, "content": np.int32, "dwell": np.int32, "price": np.int8, "ref": np.int8,
                  "mid_hi": np.uint64, "mid_lo": np.uint64, "locked": bool}
        cols = {}
        for name, dtype in dtypes.items():
            cols[name] = np.array([r.get(name, defaults.get(name, 0)) for r in rows], dtype=dtype)
        return EventBatch(**cols)
