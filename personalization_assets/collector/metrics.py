"""Prometheus metrics of one collector (its own registry, served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CollectorMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("collector_requests", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=r)
        self.messages = Counter("collector_messages", "Messages accepted: written to the landing zone, or acknowledged "
                                "as duplicates of messages already stored.", ["outcome"], registry=r)
        self.rejects = Counter("collector_rejects", "Requests rejected (nothing written), by reason.", ["reason"], registry=r)
        self.write_seconds = Histogram("collector_write_seconds", "Durable write of one group of messages (index + objects).",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("collector_request_seconds", "Request latency until the answer, by endpoint.",
                                         ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.objects = Counter("collector_objects_written", "Landing objects written.", registry=r)
        self.preference_sync_failures = Counter("collector_preference_sync_failures", "Attempts to apply the suppression list "
                                                "to the preference center's store that failed (retried every poll).", registry=r)
        self.preference_synced = Gauge("collector_preference_synced_timestamp_seconds", "When the preference center's store "
                                       "last applied (or found unchanged) the suppression list.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
