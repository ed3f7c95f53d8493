"""Limits that protect the key's bill: concurrent streams (global and per client), minutes per session, and
audio minutes per client per day. A client is an IP address; `X-Forwarded-For` is believed only when the
direct peer is one of TRUSTED_PROXIES."""
from __future__ import annotations

import datetime as dt
import ipaddress
from collections import Counter
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from .config import Settings


class QuotaError(Exception):
    def __init__(self, code: str, message: str, retry_after: float | None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def _seconds_to_midnight() -> int:
    now = dt.datetime.now(dt.timezone.utc)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((tomorrow - now).total_seconds()) + 1


@dataclass
class Lease:
    """One admitted stream. `audio_limit_s` is how much audio it may send (None = unlimited)."""
    quotas: "Quotas"
    client: str
    audio_limit_s: float | None
    limit_code: str = ""
    released: bool = False

    def release(self, audio_seconds: float) -> None:
        if not self.released:
            self.released = True
            self.quotas._release(self, audio_seconds)


class Quotas:
    def __init__(self, settings: Settings):
        self.s = settings
        self.proxies = [ipaddress.ip_network(p) for p in settings.trusted_proxies]
        self.active = 0
        self.per_client: Counter[str] = Counter()
        self.day = dt.date.min
        self.used_today: Counter[str] = Counter()   # seconds of audio per client, today (UTC)

    def client_ip(self, conn: HTTPConnection) -> str:
        peer = conn.client.host if conn.client else "unknown"
        if not self.proxies or not self._trusted(peer):
            return peer
        # Walk X-Forwarded-For from the right; the first address not of a trusted proxy is the client.
        hops = [h.strip() for h in conn.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def _roll_day(self) -> None:
        today = dt.datetime.now(dt.timezone.utc).date()
        if today != self.day:
            self.day, self.used_today = today, Counter()

    def admit(self, client: str) -> Lease:
        s = self.s
        if s.max_streams and self.active >= s.max_streams:
            raise QuotaError("too_many_streams", f"This server is at its limit of {s.max_streams} live sessions. "
                             "Try again in a minute.", retry_after=60)
        if s.max_streams_per_client and self.per_client[client] >= s.max_streams_per_client:
            raise QuotaError("too_many_streams", f"You already have {s.max_streams_per_client} live session(s) "
                             "open; stop one first.", retry_after=30)
        limit, code = None, ""
        if s.client_minutes_per_day:
            self._roll_day()
            left = s.client_minutes_per_day * 60 - self.used_today[client]
            if left <= 0:
                raise QuotaError("quota_exceeded", f"Today's allowance of {s.client_minutes_per_day} minutes of "
                                 "captioning is used up. It renews at midnight UTC.", retry_after=_seconds_to_midnight())
            limit, code = left, "quota_exceeded"
        if s.max_session_minutes and (limit is None or s.max_session_minutes * 60 <= limit):
            limit, code = s.max_session_minutes * 60, "session_limit"
        self.active += 1
        self.per_client[client] += 1
        return Lease(self, client, limit, code)

    def _release(self, lease: Lease, audio_seconds: float) -> None:
        self.active -= 1
        self.per_client[lease.client] -= 1
        if self.per_client[lease.client] <= 0:
            del self.per_client[lease.client]
        if self.s.client_minutes_per_day:
            self._roll_day()
            self.used_today[lease.client] += audio_seconds

    def limit_message(self, lease: Lease) -> tuple[str, float | None]:
        if lease.limit_code == "session_limit":
            return (f"Sessions are limited to {self.s.max_session_minutes} minutes; press Start to begin a new one.",
                    None)
        return (f"Today's allowance of {self.s.client_minutes_per_day} minutes of captioning is used up. "
                "It renews at midnight UTC.", float(_seconds_to_midnight()))
