"""Where sessions are kept and how their live events reach viewers.

One small interface, `Backend`, with two implementations (the encode/broadcaster shape):
  LocalBackend  SQLite in DATA_DIR (WAL, through aiosqlite) + in-process fan-out. One app process.
  RedisBackend  Redis hashes + one stream per session + pub/sub fan-out. Any number of app processes.
Both hand live messages to a per-process `Hub`, which keeps one bounded queue per connected viewer.

The no-loss rule: a final turn is written before anyone is told about it. `Recorder` (the relay's
SessionSink) runs one writer task per session that stores each final and only then publishes it, in the
order the recognizer produced the events, so a viewer that has seen a final knows it survives a crash.
Interim updates are published, never stored.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import logging
import random
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson

from .logs import fields
from .relay import SessionSink

log = logging.getLogger(__name__)

VIEWER_QUEUE = 64          # messages queued for one viewer before its oldest interim is dropped
VIEWER_BACKLOG = 2000      # finals queued for one viewer before it is cut off (it reconnects to a snapshot)
# A session stopped by a server restart (or a crash) is continued by its page's resume: viewers wait this
# long for it (the capture page gives up after 120 s, static/reconnect.js GIVE_UP_MS), then hear `ended`.
PAUSE_GRACE = 150.0
PAUSING_REASONS = ("server_restart", "interrupted")
WRITE_QUEUE = 512          # events a session's writer may lag behind (a stalled store) before interims drop
# A store outage (Redis down or unreachable): what the app holds, and how it waits.
FINALS_HELD = 2000         # finals one session may hold unstored (the store is down) before new ones are lost...
FINALS_HELD_BYTES = 1 << 20  # ...or this many bytes of their JSON (1 MiB: ~1,000 turns of ten words, an hour of speech)
STORE_RETRY = (0.2, 5.0)   # seconds: first and longest wait between tries of a down store (doubling, with jitter)
CLOSE_WAIT = 15.0          # seconds a session's end waits for its record to be written, while the store answers
SHUTDOWN_FLUSH = 2.0       # seconds the process gives unwritten records at exit before counting them lost
REDIS_TIMEOUT = 2.0        # seconds: connect and read timeout of every Redis call, so no request hangs on it
HEALTH_TIMEOUT = 0.5       # seconds /healthz waits for the store's answer
SESSION_FIELDS = ("id", "owner", "backend", "model", "sample_rate", "started_at", "ended_at", "duration",
                  "audio_seconds", "end_reason", "share_version", "share_token", "resume_nonce")


@dataclass(frozen=True, slots=True)
class Live:
    """One live message, encoded once per process and sent as is to every viewer."""
    kind: str                 # "interim", "final", "ended", "revoked", "paused" or "resumed"
    text: str                 # the JSON a viewer receives
    turn: int | None = None   # recognizer turn index (transcripts)
    seq: int | None = None    # position among the session's stored finals (finals)
    version: int | None = None  # revoked: links of a lower share version are retired (None: every link)

    @classmethod
    def decode(cls, text: str) -> "Live":
        msg = json.loads(text)
        if msg.get("type") == "transcript":
            return cls("final" if msg.get("final") else "interim", text, msg.get("turn"), msg.get("seq"))
        if msg.get("type") == "revoked":
            version = msg.get("share_version")
            return cls("revoked", text, version=version if isinstance(version, int) else None)
        return cls(msg.get("type", "?"), text)


def backoff(attempt: int, first: float = STORE_RETRY[0], cap: float = STORE_RETRY[1]) -> float:
    """Wait before try `attempt` (1, 2, ...): doubling from `first` up to `cap`, at a random point of its upper half (jitter)."""
    delay = min(cap, first * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


try:  # what a store raises when it cannot answer (the request gets a 503, a recorder holds its finals)
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - redis is a dependency
    RedisError = OSError
STORE_ERRORS = (RedisError, sqlite3.Error, OSError, asyncio.TimeoutError)


def _encode(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def live_transcript(event: dict[str, Any], seq: int | None = None) -> Live:
    """What viewers get of a transcript event: the text and times, not the word list."""
    final = bool(event.get("final"))
    msg = {"type": "transcript", "turn": event.get("turn"), "final": final, "text": event.get("text", ""),
           "start": event.get("start"), "end": event.get("end")}
    if final:
        msg["seq"] = seq
    return Live("final" if final else "interim", _encode(msg), event.get("turn"), seq)


def live_ended(reason: str, ended_at: float) -> Live:
    if reason in PAUSING_REASONS:  # the speaker's page resumes it: viewers wait instead of giving up
        return Live("paused", _encode({"type": "paused", "reason": reason}))
    return Live("ended", _encode({"type": "ended", "reason": reason, "ended_at": ended_at}))


REVOKED = _encode({"type": "revoked"})  # what a viewer gets of a revocation


def live_revoked(version: int | None = None) -> Live:
    """Links below share version `version` stop working ("New link", "Turn off link"); None: every link."""
    if version is None:
        return Live("revoked", REVOKED)
    return Live("revoked", _encode({"type": "revoked", "share_version": version}), version=version)


def live_resumed() -> Live:
    return Live("resumed", _encode({"type": "resumed"}))


# ---- viewers ------------------------------------------------------------------------------------


class Viewer:
    """One watching socket's queue. put() never blocks the publisher: a viewer that falls behind loses
    interim updates (a newer interim of the same turn replaces an unsent one; past VIEWER_QUEUE the oldest
    interim goes), never finals. One so far behind that VIEWER_BACKLOG finals wait is cut off.

    With `replay` (the store's finals from a seq on), a viewer fills gaps itself: when the live feed was
    down (a Redis outage) it is asked to catch_up(), and a final that skips a seq fetches the missing ones first."""

    __slots__ = ("send", "version", "items", "wake", "min_seq", "done_turn", "overflow", "closed", "paused_until",
                 "replay", "behind")

    def __init__(self, send: Callable[[str], Awaitable[None]], version: int | None = None,
                 replay: Callable[[int], Awaitable[list[Live]]] | None = None):
        self.send = send
        self.version = version    # the share version of the link it watches through (None: unknown)
        self.replay = replay
        self.behind = False       # the live feed was interrupted: fetch what it missed before going on
        self.items: deque[Live] = deque()
        self.wake = asyncio.Event()
        self.min_seq = 0          # finals below this were in the snapshot
        self.done_turn = -1       # interims of turns up to this one are stale
        self.overflow = False
        self.closed = False
        self.paused_until: float | None = None  # monotonic deadline while the session waits for its speaker

    def put(self, msg: Live) -> None:
        if self.closed:
            return
        if msg.kind == "revoked" and None not in (msg.version, self.version) and self.version >= msg.version:
            return  # it watches through the new link (or a later one): not retired
        items = self.items
        if msg.kind == "interim" and items and items[-1].kind == "interim" and items[-1].turn == msg.turn:
            items[-1] = msg
        else:
            items.append(msg)
            if len(items) > VIEWER_QUEUE:
                for i, item in enumerate(items):
                    if item.kind == "interim":
                        del items[i]
                        break
                else:
                    self.overflow = len(items) > VIEWER_BACKLOG
        self.wake.set()

    def catch_up(self) -> None:
        if self.replay is not None and not self.closed:
            self.behind = True
            self.wake.set()

    def _stale(self, msg: Live) -> bool:
        if msg.kind == "final":
            return msg.seq is not None and msg.seq < self.min_seq
        if msg.kind == "interim":
            return msg.turn is not None and msg.turn <= self.done_turn
        return False

    async def run(self) -> str:
        """Send until the session ends or the link is revoked; returns why it stopped ("not_resumed" when a
        paused session was not continued within PAUSE_GRACE)."""
        while True:
            if self.paused_until is None:
                await self.wake.wait()
            else:
                try:
                    await asyncio.wait_for(self.wake.wait(), self.paused_until - time.monotonic())
                except asyncio.TimeoutError:
                    return "not_resumed"
            self.wake.clear()
            if self.overflow:
                return "overflow"
            if self.behind and (why := await self._replay()):
                return why
            while self.items:
                msg = self.items.popleft()
                if self._stale(msg):
                    continue
                if msg.kind == "final" and self.replay is not None and (msg.seq or 0) > self.min_seq:
                    if why := await self._replay():  # a gap: the missing finals first, in order
                        return why
                    if self._stale(msg):
                        continue
                if why := await self._send(msg):
                    return why

    async def _send(self, msg: Live) -> str | None:
        await self.send(REVOKED if msg.kind == "revoked" else msg.text)
        if msg.kind == "final":
            self.min_seq = max(self.min_seq, (msg.seq or 0) + 1)
            if msg.turn is not None:
                self.done_turn = max(self.done_turn, msg.turn)
        elif msg.kind in ("ended", "revoked"):
            return msg.kind
        if msg.kind == "paused":
            self.paused_until = time.monotonic() + PAUSE_GRACE
        elif msg.kind in ("resumed", "final", "interim"):
            self.paused_until = None
        return None

    async def _replay(self) -> str | None:
        """Send the stored finals from min_seq on (and `ended` if it ended), then carry on live."""
        self.behind = False
        try:
            missed = await self.replay(self.min_seq)
        except STORE_ERRORS as exc:  # still down: the next catch_up() (the feed is back) tries again
            log.debug("viewer_replay_failed", extra=fields(error=type(exc).__name__))
            return None
        for msg in missed:
            if not self._stale(msg) and (why := await self._send(msg)):
                return why
        return None


class Hub:
    """This process's viewers, by session id."""

    def __init__(self) -> None:
        self.topics: dict[str, set[Viewer]] = {}

    def add(self, session_id: str, viewer: Viewer) -> None:
        self.topics.setdefault(session_id, set()).add(viewer)

    def remove(self, session_id: str, viewer: Viewer) -> None:
        viewer.closed = True
        group = self.topics.get(session_id)
        if group is not None:
            group.discard(viewer)
            if not group:
                del self.topics[session_id]

    def deliver(self, session_id: str, msg: Live) -> None:
        for viewer in self.topics.get(session_id, ()):
            viewer.put(msg)

    def catch_up(self) -> None:
        """The live feed was interrupted: every viewer fetches what it missed from the store."""
        for group in self.topics.values():
            for viewer in group:
                viewer.catch_up()

    def count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self.topics.get(session_id, ()))
        return sum(len(g) for g in self.topics.values())


