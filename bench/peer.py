"""The peer: what a team writes first — read each file line by line with json.loads into pandas, then
the same transforms (dedup, persons, sessions, RFM, affinity) in pandas.

    python -m bench.peer LANDING_DIR OUT_DIR END_DATE
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import (
    CONVERSIONS, ENGAGEMENT_EVENTS, LATE_BOUND_DAYS, MAX_SESSION_HOURS, RFM_WINDOW_DAYS, SESSION_GAP_MINUTES, Timer, as_of_for, emit,
)

HOUR_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")


def read_events(landing: Path) -> pd.DataFrame:
    rows = []
    for f in sorted((landing / "events").rglob("*.jsonl*")):
        m = HOUR_RE.search(f.as_posix())
        hour = pd.Timestamp(f"{m.group(1)} {m.group(2)}:00", tz="UTC")
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                msg = json.loads(line)
                props = msg.get("properties") or {}
                rows.append({
                    "mid": msg.get("messageId"), "type": msg.get("type"), "event": msg.get("event"),
                    "a": msg.get("anonymousId"), "u": msg.get("userId"), "p": msg.get("previousId"),
                    "ts": msg.get("timestamp"), "rts": msg.get("receivedAt"),
                    "cat": props.get("category"), "price": props.get("price"), "landing_hour": hour,
                })
    df = pd.DataFrame(rows)
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    df["rts"] = pd.to_datetime(df["rts"], utc=True, format="ISO8601")
    return df


def run(landing: str, out: str, end: str) -> dict:
    as_of = pd.Timestamp(as_of_for(end))
    timer = Timer()
    with timer.stage("parse"):
        ev = read_events(Path(landing))
    n_events = len(ev)
    with timer.stage("persons"):
        links = pd.concat([ev[["a", "u"]].dropna(), ev[["p", "u"]].dropna().rename(columns={"p": "a"})]).drop_duplicates()
        per_anon = links.groupby("a")["u"].agg(["nunique", "min"])
        amap = per_anon[per_anon["nunique"] == 1]["min"]
        ev["person"] = ev["u"].fillna(ev["a"].map(amap)).fillna(ev["a"])
    with timer.stage("dedup_sessionize"):
        known = ev[(ev["ts"] <= as_of) & (ev["rts"] <= as_of)]
        known = known.sort_values(["mid", "rts", "landing_hour"]).drop_duplicates("mid", keep="first")
        clean = known[known["ts"] >= known["landing_hour"] - pd.Timedelta(days=LATE_BOUND_DAYS)]
        clean = clean.sort_values(["person", "ts", "mid"]).reset_index(drop=True)
        gap = clean.groupby("person")["ts"].diff()
        new_run = gap.isna() | (gap >= pd.Timedelta(minutes=SESSION_GAP_MINUTES))
        clean["run"] = new_run.astype(np.int64).groupby(clean["person"]).cumsum()
        run_start = clean.groupby(["person", "run"])["ts"].transform("min")
        clean["piece"] = ((clean["ts"] - run_start) // pd.Timedelta(hours=MAX_SESSION_HOURS)).astype(np.int64)
        sessions = clean.groupby(["person", "run", "piece"]).agg(session_start=("ts", "min"), events=("mid", "size")).reset_index()
    with timer.stage("rfm_affinity"):
        window = as_of - pd.Timedelta(days=RFM_WINDOW_DAYS)
        freq = sessions[sessions["session_start"] > window].groupby("person").size()
        is_conv = (clean["type"] == "track") & clean["event"].isin(CONVERSIONS) & (clean["ts"] > window)
        conv = clean[is_conv]
        rfm = pd.DataFrame({"person": clean["person"].unique()}).set_index("person")
        rfm["frequency"] = freq.reindex(rfm.index).fillna(0).astype(np.int64)
        rfm["monetary"] = conv.groupby("person")["price"].sum().reindex(rfm.index).fillna(0.0)
        rfm["orders"] = conv.groupby("person").size().reindex(rfm.index).fillna(0).astype(np.int64)
        engaged = clean[clean["cat"].notna() & (clean["type"].isin(["page", "screen"]) | ((clean["type"] == "track") & clean["event"].isin(ENGAGEMENT_EVENTS)))]
        affinity = engaged.groupby(["person", "cat"]).size().rename("events").reset_index()
    with timer.stage("write"):
        outp = Path(out)
        clean.drop(columns=["run", "piece"]).to_parquet(outp / "clean.parquet")
        sessions.to_parquet(outp / "sessions.parquet")
        rfm.reset_index().to_parquet(outp / "rfm.parquet")
        affinity.to_parquet(outp / "affinity.parquet")
    totals = {
        "sessions": int(len(sessions)), "persons": int(len(rfm)), "frequency": int(rfm["frequency"].sum()),
        "monetary": round(float(rfm["monetary"].sum()), 2), "orders": int(rfm["orders"].sum()),
        "affinity_rows": int(len(affinity)), "clean_events": int(len(clean)),
    }
    return {"path": "peer", "events": n_events, "stages": timer.stages, "totals": totals}


if __name__ == "__main__":
    emit(run(*sys.argv[1:4]))
