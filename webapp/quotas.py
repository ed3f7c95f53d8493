"""Limits that protect the key's bill: concurrent streams (global and per client), minutes per session, and
audio minutes per client per day. A client is an IP address; `X-Forwarded-For` is believed only when the
direct peer is one of TRUSTED_PROXIES."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from .config import Settings

EPSILON = 0.001  # seconds: sums of frame durations are not exact (750 frames of 0.08 s = 59.99999999999…)


class QuotaError(Exception):
    def __init__(self, code: str, message: str, retry_after: float | None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def _seconds_to_midnight() -> int:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((tomorrow - now).total_seconds()) + 1


@dataclass
class Lease:
    """One admitted stream. Audio is charged as it arrives (charge()), to the session and to its client's day,
    so the limits hold however many sessions a client runs and however often a session is resumed."""

    quotas: Quotas
    client: str
    session_s: float = 0.0  # audio seconds on the session's timeline (a resumed session starts where it was)
    limit_code: str = ""  # which limit stopped it
    released: bool = False

    def charge(self, seconds: float) -> bool:
        """Count `seconds` of audio; False (and nothing counted) when that would pass a limit. Called per audio
        frame while a minute limit is set: one call, the limits in seconds worked out once."""
        q = self.quotas
        if q.session_cap and self.session_s + seconds > q.session_cap:
            self.limit_code = "session_limit"
            return False
        if q.day_cap:
            if time.time() >= q._day_ends:
                q._roll_day()
            used = q.used_today.get(self.client, 0.0) + seconds
            if used > q.day_cap:
                self.limit_code = "quota_exceeded"
                return False
            q.used_today[self.client] = used
        self.session_s += seconds
        return True

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.quotas._release(self)


class Quotas:
    def __init__(self, settings: Settings):
        self.s = settings
        self.proxies = [ipaddress.ip_network(p) for p in settings.trusted_proxies]
        self.active = 0
        self.per_client: Counter[str] = Counter()
        self.day = dt.date.min
        self.used_today: dict[str, float] = {}  # seconds of audio per client, today (UTC)
        self.session_cap = settings.max_session_minutes * 60  # seconds; 0 = no limit
        self.day_cap = settings.client_minutes_per_day * 60
        self._day_ends = 0.0  # Unix time of the next UTC midnight, when used_today starts again

    @property
    def meters_audio(self) -> bool:
        """Whether audio must be charged as it flows (a minute limit is set)."""
        return bool(self.s.max_session_minutes or self.s.client_minutes_per_day)

    def client_ip(self, conn: HTTPConnection) -> str:
        peer = conn.client.host if conn.client else "unknown"
        if not self.proxies or not self._trusted(peer):
            return peer
        # Walk X-Forwarded-For from the right, over all its lines in order (a proxy may add its own line rather
        # than extend the client's); the first address not of a trusted proxy is the client. What a client
        # wrote itself is further left, so it cannot pick its own address.
        hops = [h.strip() for line in conn.headers.getlist("x-forwarded-for") for h in line.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def peer_trusted(self, conn: HTTPConnection) -> bool:
        """Whether the connection's direct peer is a trusted proxy (whose X-Forwarded-* headers are believed)."""
        return self._trusted(conn.client.host if conn.client else "")

    def _trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def _roll_day(self) -> None:
        # Called per audio frame while a day limit is set: a float compare until the next UTC midnight.
        now = time.time()
        if now < self._day_ends:
            return
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        if today != self.day:
            self.day, self.used_today = today, {}
        self._day_ends = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()

    def admit(self, client: str, session_s: float = 0.0) -> Lease:
        s = self.s
        if s.max_streams and self.active >= s.max_streams:
            raise QuotaError(
                "too_many_streams",
                f"This server is at its limit of {s.max_streams} live sessions. Try again in a minute.",
                retry_after=60,
            )
        if s.max_streams_per_client and self.per_client[client] >= s.max_streams_per_client:
            raise QuotaError(
                "too_many_streams",
                f"You already have {s.max_streams_per_client} live session(s) open; stop one first.",
                retry_after=30,
            )
        if s.client_minutes_per_day:
            self._roll_day()
            if self.used_today.get(client, 0.0) >= s.client_minutes_per_day * 60 - EPSILON:
                raise QuotaError("quota_exceeded", self._day_text(), retry_after=_seconds_to_midnight())
        if (
            s.max_session_minutes and session_s >= s.max_session_minutes * 60 - EPSILON
        ):  # a resume of a session at its limit
            raise QuotaError("session_limit", self._session_text(), retry_after=None)
        self.active += 1
        self.per_client[client] += 1
        return Lease(self, client, session_s)

    def _release(self, lease: Lease) -> None:
        self.active -= 1
        self.per_client[lease.client] -= 1
        if self.per_client[lease.client] <= 0:
            del self.per_client[lease.client]

    def limit_message(self, lease: Lease) -> tuple[str, float | None]:
        if lease.limit_code == "session_limit":
            return self._session_text(), None
        return self._day_text(), float(_seconds_to_midnight())

    def _session_text(self) -> str:
        return f"Sessions are limited to {self.s.max_session_minutes} minutes; press Start to begin a new one."

    def _day_text(self) -> str:
        return (
            f"Today's allowance of {self.s.client_minutes_per_day} minutes of captioning is used up. "
            "It renews at midnight UTC."
        )
