"""Where the generator puts event lines (hive, Segment S3, RudderStack S3) and the fields each CDP's server adds.

The messages are the same whatever the layout (same seed => same messageIds, times, users and bad lines);
only their placement and the server-added fields differ:

* ``hive`` (default, the collector's layout): ``events/date=YYYY-MM-DD/hour=HH/events-…-NN.jsonl.gz``, several
  files per receivedAt hour. Byte-identical to the generator before layouts existed.
* ``segment-s3``: ``segment-logs/<source-id>/<received-day ms>/<hour-start ms>.<hex>.gz``, one object per
  receivedAt hour, as Segment's hourly upload does; about 1 object in 10 also holds the first part of the
  next hour (an upload straddling the hour boundary, possibly the day boundary). Server fields
  ``originalTimestamp``, ``_metadata``, ``integrations``, ``projectId``, ``version`` (``sentAt`` and
  ``context.library`` are on every message already).
* ``rudderstack-s3``: ``rudder-logs/<source-id>/<YYYY-MM-DD>/<unix-ts>.<source-id>.<uuid>.json.gz``, one object
  per file slot of the hour (``unix-ts`` = the slot's start, in seconds). Server fields ``originalTimestamp``,
  ``rudderId``, ``request_ip``, ``channel``; ``context.library`` names RudderStack's SDKs and identify calls
  carry their traits in ``context.traits`` (as the RudderStack SDKs send them).
"""

from __future__ import annotations

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.batch import EventBatch
from personalization_assets.generator.encode import (
    date_text,
    iso_matrix,
    mix,
    rows,
    splitmix64,
    uuid_matrix,
)
from personalization_assets.generator.events import _ip

GENERATOR_LAYOUTS = ("hive", "segment-s3", "rudderstack-s3")
HOUR = 3_600_000
DAY = 86_400_000
STRADDLE_SHARE = 0.1  # share of Segment objects that also hold the start of the next hour
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"



def check_layout(layout: str, gzip: bool) -> None:
    if layout not in GENERATOR_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(GENERATOR_LAYOUTS)}, not {layout!r}")
    if layout != "hive" and not gzip:
        raise ValueError(f"the {layout} layout is always gzipped NDJSON (as the CDP writes it): drop --no-gzip")


def source_id(layout: str, seed: int) -> str:
    """A deterministic CDP source id: 10 base62 characters for Segment, 27 (a KSUID's length) for RudderStack."""
    if layout == "hive":
        return "hive"
    n = 10 if layout == "segment-s3" else 27
    out, x, i = [], mix(seed & 0xFFFFFFFFFFFFFFFF), 0
    while len(out) < n:
        out.append(_B62[x % 62])
        x //= 62
        if x < 62:
            i += 1
            x = mix(x ^ (seed + i))
    return "".join(out)


def _uuid(*parts: int) -> str:
    h = 0x5EED
    for p in parts:
        h = mix(h ^ (p & 0xFFFFFFFFFFFFFFFF))
    lo = mix(h ^ 0xA5A5)
    return rows([uuid_matrix(np.array([h], np.uint64), np.array([lo], np.uint64))])[0].decode()