# ---- the interface ------------------------------------------------------------------------------


class Backend(abc.ABC):
    """Storage of sessions and final turns, plus live fan-out to viewers (through self.hub)."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.held = 0                    # finals of this process's sessions not yet stored (the store is down)
        self.lost = 0                    # finals given up since start (held past FINALS_HELD, or at exit)
        self.writers: set[asyncio.Task] = set()   # recorders' writer tasks, which may outlive their session
        self.restored = asyncio.Event()  # set while the store answers; a fresh one is made when it stops
        self.restored.set()

    @property
    def available(self) -> bool:
        return self.restored.is_set()

    def store_down(self) -> None:
        if self.restored.is_set():
            self.restored = asyncio.Event()

    def store_up(self) -> None:
        self.restored.set()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def health(self) -> dict[str, Any]:
        """For /healthz; answers within HEALTH_TIMEOUT whatever the store does."""
        return {"store": "ok", "finals_held": self.held, "finals_lost": self.lost}

    async def finish_writers(self, timeout: float = SHUTDOWN_FLUSH) -> None:
        """At exit: give the records still being written `timeout` seconds, then count what is left as lost."""
        pending = {t for t in self.writers if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            if not task.done():
                task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def catch_up(self, session_id: str, seq: int) -> list[Live]:
        """What a viewer that has finals below `seq` missed: the later stored finals, then `ended` if it ended."""
        out = [live_transcript({**t, "final": True}, t["seq"]) for t in await self.get_turns(session_id) if t["seq"] >= seq]
        meta = await self.get_session(session_id)
        if meta is not None and not meta["live"]:
            out.append(live_ended(meta.get("end_reason") or "ended", meta.get("ended_at") or 0.0))
        return out

    async def stored_finals(self, session_id: str) -> int | None:
        """How many finals the session has stored (its next seq), to retry a write that may have landed;
        None where a repeated write is harmless."""
        return None

    @abc.abstractmethod
    async def create_session(self, meta: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any], live: Live) -> None:
        """Store the final turn durably, then publish `live`."""

    @abc.abstractmethod
    async def publish(self, session_id: str, live: Live) -> None:
        """Fan out without storing (interims, revocation)."""

    @abc.abstractmethod
    async def end_session(self, session_id: str, values: dict[str, Any], live: Live) -> None: ...

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    def has_viewers(self, session_id: str) -> bool:
        """Whether a live interim for this session can reach anyone. Viewers may be on other instances
        unless the fan-out is in-process, so the default is yes."""
        return True

    @abc.abstractmethod
    async def reopen_session(self, session_id: str) -> None:
        """A resumed session is live again (its page reconnected, maybe to a restarted server)."""

    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        """Atomically replace the session's resume nonce `expected` by `nonce` (spending the token that carries
        `expected`). True if replaced, False if the session has another nonce, None if it is not stored."""
        return None

    @abc.abstractmethod
    async def get_turns(self, session_id: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def set_share(self, session_id: str, version: int, token: str | None) -> None: ...

    @abc.abstractmethod
    async def purge(self, started_before: float) -> int:
        """Delete sessions started before this Unix time; returns how many."""

    async def recover(self) -> int:
        """At start-up: mark sessions left open by a crash as ended. Returns how many."""
        return 0


def _session_out(row: dict[str, Any]) -> dict[str, Any]:
    row = {k: row.get(k) for k in SESSION_FIELDS}
    row["live"] = row["ended_at"] is None
    return row


# ---- SQLite + in-process fan-out ----------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, owner TEXT, backend TEXT NOT NULL, model TEXT, sample_rate INTEGER,
    started_at REAL NOT NULL, ended_at REAL, duration REAL, audio_seconds REAL, end_reason TEXT,
    share_version INTEGER NOT NULL DEFAULT 0, share_token TEXT, resume_nonce TEXT);
CREATE INDEX IF NOT EXISTS sessions_owner ON sessions (owner, started_at);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, turn INTEGER, text TEXT NOT NULL,
    start REAL, "end" REAL, words TEXT NOT NULL, PRIMARY KEY (session_id, seq)) WITHOUT ROWID;
"""


