"""The collector's ASGI application (Starlette): tracking API, preference center, health and metrics."""

from __future__ import annotations

import contextlib

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
from personalization_assets.collector.preference_store import PreferenceStore
from personalization_assets.collector.tracking_api import track_endpoint
from personalization_assets.collector.writer import LandingWriter
from personalization_assets.core.policies import get_policy
from personalization_assets.core.storage import LandingZone


def landing_zone(config: CollectorConfig) -> LandingZone:
    import os

    t = config.landing
    return LandingZone(url=t.url, s3_endpoint_url=t.s3_endpoint_url, aws_region=t.aws_region,
                       aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                       aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))


async def health(request: Request) -> JSONResponse:
    writer = request.app.state.writer
    ok = writer.running
    return JSONResponse({"status": "ok" if ok else "writer stopped", "landing": request.app.state.landing_uri},
                        status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


def create_app(config: CollectorConfig) -> Starlette:
    policy = get_policy()
    landing = landing_zone(config)
    metrics_ = CollectorMetrics()
    store = PreferenceStore(config.state_dir / "preferences.sqlite", policy)
    index = DedupIndex(config.state_dir / "dedup.sqlite", config.dedup_hours)
    writer = LandingWriter(landing, index, metrics_, faults=config.faults, on_written=store.observe,
                           linger_ms=config.linger_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        writer.start()
        try:
            yield
        finally:
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
        target.state.policy = policy
        target.state.landing_uri = landing.uri("events")
    return app
