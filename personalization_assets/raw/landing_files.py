"""Landing files: decompression and line indexing (the first step of raw ingestion).

Every file is read into memory (decompressed) and its line boundaries are indexed with numpy, so the number
of lines read is known independently of any parser. `Reject` is a rejected line (or, line 0, a whole file).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

BOM = b"\xef\xbb\xbf"

MAX_QUARANTINE_BYTES = 1 << 20  # a whole unreadable file is kept up to 1 MiB; the landing file itself stays


@dataclass
class Reject:
    line_no: int
    reason: str
    detail: str



@dataclass
class LandedFile:
    """A landing file's decompressed content and the byte span of each line (newline excluded)."""

    path: str
    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    file_error: Reject | None = None

    @property
    def n_lines(self) -> int:
        return int(self.starts.shape[0])

    def line_bytes(self, line_no: int) -> bytes:
        i = line_no - 1
        return self.data[int(self.starts[i]) : int(self.ends[i])]



def decompress(path: str, raw: bytes) -> tuple[bytes, Reject | None]:
    """Gunzip `.gz` files (all members). A damaged stream keeps what decoded and reports the damage."""
    if not path.endswith(".gz"):
        return raw, None
    out, pos = [], 0
    while pos < len(raw):
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(raw[pos:]))
            out.append(d.flush())
        except zlib.error as exc:
            return b"".join(out), Reject(0, "corrupt_gzip", f"gzip stream damaged after {sum(map(len, out))} bytes: {exc}")
        if not d.eof:
            return b"".join(out), Reject(0, "truncated_gzip", f"gzip stream ends early after {sum(map(len, out))} decompressed bytes")
        consumed = len(raw) - pos - len(d.unused_data)
        pos += consumed
        if consumed == 0:
            break
        # tolerate zero padding after the last member, as gzip(1) does
        if raw[pos:].strip(b"\x00") == b"":
            break
    return b"".join(out), None



def index_lines(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start/end offsets of each line. A trailing newline does not start a new line; CR before LF is dropped."""
    if not data:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10).astype(np.int64)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(data)]))
    if data.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    # strip one CR before LF (Windows line endings)
    nonempty = ends > starts
    has_cr = np.zeros_like(nonempty)
    idx = np.flatnonzero(nonempty)
    has_cr[idx] = buf[ends[idx] - 1] == 13
    ends = ends - has_cr.astype(np.int64)
    return starts, ends



def direct_path(landed: LandedFile, local: str | None) -> str | None:
    """The landing object's own local path when DuckDB may read it in place of `landed.data`: plain, or gzip (DuckDB
    decompresses `.gz` itself, with every member, so no decompressed copy is written to disk). None for a remote
    object or one whose decoded text starts with a byte-order mark. The parsers compare DuckDB's row count with the
    lines indexed here and fall back to the decoded text when they differ or DuckDB fails (e.g. zero padding after
    the last gzip member, which gzip(1) and `decompress` tolerate)."""
    if local is None or landed.data[:3] == BOM:
        return None
    return local


def load_file(path: str, raw: bytes) -> LandedFile:
    data, err = decompress(path, raw)
    if data.startswith(BOM):
        # A UTF-8 byte-order mark is an encoding artefact of some exporters, not part of the record.
        data = data[len(BOM) :]
    starts, ends = index_lines(data)
    if err is not None and not data:
        err.detail += "; nothing could be decoded"
    return LandedFile(path=path, data=data, starts=starts, ends=ends, file_error=err)