FINALS_PER_WRITE = 500  # 7 parameters a row: well under SQLite's 32,766 per statement
FINALS_WRITE_INTERVAL = 0.02  # seconds; what a final can wait for its write (and its viewers for it) under load


@functools.lru_cache(maxsize=64)
def _insert_turns(rows: int) -> str:
    return ('INSERT OR REPLACE INTO turns (session_id, seq, turn, text, start, "end", words) VALUES '
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows))


class LocalBackend(Backend):
    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.db = None
        self.finals: list[tuple[tuple, Live, asyncio.Future]] = []   # waiting for the next write
        self.finals_writer: asyncio.Task | None = None

    async def start(self) -> None:
        import aiosqlite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every statement is its own transaction, committed when it returns. WAL with
        # synchronous=NORMAL survives a killed process (the OS has the pages); only power loss can undo
        # the last commits.
        logging.getLogger("aiosqlite").setLevel(logging.INFO)  # it logs every statement at debug level
        self.db = await aiosqlite.connect(self.path, isolation_level=None)
        self.db.row_factory = aiosqlite.Row
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA busy_timeout=5000")
        await self.db.executescript(SCHEMA)
        async with self.db.execute("PRAGMA table_info(sessions)") as cur:
            if "resume_nonce" not in {r["name"] for r in await cur.fetchall()}:  # a file of an older version
                await self.db.execute("ALTER TABLE sessions ADD COLUMN resume_nonce TEXT")

    async def close(self) -> None:
        if self.finals_writer is not None:
            with contextlib.suppress(Exception):
                await self.finals_writer
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def create_session(self, meta: dict[str, Any]) -> None:
        cols = [k for k in SESSION_FIELDS if k in meta]
        await self.db.execute(f"INSERT INTO sessions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [meta[k] for k in cols])

    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any], live: Live) -> None:
        """Store, then publish. Finals that arrive while a write runs go out together in the next one: one
        statement, one commit. A commit per final cost more CPU than relaying the audio (docs/benchmarks.md)."""
        row = (session_id, seq, turn.get("turn"), turn.get("text", ""), turn.get("start"), turn.get("end"),
               orjson.dumps(turn.get("words") or []).decode())
        stored = asyncio.get_running_loop().create_future()
        self.finals.append((row, live, stored))
        if self.finals_writer is None or self.finals_writer.done():
            self.finals_writer = asyncio.create_task(self._write_finals())
        await stored

    async def _write_finals(self) -> None:
        while self.finals:
            started = time.monotonic()
            batch = self.finals[:FINALS_PER_WRITE]
            del self.finals[:FINALS_PER_WRITE]
            try:
                # One multi-row statement is one transaction in autocommit mode: all or nothing, and nothing
                # else on the connection can land inside it.
                await self.db.execute(_insert_turns(len(batch)), [v for row, _, _ in batch for v in row])
            except Exception as exc:  # each waiter retries its own final (Recorder._write)
                for _, _, stored in batch:
                    if not stored.done():
                        stored.set_exception(exc)
                continue
            for row, live, stored in batch:
                self.hub.deliver(row[0], live)
                if not stored.done():
                    stored.set_result(None)
            # Writes at most every FINALS_WRITE_INTERVAL: under load the finals of the next one share it. A final
            # after a quiet spell finds no writer and goes out at once.
            await asyncio.sleep(started + FINALS_WRITE_INTERVAL - time.monotonic())

    async def publish(self, session_id: str, live: Live) -> None:
        self.hub.deliver(session_id, live)

    async def end_session(self, session_id: str, values: dict[str, Any], live: Live) -> None:
        cols = [k for k in values if k in SESSION_FIELDS]
        await self.db.execute(f"UPDATE sessions SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                              [values[c] for c in cols] + [session_id])
        self.hub.deliver(session_id, live)

    def has_viewers(self, session_id: str) -> bool:
        return session_id in self.hub.topics  # the fan-out is in this process: it knows (empty groups are removed)

    async def reopen_session(self, session_id: str) -> None:
        await self.db.execute("UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = ?", (session_id,))

    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        cur = await self.db.execute("UPDATE sessions SET resume_nonce = ? WHERE id = ? AND resume_nonce = ?",
                                    (nonce, session_id, expected))
        if cur.rowcount:
            return True
        async with self.db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)) as cur:
            return False if await cur.fetchone() else None

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)) as cur:
            row = await cur.fetchone()
        return _session_out(dict(row)) if row else None

    async def get_turns(self, session_id: str) -> list[dict[str, Any]]:
        async with self.db.execute('SELECT seq, turn, text, start, "end", words FROM turns WHERE session_id = ? ORDER BY seq',
                                   (session_id,)) as cur:
            rows = await cur.fetchall()
        return [{"seq": r["seq"], "turn": r["turn"], "text": r["text"], "start": r["start"], "end": r["end"],
                 "words": json.loads(r["words"])} for r in rows]

    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]:
        async with self.db.execute("SELECT * FROM sessions WHERE owner = ? ORDER BY started_at DESC LIMIT ?",
                                   (owner, limit)) as cur:
            rows = await cur.fetchall()
        return [_session_out(dict(r)) for r in rows]

    async def set_share(self, session_id: str, version: int, token: str | None) -> None:
        await self.db.execute("UPDATE sessions SET share_version = ?, share_token = ? WHERE id = ?",
                              (version, token, session_id))

    async def purge(self, started_before: float) -> int:
        # Open sessions are kept whatever their age: their speaker may still be talking.
        async with self.db.execute("SELECT id FROM sessions WHERE started_at < ? AND ended_at IS NOT NULL",
                                   (started_before,)) as cur:
            ids = [r["id"] for r in await cur.fetchall()]
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            marks = ", ".join("?" * len(chunk))
            await self.db.execute("BEGIN")
            await self.db.execute(f"DELETE FROM turns WHERE session_id IN ({marks})", chunk)
            await self.db.execute(f"DELETE FROM sessions WHERE id IN ({marks})", chunk)
            await self.db.execute("COMMIT")
        return len(ids)

    async def recover(self) -> int:
        # One process owns this file, so at start-up no session can still be running.
        cur = await self.db.execute(
            "UPDATE sessions SET end_reason = 'interrupted', ended_at = COALESCE("
            "(SELECT started_at + MAX(\"end\") FROM turns WHERE session_id = sessions.id), started_at), "
            "duration = COALESCE((SELECT MAX(\"end\") FROM turns WHERE session_id = sessions.id), 0) "
            "WHERE ended_at IS NULL")
        return cur.rowcount


