"""Running the collector: `personalization collect [--host 127.0.0.1] [--port 8088]` (uvicorn, one process).

One process on purpose: the durable messageId index (dedup.py) is a local SQLite file owned by one
writer. Scale out with one collector per state directory (see README, "Sending events to the collector").
"""

from __future__ import annotations

import logging

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info") -> None:
    import uvicorn

    from personalization_assets.collector.app import create_app
    from personalization_assets.collector.config import load_collector_config

    config = load_collector_config()
    app = create_app(config)
    logging.getLogger("personalization.collector").info(
        "collector writing to %s (%d write key(s); state in %s)", app.state.landing_uri, len(config.write_keys), config.state_dir
    )
    visitors = ("logged-in users by signed subject token, and anonymous visitors" if config.preference_token_secret
                else "anonymous visitors only: no PERSONALIZATION_PREFERENCE_TOKEN_SECRET")
    print(f"Collector listening on http://{host}:{port} -> {app.state.landing_uri} "
          f"(preference center: http://{host}:{port}/privacy/preferences, for {visitors})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=10)
