"""The real Segment and RudderStack Python SDKs, and what they put on the wire.

`CaptureServer` answers like a CDP's `/v1/batch` on loopback and keeps every decoded body (the RudderStack SDK
gzips its bodies); the `sdk_capture` fixture (tests/conftest.py) shares one per test session. `sdk_client` builds
either SDK's client, and `send_every_kind` makes one call of each message kind in turn through it, as an
application would (tests/collector sends to the real collector, tests/raw to the capture server)."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALL_KINDS = ("identify", "track", "page", "screen", "alias", "group")


class CaptureServer:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []  # (request path, decoded body)
        self._lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                with capture._lock:
                    capture.bodies.append((self.path, json.loads(raw)))
                out = b'{"success": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> CaptureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self) -> list[tuple[str, dict]]:
        """The bodies received since the last take (and forget them): each consumer sees only its own calls."""
        with self._lock:
            out, self.bodies = self.bodies, []
        return out


def sdk_client(cdp: str, write_key: str, host: str, **kwargs):
    """A client of the real SDK of `cdp` ("segment" or "rudderstack") posting to `host`."""
    if cdp == "segment":
        from segment.analytics.client import Client
    elif cdp == "rudderstack":
        from rudderstack.analytics.client import Client
    else:
        raise ValueError(f"unknown CDP {cdp!r}: segment or rudderstack")
    return Client(write_key=write_key, host=host, **kwargs)


def send_every_kind(client, prefix: str, n: int, when: datetime, kinds: tuple[str, ...] = ALL_KINDS, users: int = 7,
                    anons: int = 11, identify_traits=lambda user: {"plan": "free"}) -> list[str]:
    """n calls cycling through `kinds` (call i at `when` + i seconds, user i % users, anonymous id i % anons);
    returns their messageIds (`<prefix>-<kind>-<i>-<random>`) in call order."""
    ids = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        mid = f"{prefix}-{kind}-{i:03d}-{uuid.uuid4().hex[:8]}"
        user, anon = f"{prefix}-user-{i % users}", f"{prefix}-anon-{i % anons}"
        t = when + timedelta(seconds=i)
        ctx = {"location": {"country": "DE"}, "page": {"url": f"https://example.com/a/{i}"}}
        if kind == "track":
            client.track(user_id=user, event="Article Viewed", properties={"content_id": f"c{i % 5}", "category": "news"},
                         context=ctx, timestamp=t, anonymous_id=anon, message_id=mid)
        elif kind == "page":
            client.page(user_id=user, name="Home", properties={"dwell_ms": 1200}, context=ctx, timestamp=t, anonymous_id=anon, message_id=mid)
        elif kind == "screen":
            client.screen(user_id=user, name="Feed", context=ctx, timestamp=t, anonymous_id=anon, message_id=mid)
        elif kind == "identify":
            client.identify(user_id=user, traits=identify_traits(user), context=ctx, timestamp=t, anonymous_id=anon, message_id=mid)
        elif kind == "alias":
            client.alias(previous_id=anon, user_id=user, context=ctx, timestamp=t, message_id=mid)
        elif kind == "group":
            client.group(user_id=user, group_id=f"team-{i % 3}", traits={"name": "Team"}, context=ctx, timestamp=t,
                         anonymous_id=anon, message_id=mid)
        else:
            raise ValueError(f"unknown message kind {kind!r}")
        ids.append(mid)
    return ids
