"""Usage metering: audio seconds and their cost (COST_PER_MINUTE) per API key, embed key and client IP, per UTC
day and in total, kept in the store; and each API key's `--minutes-per-day`.

Live sessions are charged from the relay's own count of the audio it received (RelaySession.audio_seconds), read
every FLUSH_SECONDS and at the session's end, and written as one batched upsert per flush for all sessions of the
process. Nothing is done per audio frame unless a key has a minute limit (then one float add, as webapp/quotas.py
does for its limits), and there is no store write per frame or per session second: a crash loses at most
FLUSH_SECONDS of each running session's usage. A session's own audio minutes and cost are written with its end
(webapp/recorder.py). A batch job is charged at once by `charge()` (one write per job).

A key's day limit counts what the store says of today (read when the key authenticates) plus what this process
charged since; with several worker processes each sees the others' use up to FLUSH_SECONDS late.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import metrics
from .config import Settings
from .logs import fields
from .store import STORE_ERRORS, SessionStore, UsageRow

if TYPE_CHECKING:
    from .apikeys import ApiClient
    from .quotas import Lease

log = logging.getLogger(__name__)

FLUSH_SECONDS = 10.0  # how often live sessions' usage is written (and what a crash can lose of each)
KINDS = ("api_key", "embed_key", "ip")
ROWS_PER_WRITE = 500  # what one store call adds (SQLite: one statement, so one transaction)


class ApiQuotaError(Exception):
    """A key's minutes for today are used up: 429 with Retry-After (seconds to the next UTC midnight)."""

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def seconds_to_midnight() -> int:
    now = dt.datetime.now(dt.UTC)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return int((tomorrow - now).total_seconds()) + 1


@dataclass(slots=True)
class _Tracked:
    session: Any  # a RelaySession: audio_seconds, relayed_seconds, id
    subjects: tuple[tuple[str, str], ...]  # (kind, subject) charged
    base: float  # audio_seconds when tracking began (a resumed session's earlier audio was charged before)
    charged: float = 0.0  # seconds since `base` already added to `pending`
    counted_rx: float = 0.0  # ...and to the metrics
    counted_tx: float = 0.0


