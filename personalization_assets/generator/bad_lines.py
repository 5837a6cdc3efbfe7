"""Bad event lines: how many of each kind, where they go, and how a good line is corrupted into one.

Kind names follow the ingestion's quarantine reason codes where they coincide; ``unknown_type`` is
quarantined as ``invalid_type`` and ``unparseable_timestamp`` as ``wrong_type`` (a timestamp that is not
ISO-8601 is a type violation of the tracking plan).
"""

from __future__ import annotations

import re

import numpy as np

from personalization_assets.generator.encode import iso_ms
from personalization_assets.generator.events import HEAD_END, HEAD_TS

DUPLICATE = "duplicate_message_id"
# kind -> share of the bad lines (oversized lines are 33 KB each, so they stay rare)
KIND_WEIGHTS = {
    "malformed_json": 0.09,
    "invalid_utf8": 0.06,
    "not_an_object": 0.06,
    "missing_message_id": 0.07,
    "missing_identity": 0.07,
    "wrong_type": 0.09,
    "unknown_type": 0.06,
    "unparseable_timestamp": 0.07,
    "timestamp_in_future": 0.06,
    "timestamp_before_horizon": 0.06,
    "line_too_large": 0.002,
    "empty_line": 0.06,
    DUPLICATE: 0.2,
}
KINDS = tuple(KIND_WEIGHTS)
CORRUPTIONS = KINDS[:-1]  # every kind but the duplicate is a corrupted copy of a generated message
DAY_MS = 86_400_000
BAD_TIMESTAMPS = (b'"not-a-timestamp"', b'"2024-13-45T25:61:00Z"', b'"yesterday"', b'"31/12/2024 10:00"')
BLOB = b"lorem ipsum dolor sit amet consectetur adipiscing elit " * 620  # ~34 KB: over the 32 KB line limit
_IDENTITY = re.compile(rb'"anonymousId":"[^"]*","userId":(?:null|"[^"]*"),')
_TYPE = re.compile(rb'"type":"[a-z]+"')
_PRICE = re.compile(rb'"price":([0-9.]+)')


def plan(total: int) -> np.ndarray:
    """Counts per kind summing to `total` (largest remainder); every kind present once total allows."""
    w = np.array(list(KIND_WEIGHTS.values()))
    if total <= 0:
        return np.zeros(len(w), np.int64)
    base = np.ones(len(w), np.int64) if total >= len(w) else np.zeros(len(w), np.int64)
    rest = total - int(base.sum())
    share = w / w.sum() * rest
    counts = base + np.floor(share).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(share - np.floor(share)), kind="stable")[:short]] += 1
    return counts


def allocate(rng: np.random.Generator, counts: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Spread `counts` (per kind) over slots with the given capacities: a (slots, kinds) matrix.

    Each kind is drawn without replacement from the remaining capacity, so no slot gets more bad lines
    than it can hold; a kind that no longer fits is truncated.
    """
    out = np.zeros((capacity.shape[0], counts.shape[0]), np.int64)
    rem = capacity.astype(np.int64).copy()
    for k, c in enumerate(counts.tolist()):
        c = min(int(c), int(rem.sum()))
        if c > 0:
            out[:, k] = rng.multivariate_hypergeometric(rem, c)
            rem -= out[:, k]
    return out


def _with_timestamp(line: bytes, value: bytes) -> bytes:
    return line[: HEAD_TS.start] + value + line[HEAD_TS.stop :]


def corrupt(kind: str, line: bytes, received_ms: int, variant: int) -> bytes:
    """A bad version of a good, rendered, non-identity message line."""
    if kind == "malformed_json":
        return line[: max(20, len(line) // 2)]
    if kind == "invalid_utf8":
        return line.replace(b'"userAgent":"', b'"userAgent":"\xff\xfe\xc3(', 1)
    if kind == "not_an_object":
        return b"[" + line + b"]" if variant % 2 == 0 else b"%d" % received_ms
    if kind == "missing_message_id":
        return b"{" + line[HEAD_END:]
    if kind == "missing_identity":
        return _IDENTITY.sub(b"", line, count=1)
    if kind == "wrong_type":
        if variant % 2 == 0:
            return _with_timestamp(line, b"%d" % (received_ms - 1234))
        if b'"price":' in line:
            return _PRICE.sub(rb'"price":"\1"', line, count=1)
        return line.replace(b'"properties":{', b'"properties":{"price":"9.99",', 1)
    if kind == "unknown_type":
        return _TYPE.sub(b'"type":"bogus"', line, count=1)
    if kind == "unparseable_timestamp":
        return _with_timestamp(line, BAD_TIMESTAMPS[variant % len(BAD_TIMESTAMPS)])
    if kind == "timestamp_in_future":
        return _with_timestamp(line, b'"' + iso_ms(received_ms + 30 * DAY_MS).encode() + b'"')
    if kind == "timestamp_before_horizon":
        return _with_timestamp(line, b'"' + iso_ms(received_ms - 60 * DAY_MS).encode() + b'"')
    if kind == "line_too_large":
        return line.replace(b'"properties":{', b'"properties":{"debug_payload":"' + BLOB + b'",', 1)
    if kind == "empty_line":
        return b""
    raise ValueError(kind)