# ---- Redis --------------------------------------------------------------------------------------


_CLAIM_RESUME = """
local current = redis.call('HGET', KEYS[1], 'resume_nonce')
if current == ARGV[1] then redis.call('HSET', KEYS[1], 'resume_nonce', ARGV[2]) return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return 0
"""


class RedisBackend(Backend):
    """Keys (prefix `cr:`): s:<id> hash (session), t:<id> stream (final turns, field d = JSON),
    sessions zset (by start time, for retention), o:<owner> zset (the owner's sessions), and channel
    live:<id>. Every process holds one pattern subscription to live:*, made before it serves, so a viewer
    needs no per-session subscribe round trip and cannot miss a message published after it registered.

    Redis down: every call fails within REDIS_TIMEOUT (no retry loop inside the client); the listener retries
    with backoff (STORE_RETRY) and, once subscribed again, has every viewer here fetch what it missed."""

    def __init__(self, url: str, prefix: str = "cr:"):
        super().__init__()
        self.url = url
        self.p = prefix
        self.redis = None
        self.pubsub = None
        self.listener: asyncio.Task | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        # One immediate retry: a pooled connection that died with a restarted Redis reconnects; more would
        # only make a request wait (the client's default is ten, about 4 s against a stopped Redis).
        self.redis = aioredis.from_url(self.url, decode_responses=True, socket_timeout=REDIS_TIMEOUT,
                                       socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 1))
        await self.redis.ping()  # fail at start-up, with a clear log, rather than at the first capture
        await self._subscribe()
        self.listener = asyncio.create_task(self._listen(), name="redis-live-listener")

    async def _subscribe(self) -> None:
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        await self.pubsub.psubscribe(f"{self.p}live:*")
        # Wait for the confirmation: from here on every PUBLISH reaches this process.
        deadline = time.monotonic() + REDIS_TIMEOUT
        while True:
            msg = await self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError("redis did not confirm the live:* subscription")
            if msg["type"] == "psubscribe":
                return

    async def _drop_pubsub(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None

    async def _listen(self) -> None:
        prefix_len = len(f"{self.p}live:")
        failures = 0
        while True:
            try:
                if self.pubsub is None:
                    await self._subscribe()
                    log.info("redis_listener_restored", extra=fields(tries=failures))
                    failures = 0
                    self.store_up()
                    self.hub.catch_up()  # what was published while we were away is in the streams
                async for msg in self.pubsub.listen():
                    if msg["type"] != "pmessage":
                        continue
                    session_id = msg["channel"][prefix_len:]
                    if session_id in self.hub.topics:  # decode only what someone here watches
                        self.hub.deliver(session_id, Live.decode(msg["data"]))
                # listen() also ends, at once and without an error, when nothing is subscribed: never loop on it
                raise ConnectionError("the live:* subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost or refused: wait, then subscribe again
                failures += 1
                if failures == 1:
                    log.warning("redis_listener_lost", extra=fields(error=type(exc).__name__))
                self.store_down()
                await self._drop_pubsub()
                await asyncio.sleep(backoff(failures))

    async def close(self) -> None:
        if self.listener:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.listener
        await self._drop_pubsub()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def health(self) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.redis.ping(), HEALTH_TIMEOUT)
            store = "ok"
        except Exception:
            store = "unavailable"
        return {"store": store, "live": "ok" if self.pubsub is not None else "reconnecting",
                "finals_held": self.held, "finals_lost": self.lost}

    def _k(self, kind: str, session_id: str) -> str:
        return f"{self.p}{kind}:{session_id}"

    async def create_session(self, meta: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("s", meta["id"]), mapping={k: json.dumps(meta[k]) for k in SESSION_FIELDS if k in meta})
            pipe.zadd(f"{self.p}sessions", {meta["id"]: meta["started_at"]})
            if meta.get("owner"):
                pipe.zadd(self._k("o", meta["owner"]), {meta["id"]: meta["started_at"]})
            await pipe.execute()

    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any], live: Live) -> None:
        # MULTI: the stream entry exists before any process hears of it.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._k("t", session_id), {"seq": seq, "d": json.dumps(turn, ensure_ascii=False)})
            pipe.publish(self._k("live", session_id), live.text)
            await pipe.execute()

    async def publish(self, session_id: str, live: Live) -> None:
        await self.redis.publish(self._k("live", session_id), live.text)

    async def end_session(self, session_id: str, values: dict[str, Any], live: Live) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("s", session_id), mapping={k: json.dumps(v) for k, v in values.items() if k in SESSION_FIELDS})
            pipe.publish(self._k("live", session_id), live.text)
            await pipe.execute()

    @staticmethod
    def _meta(raw: dict[str, str]) -> dict[str, Any] | None:
        if not raw or "id" not in raw:
            return None
        return _session_out({k: json.loads(v) for k, v in raw.items()})

    async def reopen_session(self, session_id: str) -> None:
        await self.redis.hset(self._k("s", session_id), mapping={"ended_at": "null", "end_reason": "null"})

    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        # One script: compare and set cannot interleave with another instance's claim.
        result = await self.redis.eval(_CLAIM_RESUME, 1, self._k("s", session_id), json.dumps(expected), json.dumps(nonce))
        return None if result < 0 else bool(result)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        return self._meta(await self.redis.hgetall(self._k("s", session_id)))

    async def stored_finals(self, session_id: str) -> int | None:
        last = await self.redis.xrevrange(self._k("t", session_id), count=1)
        return int(last[0][1]["seq"]) + 1 if last else 0

    async def catch_up(self, session_id: str, seq: int) -> list[Live]:
        # From the stream's end back to `seq`: a viewer usually missed the last few finals of a long session.
        key, out, top = self._k("t", session_id), [], "+"
        while True:
            page = await self.redis.xrevrange(key, max=top, min="-", count=100)
            older = [(sid, e) for sid, e in page if int(e["seq"]) >= seq]
            out.extend(older)
            if len(older) < len(page) or len(page) < 100:
                break
            top = f"({page[-1][0]}"
        lives = []
        for _, entry in reversed(out):
            turn = json.loads(entry["d"])
            lives.append(live_transcript({**turn, "final": True}, int(entry["seq"])))
        meta = await self.get_session(session_id)
        if meta is not None and not meta["live"]:
            lives.append(live_ended(meta.get("end_reason") or "ended", meta.get("ended_at") or 0.0))
        return lives

    async def get_turns(self, session_id: str) -> list[dict[str, Any]]:
        out = []
        for _, entry in await self.redis.xrange(self._k("t", session_id)):
            turn = json.loads(entry["d"])
            turn["seq"] = int(entry["seq"])
            out.append(turn)
        return out

    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]:
        ids = await self.redis.zrevrange(self._k("o", owner), 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(self._k("s", session_id))
            rows = await pipe.execute() if ids else []
        return [m for m in map(self._meta, rows) if m]

    async def set_share(self, session_id: str, version: int, token: str | None) -> None:
        await self.redis.hset(self._k("s", session_id), mapping={"share_version": json.dumps(version),
                                                                 "share_token": json.dumps(token)})

    async def purge(self, started_before: float) -> int:
        removed = 0
        for session_id in await self.redis.zrangebyscore(f"{self.p}sessions", "-inf", f"({started_before}"):
            meta = await self.get_session(session_id)
            if meta is not None and meta["live"] and meta["started_at"] > started_before - 86400:
                # Open sessions are kept, unless a day past the cut-off: then their instance died
                # without ending them (Redis has no single owner to mark them at start-up).
                continue
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._k("s", session_id), self._k("t", session_id))
                pipe.zrem(f"{self.p}sessions", session_id)
                if meta and meta.get("owner"):
                    pipe.zrem(self._k("o", meta["owner"]), session_id)
                await pipe.execute()
            removed += 1
        return removed