class Placement:
    """Maps (hour, file slot) to the object that receives those lines, and says when each object is complete."""

    def __init__(self, layout: str, root: str, ext: str, fph: int, seed: int, hours: int):
        self.layout, self.root, self.ext, self.fph, self.seed = layout, root, ext, fph, seed
        self.source_id = source_id(layout, seed)
        # Segment: hour h's object also takes the first take[h] file slots of hour h+1 (0 = it does not straddle).
        # Own random stream: the messages themselves never depend on it.
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, 8])))
        straddle = np.zeros(hours, bool)
        straddle[rng.choice(max(hours - 1, 1), size=min(round(hours * STRADDLE_SHARE), max(hours - 1, 0)), replace=False)] = True
        take = rng.integers(1, max(fph, 2), hours)
        self.take = np.where(straddle & (fph >= 2), take, 0)
        self.take[-1] = 0  # the last hour's upload has nothing after it
        self._close_after: dict[str, int] = {}  # object written to -> hour index after which it is complete
        self._pending: dict[str, int] = {}

    def names(self, h: int, h0: int) -> list[str]:
        """The object of each file slot of hour index h (which starts at h0, epoch ms)."""
        day = date_text(h0 // DAY)
        hh = (h0 // HOUR) % 24
        if self.layout == "hive":
            folder = f"{self.root}/events/date={day}/hour={hh:02d}"
            names = [f"{folder}/events-{day.replace('-', '')}T{hh:02d}{f * 60 // self.fph:02d}Z-{f:02d}{self.ext}" for f in range(self.fph)]
            self._close_after.update(dict.fromkeys(names, h))
            return names
        if self.layout == "segment-s3":
            own = self._segment_object(h0)
            self._close_after[own] = h + (1 if self.take[h] else 0)
            if h > 0 and self.take[h - 1]:
                prev = self._segment_object(h0 - HOUR)
                return [prev if f < self.take[h - 1] else own for f in range(self.fph)]
            return [own] * self.fph
        folder = f"{self.root}/rudder-logs/{self.source_id}/{day}"
        names = [f"{folder}/{(h0 + f * HOUR // self.fph) // 1000}.{self.source_id}.{_uuid(self.seed, h0, f)}.json.gz"
                 for f in range(self.fph)]
        self._close_after.update(dict.fromkeys(names, h))
        return names

    def _segment_object(self, h0: int) -> str:
        tag = mix((self.seed * 1_000_003) ^ h0) & 0xFFFFFFFFFFFF
        return f"{self.root}/segment-logs/{self.source_id}/{h0 // DAY * DAY}/{h0}.{tag:012x}.gz"

    def written(self, path: str) -> None:
        self._pending[path] = self._close_after[path]

    def complete_after(self, h: int) -> list[str]:
        """Objects written so far that are complete once hour index h is written (in a stable order)."""
        done = sorted(p for p, last in self._pending.items() if last <= h)
        for p in done:
            del self._pending[p]
        return done

    def remaining(self) -> list[str]:
        done = sorted(self._pending)
        self._pending.clear()
        return done


# ------------------------------------------------------------------------------------------ server fields

_SEGMENT_CONST = b'"_metadata":{"bundled":["Segment.io"],"unbundled":[],"bundledIds":[]},"integrations":{},"projectId":"%s","version":2}'


def server_fields(layout: str, lines: list[bytes], batch: EventBatch, pop, sid: str) -> list[bytes]:
    """Append the fields the CDP's server adds to each rendered line (before the closing brace)."""
    if layout == "hive" or not lines:
        return lines
    orig = rows([b',"originalTimestamp":"', iso_matrix(batch.ts), b'",'])
    if layout == "segment-s3":
        tail = _SEGMENT_CONST % sid.encode()
        return [line[:-1] + o + tail for line, o in zip(lines, orig)]
    keys, inv = np.unique(batch.user.astype(np.int64) * 4 + batch.dev, return_inverse=True)
    users, devs = keys // 4, (keys % 4).astype(np.uint8)
    hi, lo = pop.aid_bits(users, devs)
    rudder_ids = rows([b'"rudderId":"', uuid_matrix(splitmix64(hi ^ np.uint64(0x52554444)), splitmix64(lo ^ np.uint64(0x4552))), b'",'])
    types = pop.device_type(users, devs).tolist()
    hashes = pop.device_hash(users, devs).tolist()
    dev_tail = [rid + b'"request_ip":"%s","channel":"%s"}' % (_ip(h), b"mobile" if t >= vocab.APP_IOS else b"web")
                for rid, t, h in zip(rudder_ids, types, hashes)]
    tails = [dev_tail[i] for i in inv.ravel().tolist()]
    return [line[:-1] + o + t for line, o, t in zip(lines, orig, tails)]

