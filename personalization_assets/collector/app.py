"""The collector's ASGI application (Starlette): tracking API, preference center, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from personalization_assets.collector.config import CollectorConfig
from personalization_assets.collector.dedup import DedupIndex
from personalization_assets.collector.metrics import CollectorMetrics
from personalization_assets.collector.pages import preferences_get, preferences_post
from personalization_assets.collector.preference_store import PreferenceStore, SuppressionFeed
from personalization_assets.collector.tracking_api import track_endpoint
from personalization_assets.collector.writer import LandingWriter
from personalization_assets.core.policies import get_policy
from personalization_assets.core.storage import LakeStorage, LandingZone

log = logging.getLogger("personalization.collector")
READER = "collector/preference_center"  # the store's reads of the suppression list, in the access audit log


def landing_zone(config: CollectorConfig) -> LandingZone:
    import os

    t = config.landing
    return LandingZone(url=t.url, s3_endpoint_url=t.s3_endpoint_url, aws_region=t.aws_region,
                       aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                       aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))


async def health(request: Request) -> JSONResponse:
    """200 while the writer runs (the tracking API works); the preference center's store is reported, not gating:
    a lake that cannot be read stops the center (503 on its pages), never the collection of events."""
    state = request.app.state
    ok = state.writer.running
    return JSONResponse({"status": "ok" if ok else "writer stopped", "landing": state.landing_uri,
                         "preference_center": "ready" if state.store.ready and not state.privacy.problem else
                         f"waiting: {state.privacy.problem or 'the suppression list was not read yet'}"},
                        status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


def key_material(config: CollectorConfig) -> tuple[dict[str, bytes], str, str]:
    """The platform's pseudonymization keys: (keys, active version, where they came from)."""
    import os

    from personalization_assets.core.pseudonym_keys import DEV_KEY_FILE, ensure_dev_keys, parse_key_map

    settings = config.platform
    if settings.pseudonym_keys_from_env:
        raw, source = os.environ["PERSONALIZATION_PSEUDONYM_KEYS"], "PERSONALIZATION_PSEUDONYM_KEYS"
    else:  # local only: the data dir's development key, as the platform's runs use it
        ensure_dev_keys(settings.data_dir)
        path = settings.data_dir / DEV_KEY_FILE
        raw, source = path.read_text(), f"the development key file {path}"
    keys, active = parse_key_map(raw, os.environ.get("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION") or None)
    return keys, active, source


def platform_lake(config: CollectorConfig) -> LakeStorage:
    import os

    s = config.platform
    return LakeStorage(url=s.lake_url, logs_url=s.ledger_url, logs_object_lock_mode=s.ledger_object_lock,
                       logs_object_lock_days=s.ledger_retention_days, sensitive_tables=list(get_policy().sensitive_assets),
                       lock_dir=str(s.data_dir / "locks"), s3_endpoint_url=s.s3_endpoint_url, aws_region=s.aws_region,
                       aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                       aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))


class PrivacySync:
    """What keeps the preference store right against the platform: each `run` checks the keys against the key ids the
    lake recorded (without recording any: the collector only uses keys the platform used) and applies the suppression
    list if it changed (the read audited). A failure is kept in `problem` (reported by /health, counted in
    `collector_preference_sync_failures_total`) and retried at the next run; the last success's time is a gauge."""

    def __init__(self, lake: LakeStorage, store: PreferenceStore, metrics: CollectorMetrics, keys: dict[str, bytes], source: str):
        from personalization_assets.core.audit import AccessAuditor

        self.lake, self.store, self.metrics, self.keys, self.source = lake, store, metrics, keys, source
        auditor = AccessAuditor(lake=lake, policy=get_policy(), reader=READER, run_id=f"collector:{socket.gethostname()}",
                                lock_dir=lake.lock_dir)
        self.feed = SuppressionFeed(lake, lambda: auditor.record([("privacy/suppression_list", None, ["identifier"])]))
        self.problem: str | None = None

    def run(self) -> None:
        from personalization_assets.core.pseudonymize import check_key_ids

        try:
            check_key_ids(self.lake, self.keys, self.source, record=False)
            deleted: list[int] = []
            self.feed.sync(lambda ids: deleted.append(self.store.forget(ids)))
        except Exception as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
            self.metrics.preference_sync_failures.inc()
            log.error("preference store: the suppression list was not applied (retried every poll): %s", self.problem)
            return
        self.problem = None
        self.metrics.preference_synced.set(self.feed.applied_at or 0)
        if deleted and deleted[0]:
            log.info("preference store: %d rows of erased subjects deleted", deleted[0])


def create_app(config: CollectorConfig) -> Starlette:
    from personalization_assets.core.pseudonymize import KeyChain

    policy = get_policy()
    landing = landing_zone(config)
    metrics_ = CollectorMetrics()
    lake = platform_lake(config)
    keys, active, source = key_material(config)
    store = PreferenceStore(config.state_dir / "preferences.sqlite", policy, KeyChain(keys, active))
    privacy = PrivacySync(lake, store, metrics_, keys, source)
    index = DedupIndex(config.state_dir / "dedup.sqlite", config.dedup_hours)
    writer = LandingWriter(landing, index, metrics_, faults=config.faults, on_written=store.observe,
                           linger_ms=config.linger_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def follow_erasures():
            # at once, then every poll: until the list was read once the center answers 503 and consent events wait,
            # so an erased subject is never shown or recorded, also after a restart; the tracking API is up meanwhile
            while True:
                await asyncio.to_thread(privacy.run)
                await asyncio.sleep(config.erasure_poll_seconds)

        writer.start()
        follower = asyncio.create_task(follow_erasures())
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await writer.stop()
            store.close()

    # browser SDKs post from any site: CORS on the tracking API only, never on the preference center
    tracking = Starlette(
        routes=[Route("/{endpoint}", track_endpoint, methods=["POST"])],
        middleware=[Middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["POST", "OPTIONS"],
                               allow_headers=["Authorization", "Content-Type", "Content-Encoding"], max_age=86400)],
    )
    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/privacy/preferences", preferences_get, methods=["GET"]),
            Route("/privacy/preferences", preferences_post, methods=["POST"]),
            Mount("/v1", app=tracking),
        ],
        lifespan=lifespan,
    )
    for target in (app, tracking):
        target.state.config = config
        target.state.metrics = metrics_
        target.state.writer = writer
        target.state.store = store
        target.state.privacy = privacy
        target.state.policy = policy
        target.state.landing_uri = landing.uri("events")
    return app
