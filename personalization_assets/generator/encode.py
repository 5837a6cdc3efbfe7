"""Vectorized encoders: hashing, hex/uuid strings and ISO-8601 timestamps as fixed-width byte rows.

Formatting a few million identifiers and timestamps one by one in Python would dominate the run time, so
these build ``(n, width)`` uint8 matrices with numpy and hand back ``bytes`` objects in one step.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
MASK64 = (1 << 64) - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64 finalizer); stable across platforms and runs."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix(x: int) -> int:
    """Scalar SplitMix64, identical to :func:`splitmix64`."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def hex_matrix(x: np.ndarray, width: int = 16) -> np.ndarray:
    """The low `width` hex digits of each uint64, most significant first, as an (n, width) uint8 matrix."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    nib = (np.asarray(x, dtype=np.uint64)[:, None] >> shifts[None, :]) & np.uint64(0xF)
    return HEX[nib]


def uuid_matrix(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """UUID-v4-shaped strings (8-4-4-4-12) from two uint64 arrays, as an (n, 36) uint8 matrix.

    hi == lo == 0 gives the nil UUID (all zeros), which buggy SDKs send.
    """
    hi, lo = np.asarray(hi, dtype=np.uint64), np.asarray(lo, dtype=np.uint64)
    nil = (hi == 0) & (lo == 0)
    hi = np.where(nil, hi, (hi & np.uint64(0xFFFFFFFFFFFF0FFF)) | np.uint64(0x4000))
    lo = np.where(nil, lo, (lo & np.uint64(0x3FFFFFFFFFFFFFFF)) | np.uint64(0x8000000000000000))
    h, l = hex_matrix(hi), hex_matrix(lo)
    out = np.full((h.shape[0], 36), ord("-"), dtype=np.uint8)
    out[:, 0:8] = h[:, 0:8]
    out[:, 9:13] = h[:, 8:12]
    out[:, 14:18] = h[:, 12:16]
    out[:, 19:23] = l[:, 0:4]
    out[:, 24:36] = l[:, 4:16]
    return out


_LUT2 = np.array([[48 + i // 10, 48 + i % 10] for i in range(100)], dtype=np.uint8)
_LUT3 = np.array([[48 + i // 100, 48 + i // 10 % 10, 48 + i % 10] for i in range(1000)], dtype=np.uint8)


def iso_matrix(ms: np.ndarray) -> np.ndarray:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` for int64 epoch milliseconds, as an (n, 24) uint8 matrix."""
    ms = np.asarray(ms, dtype=np.int64)
    day, rem = np.divmod(ms, 86_400_000)
    out = np.empty((ms.shape[0], 24), dtype=np.uint8)
    if ms.shape[0]:
        first = int(day.min())
        dates = "".join(date_text(d) for d in range(first, int(day.max()) + 1))
        out[:, 0:10] = np.frombuffer(dates.encode(), dtype=np.uint8).reshape(-1, 10)[day - first]
    out[:, 10] = ord("T")
    out[:, 11:13] = _LUT2[rem // 3_600_000]
    out[:, 13] = ord(":")
    out[:, 14:16] = _LUT2[rem // 60_000 % 60]
    out[:, 16] = ord(":")
    out[:, 17:19] = _LUT2[rem // 1000 % 60]
    out[:, 19] = ord(".")
    out[:, 20:23] = _LUT3[rem % 1000]
    out[:, 23] = ord("Z")
    return out


def date_text(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def iso_ms(ms: int) -> str:
    """Scalar version of :func:`iso_matrix`."""
    t = _EPOCH + dt.timedelta(milliseconds=int(ms))
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def iso_seconds(ms: int) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` (CRM and privacy-portal exports use second precision)."""
    return (_EPOCH + dt.timedelta(milliseconds=int(ms))).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_ms(t: dt.datetime | dt.date) -> int:
    if not isinstance(t, dt.datetime):
        t = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
    return int((t - _EPOCH).total_seconds() * 1000)


def rows(parts: list) -> list[bytes]:
    """Concatenate fixed-width parts (bytes constants or (n, w) uint8 matrices) into one bytes per row."""
    n = next(p.shape[0] for p in parts if isinstance(p, np.ndarray))
    width = sum(len(p) if isinstance(p, bytes) else p.shape[1] for p in parts)
    out = np.empty((n, width), dtype=np.uint8)
    col = 0
    for p in parts:
        if isinstance(p, bytes):
            out[:, col : col + len(p)] = np.frombuffer(p, dtype=np.uint8)
            col += len(p)
        else:
            out[:, col : col + p.shape[1]] = p
            col += p.shape[1]
    if n == 0:
        return []
    return np.ascontiguousarray(out).view(f"S{width}").ravel().tolist()
