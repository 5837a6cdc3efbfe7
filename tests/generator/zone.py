"""Helpers for the generator tests: generate small landing zones and read back what they contain."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pyarrow.fs as pafs

from personalization_assets.generator import generate_landing_zone

END = dt.date(2024, 5, 7)


def generate(root: Path, **kw):
    args = {"users": 400, "events": 20_000, "seed": 11, "days": 3, "end": END} | kw
    return generate_landing_zone(pafs.LocalFileSystem(), str(root), **args)


def event_files(root: Path) -> list[Path]:
    return sorted(root.glob("events/date=*/hour=*/*.jsonl*"))


def file_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    assert data.endswith(b"\n"), f"{path} is not newline-terminated"
    return data[:-1].split(b"\n")


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def messages(root: Path) -> list[dict]:
    """Every event line of a clean zone, parsed, with `_file` set to the file's path under root."""
    out = []
    for path in event_files(root):
        rel = str(path.relative_to(root))
        for line in file_lines(path):
            msg = json.loads(line)
            msg["_file"] = rel
            out.append(msg)
    return out