def make_backend(settings) -> Backend:
    if settings.redis_url:
        return RedisBackend(settings.redis_url)
    return LocalBackend(Path(settings.data_dir) / "sessions.sqlite3")


# ---- the relay's sink ---------------------------------------------------------------------------

@dataclass(slots=True)
class _Final:
    turn: dict[str, Any]
    size: int      # bytes of its JSON, for FINALS_HELD_BYTES


@dataclass(slots=True)
class _End:
    values: dict[str, Any]
    live: Live


class Recorder(SessionSink):
    """Records one capture session and fans its events out. event() only queues; one writer task per
    session stores each final before publishing it, in the recognizer's order. The speaker's captions never
    wait on it.

    While the store is down the writer holds the session's finals (at most FINALS_HELD, FINALS_HELD_BYTES),
    tries again with backoff and writes them in order once it answers; finals past the bound are lost,
    counted (/healthz), logged (`finals_lost`) and told to the page (a `notice`), never silently. Interims
    are dropped meanwhile. A session that ends during the outage is closed at once; its writer goes on in
    the background until the store is back or the process exits (Backend.finish_writers)."""

    def __init__(self, backend: Backend, mint: Callable[[str, int], str], owner: str | None):
        self.backend = backend
        self.mint = mint
        self.owner = owner
        self.session = None                  # the RelaySession: its page gets our notices
        self.resume_nonce: str | None = None   # recorded with a new session: its first resume token carries it
        self.session_id: str | None = None
        self.started_at = 0.0
        self.queue: deque[Any] = deque()     # interim events (dicts), _Final, then one _End
        self.wake = asyncio.Event()
        self.writer: asyncio.Task | None = None
        self.seq = 0                         # the next final's seq: a final's place among the stored ones
        self.held = 0                        # finals queued and not yet stored, and their bytes
        self.held_bytes = 0
        self.lost = 0                        # finals lost in the current outage
        self.recovering = False              # the store came back: held finals are being written
        self.flushed = 0                     # ...this many so far
        self.stalled = asyncio.Event()       # set while the store fails this session's writes
        self.ending = False

    async def opened(self, session) -> dict[str, Any]:
        self.session = session
        if getattr(session, "resumed", False):
            reopened = await self._reopen(session)
            if reopened is not None:
                return reopened
        self.session_id = session.id
        self.started_at = time.time()
        token = self.mint(session.id, 0)
        meta = {"id": session.id, "owner": self.owner, "backend": session.settings.backend,
                "model": session.settings.model, "sample_rate": session.params.sample_rate,
                "started_at": self.started_at, "share_version": 0, "share_token": token,
                "resume_nonce": self.resume_nonce}
        try:
            await self.backend.create_session(meta)
        except Exception as exc:
            log.error("session_record_failed", extra=fields(session=session.id, error=repr(exc)))
            self.session_id = None
            return {}
        self._start_writer()
        return {"share_url": f"/s/{token}"}

    async def _reopen(self, session) -> dict[str, Any] | None:
        """Continue the stored record of a resumed session: same share link, finals numbered on."""
        try:
            meta = await self.backend.get_session(session.id)
            if meta is None:
                return None
            self.seq = len(await self.backend.get_turns(session.id))
            await self.backend.reopen_session(session.id)
            await self.backend.publish(session.id, live_resumed())  # viewers waiting since the pause follow on
        except Exception as exc:
            log.error("session_reopen_failed", extra=fields(session=session.id, error=repr(exc)))
            return None
        self.session_id, self.started_at = session.id, meta["started_at"]
        self._start_writer()
        return {"share_url": f"/s/{meta['share_token']}"} if meta.get("share_token") else {}

    def _start_writer(self) -> None:
        self.writer = asyncio.create_task(self._write(), name=f"recorder-{self.session_id}")
        self.backend.writers.add(self.writer)
        self.writer.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task) -> None:
        self.backend.writers.discard(task)
        failed = not task.cancelled() and task.exception() is not None
        if failed:
            log.error("recorder_failed", extra=fields(session=self.session_id, error=repr(task.exception())))
        if self.held:  # stopped at exit (or by a bug) with finals unwritten
            held, self.held, self.held_bytes = self.held, 0, 0
            self.backend.held -= held
            self._lose(held, "error" if failed else "exit")
        if self.queue and isinstance(self.queue[-1], _End):
            log.error("session_end_record_failed", extra=fields(session=self.session_id))

    async def resume_state(self, session_id: str) -> dict[str, Any] | None:
        """Where a stored session stands, for a page that reconnects after a server restart."""
        meta = await self.backend.get_session(session_id)
        if meta is None:
            return None
        turns = await self.backend.get_turns(session_id)
        numbered = [t["turn"] for t in turns if isinstance(t.get("turn"), int)]
        last_end = max((t["end"] for t in turns if isinstance(t.get("end"), (int, float))), default=0.0)
        return {"turns": max(numbered) + 1 if numbered else len(turns),
                "offset_s": max(meta.get("audio_seconds") or 0.0, last_end),
                "reason": meta.get("end_reason"), "owner": meta.get("owner")}

    def event(self, event: dict[str, Any]) -> None:
        if self.writer is None or self.ending:
            return
        queue = self.queue
        if event["final"]:
            turn = {"turn": event.get("turn"), "text": event.get("text", ""), "start": event.get("start"),
                    "end": event.get("end"), "words": event.get("words") or []}
            size = len(orjson.dumps(turn))
            if self.held >= FINALS_HELD or self.held_bytes + size > FINALS_HELD_BYTES:
                return self._lose(1, "held_full")
            self.held += 1
            self.held_bytes += size
            self.backend.held += 1
            queue.append(_Final(turn, size))
        elif (len(queue) >= WRITE_QUEUE or self.stalled.is_set() or not self.backend.available
              or not self.backend.has_viewers(self.session_id)):
            return  # interims are only for live viewers, and expendable when the store is stalled or down
        else:
            queue.append(event)
        self.wake.set()

    def _lose(self, count: int, why: str) -> None:
        first = self.lost == 0
        self.lost += count
        self.backend.lost += count
        log.error("finals_lost", extra=fields(session=self.session_id, count=count, lost=self.lost, why=why))
        if first or why != "held_full":
            self._notice()

    def _notice(self) -> None:
        """Tell the speaker's page how many finals its recording lacks (its own captions are all there)."""
        out = getattr(self.session, "out", None)
        if out is not None:
            out.put({"type": "notice", "code": "finals_lost", "lost": self.lost,
                     "message": f"The session store was unavailable: {self.lost} caption line(s) could not be "
                                "saved to the recording or the share link. Live captions continue."})

    async def _write(self) -> None:
        backend, session_id = self.backend, self.session_id
        failures = 0
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            item = self.queue[0]
            if isinstance(item, dict):  # an interim: a lost one is replaced by the next
                self.queue.popleft()
                if not failures:
                    with contextlib.suppress(Exception):
                        await backend.publish(session_id, live_transcript(item))
                continue
            try:
                if isinstance(item, _Final):
                    seq = self.seq
                    # After a failure the write may have landed (only its reply was lost): never store it twice.
                    if not (failures and (stored := await backend.stored_finals(session_id)) is not None and stored > seq):
                        await backend.append_final(session_id, seq, item.turn, live_transcript({**item.turn, "final": True}, seq))
                else:
                    await backend.end_session(session_id, item.values, item.live)
            except STORE_ERRORS as exc:
                failures += 1
                if failures == 1:
                    self.stalled.set()
                    log.warning("store_unavailable", extra=fields(session=session_id, held=self.held, error=type(exc).__name__))
                # Back off; wake early when the backend hears the store is back (its listener resubscribed).
                restored, delay = backend.restored, backoff(failures)
                if restored.is_set():
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(restored.wait(), delay)
                continue
            self.queue.popleft()
            if failures:
                log.info("store_restored", extra=fields(session=session_id, tries=failures, held=self.held))
                failures = 0
                self.stalled.clear()
                self.recovering, self.flushed = True, 0
            if isinstance(item, _End):
                log.info("session_recorded", extra=fields(session=session_id, finals=self.seq, reason=item.values["end_reason"]))
                return
            self.seq += 1
            self.held -= 1
            self.held_bytes -= item.size
            backend.held -= 1
            if self.recovering:
                self.flushed += 1
                if self.held == 0:
                    log.info("finals_flushed", extra=fields(session=session_id, flushed=self.flushed, lost=self.lost))
                    if self.lost:
                        self._notice()  # the outage's final count
                    self.recovering, self.lost = False, 0

    async def closed(self, session, reason: str) -> None:
        if self.writer is None:
            return
        ended_at = time.time()
        values = {"ended_at": ended_at, "duration": round(ended_at - self.started_at, 3),
                  "audio_seconds": round(session.audio_seconds, 3), "end_reason": reason}
        self.ending = True
        self.queue.append(_End(values, live_ended(reason, ended_at)))
        self.wake.set()
        # The page hears `closed` once the record is written, or at once if the store is down.
        stalled = asyncio.create_task(self.stalled.wait())
        try:
            await asyncio.wait({self.writer, stalled}, timeout=CLOSE_WAIT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stalled.cancel()
        if not self.writer.done():
            log.warning("session_record_pending", extra=fields(session=self.session_id, held=self.held))
