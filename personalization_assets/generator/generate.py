"""generate_landing_zone: stream a deterministic demo landing zone into any pyarrow filesystem.

Plan first, then stream hour by hour. The exact number of lines per hour is drawn up front (a diurnal
curve), bad lines are spread over hours without exceeding them, and the planted cases are slotted into
the hours their messages arrive in. Each hour is generated in windows of at most WINDOW_CAP messages,
rendered, corrupted where planned, split into its files by receivedAt and handed to the writer thread;
memory depends on the window size and the number of users, never on the total number of events.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.fs as pafs

from personalization_assets.generator import bad_lines, crm, planted, privacy
from personalization_assets.generator.batch import EventBatch
from personalization_assets.generator.catalog import Catalog
from personalization_assets.generator.encode import date_text, epoch_ms
from personalization_assets.generator.events import render
from personalization_assets.generator.layouts import Placement, check_layout, server_fields
from personalization_assets.generator.population import Population
from personalization_assets.generator.sessions import simulate
from personalization_assets.generator.writer import Writer

HOUR = 3_600_000
WINDOW_CAP = 20_000  # messages generated and rendered at once (~1.7 KB of transient memory each)
# share of traffic per UTC hour: European evening peak, US evening in the early UTC hours
HOURLY = np.array([0.55, 0.5, 0.42, 0.35, 0.3, 0.3, 0.38, 0.55, 0.75, 0.85, 0.9, 0.92,
                   0.95, 0.95, 0.95, 0.98, 1.0, 1.05, 1.15, 1.25, 1.3, 1.2, 0.95, 0.7])
MANIFEST = "_generator/manifest.json"


@dataclass
class GenerationSummary:
    """What was written. `events_written` counts every line of the event files (bad lines included)."""

    root: str
    seed: int
    start: str  # first day (UTC)
    end: str  # last day (UTC)
    days: int
    events_written: int = 0
    good_events: int = 0
    bad_lines: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    planted_events: int = 0
    users: int = 0  # persons in the data: the random population plus planted (and spare) persons
    planted_users: int = 0
    event_files: int = 0
    files: int = 0  # every file written, manifest included
    crm_rows: int = 0
    bad_crm_rows: dict[str, int] = field(default_factory=dict)
    catalog_items: int = 0
    bad_catalog_lines: int = 0
    privacy_requests: int = 0
    event_bytes: int = 0  # uncompressed
    layout: str = "hive"  # where the events went (generator/layouts.py)
    source_id: str = "hive"  # the CDP source-id folder of segment-s3 / rudderstack-s3

    def to_dict(self) -> dict:
        return asdict(self)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *stream])))


def default_files_per_hour(events: int, days: int) -> int:
    """One file per 5-30 minutes: ~5k messages per file, between 2 and 12 files an hour."""
    return int(min(12, max(2, math.ceil(events / (days * 24) / 5000))))


def generate_landing_zone(fs: pafs.FileSystem, root: str, *, users: int, events: int, seed: int, bad_fraction: float = 0.0,
                          end: dt.date | None = None, days: int = 7, gzip: bool = True,
                          files_per_hour: int | None = None, all_consent: bool = False, layout: str = "hive") -> GenerationSummary:
    """`all_consent=True` is the benchmark scenario: every device grants every category at its first
    event, nobody withdraws, no GPC, no privacy requests and no planted cases — so a privacy-aware
    pipeline keeps every event and its results can be compared with privacy-unaware baselines.
    `layout`: where the event lines go and which server fields they carry (generator/layouts.py): `hive`
    (default), `segment-s3` or `rudderstack-s3`; the messages are the same whatever the layout."""
    if users < 1 or days < 1 or events < 0:
        raise ValueError("users and days must be >= 1 and events >= 0")
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError("bad_fraction must be within [0, 1]")
    check_layout(layout, gzip)
    end = end or dt.datetime.now(dt.UTC).date()
    if isinstance(end, dt.datetime):
        end = end.date()
    root = root.rstrip("/")
    if not root:
        raise ValueError("root must name a directory or a bucket/prefix")
    t0 = epoch_ms(end - dt.timedelta(days=days - 1))
    t1 = t0 + days * 24 * HOUR
    fph = files_per_hour or default_files_per_hour(events, days)
    if not 1 <= fph <= 60:
        raise ValueError("files_per_hour must be within [1, 60]")

    catalog = Catalog(_rng(seed, 1), int(np.clip(events // 2000, 200, 2000)), t1)
    pop = Population.build(_rng(seed, 2), users, planted.PERSONS, seed, t0, t1)
    plant = planted.build(pop, catalog, _rng(seed, 3), t0, t1)
    if all_consent:
        pop.grant_everything()
        plant = planted.Planted(batch=plant.batch.take(np.zeros(0, np.int64)), cases={}, requests=[])
    n_planted = len(plant.batch)
    if events < n_planted:
        raise ValueError(f"events must be at least {n_planted} (the planted cases alone write that many messages)")

    summary = GenerationSummary(root=root, seed=seed, start=date_text(t0 // 86_400_000), end=end.isoformat(), days=days,
                                planted_events=n_planted, users=pop.n, planted_users=pop.n - users, layout=layout)
    writer = Writer(fs)
    try:
        plan_rng = _rng(seed, 4)
        weights = np.tile(HOURLY, days) * np.repeat([1.1 if dt.date.fromordinal(d).weekday() >= 5 else 1.0
                                                     for d in range(end.toordinal() - days + 1, end.toordinal() + 1)], 24)
        regular = plan_rng.multinomial(events - n_planted, weights / weights.sum())
        kinds = bad_lines.plan(round(bad_fraction * events))
        bad = bad_lines.allocate(plan_rng, kinds, (regular * 0.9).astype(np.int64))

        summary.catalog_items = catalog.n
        lines = catalog.lines()
        if bad_fraction > 0:
            at = int(plan_rng.integers(len(lines) + 1))
            lines.insert(at, b'{"content_id":"' + b"broken-00000" + b'","title":"Unterminated')
            summary.bad_catalog_lines = 1
        writer.write_file(f"{root}/catalog/catalog_{date_text(t0 // 86_400_000)}.jsonl", b"\n".join(lines) + b"\n")
        summary.crm_rows, _, summary.bad_crm_rows = crm.write_crm(writer, root, pop, _rng(seed, 5), t0, t1, bad_fraction > 0)
        requests = [] if all_consent else plant.requests + privacy.random_requests(pop, _rng(seed, 6), t0, t1)
        summary.privacy_requests = len(requests)
        privacy.write_requests(writer, root, requests)

        counts = dict.fromkeys(bad_lines.KINDS, 0)
        ext = ".jsonl.gz" if gzip else ".jsonl"
        placement = Placement(layout, root, ext, fph, seed, days * 24)
        summary.source_id = placement.source_id
        for h in range(days * 24):
            _hour(writer, summary, counts, pop, catalog, plant.batch, _rng(seed, 7, h), placement, h, t0 + h * HOUR, fph,
                  int(regular[h]), bad[h])
        for path in placement.remaining():
            writer.close(path)
            summary.event_files += 1
        summary.bad_lines = counts
        summary.duplicates = counts[bad_lines.DUPLICATE]
        summary.good_events = summary.events_written - sum(counts.values())
        manifest = {"seed": seed, "end": end.isoformat(), "days": days, "start": summary.start, "users": users, "events": events,
                    "bad_fraction": bad_fraction, "all_consent": all_consent, "cases": plant.cases, "bad_lines": counts, "bad_crm_rows": summary.bad_crm_rows,
                    "bad_catalog_lines": summary.bad_catalog_lines, "layout": layout}
        if layout != "hive":
            manifest["source_id"] = placement.source_id
        writer.write_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n")
    finally:
        writer.finish()
    summary.files = writer.files_written
    return summary


def _hour(writer: Writer, summary: GenerationSummary, counts: dict, pop: Population, catalog: Catalog, planted_batch: EventBatch,
          rng: np.random.Generator, placement: Placement, h: int, h0: int, fph: int, n_regular: int, bad: np.ndarray) -> None:
    """Generate, corrupt and write the lines of one receivedAt hour (into the objects the layout places them in)."""
    names = placement.names(h, h0)
    plant_h = planted_batch.window(h0, h0 + HOUR)
    g = max(1, math.ceil((n_regular + len(plant_h)) / WINDOW_CAP))
    edges = [h0 + HOUR * j // g for j in range(g + 1)]
    sizes = np.diff([n_regular * j // g for j in range(g + 1)])
    bad_w = bad_lines.allocate(rng, bad, sizes) if g > 1 else bad[None, :]
    for j in range(g):
        per_file = _window(summary, counts, pop, catalog, planted_batch.window(edges[j], edges[j + 1]), rng, edges[j], edges[j + 1],
                           h0, fph, int(sizes[j]), bad_w[j], placement)
        for f, chunk in enumerate(per_file):
            if chunk:
                data = b"\n".join(chunk) + b"\n"
                summary.event_bytes += len(data)
                writer.write(names[f], data)
                placement.written(names[f])
    for path in placement.complete_after(h):
        writer.close(path)
        summary.event_files += 1


def _window(summary, counts, pop, catalog, plant_w: EventBatch, rng, a: int, b: int, h0: int, fph: int, m: int,
            bad: np.ndarray, placement: Placement) -> list[list[bytes]]:
    """The lines of one window, grouped by file slot."""
    n_dup = min(int(bad[-1]), max(m - 1, 0))
    gen = simulate(pop, catalog, rng, a, b, m - n_dup)
    batch = EventBatch.concat([gen, plant_w])
    is_planted = np.arange(len(batch)) >= len(gen)
    order = np.argsort(batch.ra, kind="stable")
    batch, is_planted = batch.take(order), is_planted[order]
    lines = _render(placement, batch, pop, catalog)

    # corrupt planned lines (never planted or identity/consent messages; one good line stays for the duplicates)
    eligible = np.flatnonzero(~batch.locked)
    wanted = bad[:-1]
    room = max(0, eligible.shape[0] - (1 if n_dup else 0))
    targets = rng.choice(eligible, size=min(int(wanted.sum()), room), replace=False) if room else np.zeros(0, np.int64)
    is_bad = np.zeros(len(batch), bool)
    kinds = np.repeat(np.arange(wanted.shape[0]), wanted)[: targets.shape[0]]
    ra = batch.ra
    for t, k in zip(targets.tolist(), kinds.tolist()):
        kind = bad_lines.CORRUPTIONS[k]
        lines[t] = bad_lines.corrupt(kind, lines[t], int(ra[t]), counts[kind])
        counts[kind] += 1
        is_bad[t] = True

    # split by receivedAt into the hour's files
    fidx = np.clip((ra - h0) * fph // HOUR, 0, fph - 1)
    bounds = np.searchsorted(fidx, np.arange(fph + 1))
    per_file = [lines[bounds[f] : bounds[f + 1]] for f in range(fph)]

    # exact re-sends of good messages, into the same file or another file of the hour
    sources = np.flatnonzero(~is_bad & ~is_planted)
    if n_dup and sources.shape[0]:
        src = rng.choice(sources, size=n_dup, replace=n_dup > sources.shape[0])
        same = rng.random(n_dup) < 0.5
        other = rng.integers(0, fph, n_dup)
        for s, keep, o in zip(src.tolist(), same.tolist(), other.tolist()):
            f = int(fidx[s]) if keep else o
            per_file[f].insert(int(rng.integers(len(per_file[f]) + 1)), lines[s])
            counts[bad_lines.DUPLICATE] += 1
    elif n_dup:  # nothing to duplicate: keep the line count exact with fresh messages instead
        extra = _render(placement, simulate(pop, catalog, rng, a, b, n_dup), pop, catalog)
        per_file[0].extend(extra)
    summary.events_written += sum(len(c) for c in per_file)
    return per_file


def _render(placement: Placement, batch: EventBatch, pop: Population, catalog: Catalog) -> list[bytes]:
    """The spec lines of a batch as the layout's CDP stores them (server fields added; hive: as sent)."""
    lines = render(batch, pop, catalog, rudderstack=placement.layout == "rudderstack-s3")
    return server_fields(placement.layout, lines, batch, pop, placement.source_id)
