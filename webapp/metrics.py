"""The `/metrics` page (Prometheus text format, prometheus-client) and every metric the app exports.

Other modules count through the objects defined here (e.g. `metrics.BATCH_JOBS.labels(backend, outcome).inc()`);
none is touched per audio frame: audio seconds are read from the sessions' own counters (webapp/usage.py adds
them every few seconds and before each scrape), finals and end-of-turn latency once per final, connects per
connection. Per-key usage comes from the store (the usage the CLI lists), so it is the whole deployment's.

Served only to a loopback client (the real peer, or the client a TRUSTED_PROXIES peer names in X-Forwarded-For)
or to `Authorization: Bearer <METRICS_TOKEN>`: 401 for a wrong token, 403 otherwise.

Several processes (`caption-relay --workers N`): the supervisor gives its workers one PROMETHEUS_MULTIPROC_DIR
and prometheus-client's multiprocess mode sums their counters, histograms and live gauges, so a scrape answered
by any worker shows the whole server.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # no *_created series: a counter's start time is noise on this page

SESSIONS_ACTIVE = Gauge(
    "caption_relay_sessions_active", "Live capture sessions (page, widget, realtime API)", multiprocess_mode="livesum"
)
VIEWERS = Gauge("caption_relay_viewers_connected", "Share-link viewers connected", multiprocess_mode="livesum")
UPSTREAM_CONNECTS = Counter(
    "caption_relay_upstream_connects", "Upstream recognizer connections opened (first and reconnects)", ["backend"]
)
UPSTREAM_RECONNECTS = Counter(
    "caption_relay_upstream_reconnects", "Upstream connections that ended an outage of a session", ["backend"]
)
UPSTREAM_FAILURES = Counter(
    "caption_relay_upstream_failures",
    "Upstream connections that failed or were refused, by the app's error code",
    ["backend", "code"],
)
AUDIO_RECEIVED = Counter("caption_relay_audio_received_seconds", "Seconds of audio received from clients")
AUDIO_RELAYED = Counter(
    "caption_relay_audio_relayed_seconds", "Seconds of audio sent to the recognizer (replays after reconnects included)"
)
FINALS = Counter("caption_relay_finals", "Final transcript turns delivered")
END_OF_TURN = Histogram(
    "caption_relay_end_of_turn_seconds",
    "Audio received after a turn's last word when its final arrives (wall time for a live microphone)",
    buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
BATCH_JOBS = Counter(
    "caption_relay_batch_jobs", "File transcriptions (POST /v1/audio/transcriptions) by outcome", ["backend", "outcome"]
)
STORE_ERRORS = Counter("caption_relay_store_errors", "Store calls that failed", ["where"])


class UsageCollector(Collector):
    """Per-key usage as the store last said (webapp/usage.py refreshes it): the same figures as `api-key list`."""

    def __init__(self, rows: Callable[[], Iterable[dict]]):
        self.rows = rows

    def collect(self):
        seconds = CounterMetricFamily(
            "caption_relay_api_key_audio_seconds", "Audio seconds charged to each API key", labels=["key", "id"]
        )
        cost = CounterMetricFamily("caption_relay_api_key_cost", "Cost charged to each API key", labels=["key", "id"])
        today = GaugeMetricFamily(
            "caption_relay_api_key_audio_seconds_today",
            "Audio seconds charged to each API key today (UTC)",
            labels=["key", "id"],
        )
        for row in self.rows():
            labels = [row["name"], row["id"]]
            seconds.add_metric(labels, row["total_s"])
            cost.add_metric(labels, row["total_cost"])
            today.add_metric(labels, row["today_s"])
        yield from (seconds, cost, today)


USAGE = UsageCollector(list)  # registered once; create_app points it at its Usage
REGISTRY.register(USAGE)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class MetricsPage:
    """The /metrics handler. `before_scrape` brings the counters read from running sessions up to date."""

    def __init__(
        self,
        settings: Settings,
        client_ip: Callable[[Request], str],
        usage_rows: Callable[[], Iterable[dict]],
        before_scrape: Callable[[], None],
    ):
        self.token = settings.metrics_token
        self.client_ip = client_ip
        self.before_scrape = before_scrape
        USAGE.rows = usage_rows
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))

    def allowed(self, request: Request) -> tuple[bool, int]:
        """(allowed, status when not): a good METRICS_TOKEN, or a loopback client."""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            good = bool(self.token) and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode())
            return good, 401
        return is_loopback(self.client_ip(request)), 403

    async def page(self, request: Request) -> Response:
        allowed, status = self.allowed(request)
        if not allowed:
            text = (
                "Wrong metrics token.\n"
                if status == 401
                else "/metrics is served to loopback clients, or with Authorization: Bearer <METRICS_TOKEN>.\n"
            )
            return PlainTextResponse(text, status_code=status)
        self.before_scrape()
        registry = REGISTRY
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(USAGE)
        return Response(
            generate_latest(registry), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"}
        )