class Usage:
    def __init__(self, settings: Settings, store: SessionStore):
        self.price = settings.cost_per_minute
        self.store = store
        self.tracked: dict[int, _Tracked] = {}  # by id(session)
        self.pending: dict[tuple[str, str, str], float] = {}  # (kind, subject, day) -> seconds not yet stored
        self.day = ""
        self.day_ends = 0.0
        self.day_used: dict[str, float] = {}  # key id -> seconds today (for --minutes-per-day)
        self.key_rows: list[dict[str, Any]] = []  # per-key usage as last read, for /metrics
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None

    def cost(self, seconds: float) -> float:
        return seconds / 60 * self.price

    # ---- live sessions ------------------------------------------------------------------------

    def track(self, session: Any, *, api_key: str = "", embed_key: str = "", ip: str = "") -> None:
        """Meter a live session from now on (until untrack); its audio is charged to each subject given."""
        subjects = tuple((k, v) for k, v in zip(KINDS, (api_key, embed_key, ip), strict=True) if v)
        self.tracked[id(session)] = _Tracked(session, subjects, session.audio_seconds)

    def untrack(self, session: Any) -> None:
        """The session ended: its last audio is charged and written soon (idempotent)."""
        entry = self.tracked.pop(id(session), None)
        if entry is not None:
            self._collect(entry)
            self._count(entry)
            self.wake.set()

    def live_seconds(self) -> dict[str, float]:
        """Audio seconds so far of each live session of this process, by session id (its whole timeline)."""
        return {e.session.id: e.session.audio_seconds for e in self.tracked.values()}

    def _collect(self, entry: _Tracked) -> None:
        new = entry.session.audio_seconds - entry.base - entry.charged
        if new <= 0:
            return
        entry.charged += new
        day = self._today()
        for kind, subject in entry.subjects:
            slot = (kind, subject, day)
            self.pending[slot] = self.pending.get(slot, 0.0) + new

    @staticmethod
    def _count(entry: _Tracked) -> None:
        rx = entry.session.audio_seconds - entry.base
        tx = entry.session.relayed_seconds
        if rx > entry.counted_rx:
            metrics.AUDIO_RECEIVED.inc(rx - entry.counted_rx)
            entry.counted_rx = rx
        if tx > entry.counted_tx:
            metrics.AUDIO_RELAYED.inc(tx - entry.counted_tx)
            entry.counted_tx = tx

    def sync_metrics(self) -> None:
        """Bring the audio counters up to date with the running sessions (before a scrape, and each flush)."""
        for entry in self.tracked.values():
            self._count(entry)

    # ---- API keys' day limits -----------------------------------------------------------------

    def _today(self) -> str:
        if time.time() >= self.day_ends:
            now = dt.datetime.now(dt.UTC)
            day = now.strftime("%Y-%m-%d")
            if day != self.day:
                self.day = day
                self.day_used.clear()  # in place: the meters of running sessions hold this dict
            self.day_ends = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
        return self.day

    async def prime(self, client: ApiClient) -> None:
        """Before a key with a day limit is used: what the store says of its today (other processes' use)."""
        if not client.minutes_per_day:
            return
        day = self._today()
        stored = (await self.store.usage("api_key", day)).get(client.key_id, {}).get("today_s", 0.0)
        self.day_used[client.key_id] = max(self.day_used.get(client.key_id, 0.0), stored)

    def _limit_text(self, client: ApiClient) -> str:
        return (
            f"API key {client.name!r} has used its {client.minutes_per_day} minutes of audio for today. "
            "It renews at midnight UTC."
        )

    def check(self, client: ApiClient, seconds: float = 0.0) -> None:
        """Raise ApiQuotaError when `seconds` more audio would pass the key's minutes for today."""
        if not client.minutes_per_day:
            return
        self._today()
        if self.day_used.get(client.key_id, 0.0) + seconds > client.minutes_per_day * 60 + 0.001:
            raise ApiQuotaError(self._limit_text(client), seconds_to_midnight())

    def meter(self, client: ApiClient) -> Callable[[float], bool] | None:
        """For a live session under a key with a day limit: the per-frame charge (False: over the limit, the
        frame is not relayed), as RelaySession's `meter`; None when the key has no limit (nothing per frame)."""
        if not client.minutes_per_day:
            return None
        cap, key_id, used = client.minutes_per_day * 60, client.key_id, self.day_used

        def charge(seconds: float) -> bool:
            if time.time() >= self.day_ends:
                self._today()
            total = used.get(key_id, 0.0) + seconds
            if total > cap + 0.001:
                return False
            used[key_id] = total
            return True

        return charge

    def limit_message(self, client: ApiClient) -> tuple[str, str, float | None]:
        """(code, message, retry_after) for a session a key's day limit stopped (RelaySession's `on_limit`)."""
        return "quota_exceeded", self._limit_text(client), float(seconds_to_midnight())

    def live_meter(self, client: ApiClient, lease: Lease | None = None) -> LiveMeter:
        """The per-frame meter of a live session under `client`: the key's day limit, and the lease's limits
        when `lease` is given (pass it only when Quotas.meters_audio). Give RelaySession `meter=m.charge` (None
        when nothing needs counting: then nothing runs per frame) and `on_limit=m.on_limit`."""
        return LiveMeter(self, client, lease)

    async def charge(self, client: ApiClient, seconds: float, *, embed_key: str = "", check: bool = True) -> None:
        """A batch job of `seconds` of audio: raises ApiQuotaError when it would pass the key's minutes for today
        (unless `check` is False: the job is done and is charged whatever it cost), else charges it to the key and
        the client's IP and writes it now."""
        if check:
            self.check(client, seconds)
        if client.minutes_per_day:
            self.day_used[client.key_id] = self.day_used.get(client.key_id, 0.0) + seconds
        day = self._today()
        for kind, subject in zip(KINDS, (client.key_id, embed_key, client.ip), strict=True):
            if subject:
                self.pending[(kind, subject, day)] = self.pending.get((kind, subject, day), 0.0) + seconds
        await self.flush()

    # ---- writing ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what the sessions used since the last flush (one upsert), then refresh the per-key figures."""
        async with self.lock:
            for entry in list(self.tracked.values()):
                self._collect(entry)
            self.sync_metrics()
            # Taken out whole: what sessions and jobs add while the write is under way waits for the next flush.
            batch, self.pending = self.pending, {}
            rows: list[UsageRow] = [(k, s, d, secs, self.cost(secs)) for (k, s, d), secs in batch.items()]
            for i in range(0, len(rows), ROWS_PER_WRITE):
                try:
                    await self.store.add_usage(rows[i : i + ROWS_PER_WRITE])
                except STORE_ERRORS as exc:  # each write is all or nothing: the rest is put back for the next flush
                    for kind, subject, day, secs, _ in rows[i:]:
                        self.pending[(kind, subject, day)] = self.pending.get((kind, subject, day), 0.0) + secs
                    metrics.STORE_ERRORS.labels("usage").inc()
                    log.warning("usage_write_failed", extra=fields(rows=len(rows) - i, error=type(exc).__name__))
                    return
            try:
                await self._refresh_keys()
            except STORE_ERRORS as exc:
                metrics.STORE_ERRORS.labels("usage").inc()
                log.warning("usage_read_failed", extra=fields(error=type(exc).__name__))

    async def _refresh_keys(self) -> None:
        keys = await self.store.api_keys()
        if not keys:
            self.key_rows = []
            return
        used = await self.store.usage("api_key", self._today())
        empty = {"today_s": 0.0, "today_cost": 0.0, "total_s": 0.0, "total_cost": 0.0}
        self.key_rows = [{"id": k["id"], "name": k["name"], **used.get(k["id"], empty)} for k in keys]

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), FLUSH_SECONDS)
            self.wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug must not end metering for the process's lifetime
                log.exception("usage_flush_failed")

    async def start(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            await self._refresh_keys()
        self.task = asyncio.create_task(self._run(), name="usage")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.flush()


class LiveMeter:
    """A live session's limits in one per-frame call: the API key's minutes per day, then the client's quotas."""

    def __init__(self, usage: Usage, client: ApiClient, lease: Lease | None):
        self.client, self.usage, self.lease = client, usage, lease
        self.key = usage.meter(client)
        self.by_key = False  # the key's limit stopped the session (else the lease's)
        self.charge: Callable[[float], bool] | None
        if self.key is not None and lease is not None:
            self.charge = self._both
        else:
            self.charge = self.key or (lease.charge if lease is not None else None)
            self.by_key = self.key is not None

    def _both(self, seconds: float) -> bool:
        assert self.key is not None and self.lease is not None
        if not self.key(seconds):
            self.by_key = True
            return False
        return self.lease.charge(seconds)

    def on_limit(self) -> tuple[str, str, float | None]:
        if self.by_key or self.lease is None:
            return self.usage.limit_message(self.client)
        lease = self.lease
        return (lease.limit_code, *lease.quotas.limit_message(lease))
