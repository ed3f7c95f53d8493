"""Where sessions and their final turns are kept: one interface, `SessionStore`, chosen by URL (make_store):
  sqlite:///PATH  SqliteStore: one file (WAL, through aiosqlite). One app process; the default, DATA_DIR/sessions.sqlite3.
  redis://…       RedisStore: hashes and one stream per session. Any number of app processes (REDIS_URL).
  memory://       MemoryStore: this process's dicts, gone at exit. For tests.
A store only stores: live fan-out is webapp/broker.py, and the rule that ties them (a final is stored before
anyone hears of it) is webapp/recorder.py.
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
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STORE_RETRY = (0.2, 5.0)  # seconds: first and longest wait between tries of a down store (doubling, with jitter)
REDIS_TIMEOUT = 2.0  # seconds: connect and read timeout of every Redis call, so no request hangs on it
HEALTH_TIMEOUT = 0.5  # seconds /healthz waits for the store's answer
SESSION_FIELDS = (
    "id",
    "owner",
    "backend",
    "model",
    "sample_rate",
    "started_at",
    "ended_at",
    "duration",
    "audio_seconds",
    "end_reason",
    "share_version",
    "share_token",
    "resume_nonce",
    "cost",  # what the session's audio cost (COST_PER_MINUTE), written with audio_seconds at its end
    "name",
    "short_id",
)
API_KEY_FIELDS = ("id", "name", "digest", "created_at", "minutes_per_day", "revoked_at")
UsageRow = tuple[str, str, str, float, float]  # (kind, subject, UTC day "YYYY-MM-DD", seconds, cost) to add
PREVIEW_CHARS = 120  # the first words of a session shown in the list
SEARCH_SESSIONS = 200  # a search looks through the owner's newest sessions only: bounded work
SEARCH_TURNS = 20000  # ...and at most this many finals of them (Redis and memory; SQLite reads the owner's rows)


def like_pattern(query: str) -> str:
    """A LIKE pattern matching `query` anywhere, its % _ and \\ taken literally (ESCAPE '\\')."""
    return "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _preview(texts: list[str]) -> str:
    text = " ".join(t.strip() for t in texts if t and t.strip())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1].rsplit(" ", 1)[0] + "…"


def backoff(attempt: int, first: float = STORE_RETRY[0], cap: float = STORE_RETRY[1]) -> float:
    """Wait before try `attempt` (1, 2, ...): doubling from `first` up to `cap`, at a random point of its upper half (jitter)."""
    delay = min(cap, first * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


# What a store raises when it cannot answer (the request gets a 503, a recorder holds its finals).
STORE_ERRORS = (RedisError, sqlite3.Error, OSError, asyncio.TimeoutError)


def redis_client(url: str):
    """A client whose every call fails within REDIS_TIMEOUT while Redis is down (no retry loop inside it)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One immediate retry: a pooled connection that died with a restarted Redis reconnects; more would
    # only make a request wait (the client's default is ten, about 4 s against a stopped Redis).
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )


# ---- the interface ------------------------------------------------------------------------------


class SessionStore(abc.ABC):
    """Sessions (a dict of SESSION_FIELDS, plus `live`) and their final turns, numbered by `seq` from 0."""

    async def start(self) -> None:  # noqa: B027 - optional hook: only backends with a connection need it
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook, as start
        pass

    async def health(self) -> dict[str, Any]:
        """For /healthz; answers within HEALTH_TIMEOUT whatever the store does."""
        return {"store": "ok"}

    @abc.abstractmethod
    async def create_session(self, meta: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any]) -> None:
        """Store the final turn durably: when this returns, it survives a crash."""

    async def stored_finals(self, session_id: str) -> int | None:
        """How many finals the session has stored (its next seq), to retry a write that may have landed;
        None where a repeated write is harmless."""
        return None

    @abc.abstractmethod
    async def end_session(self, session_id: str, values: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def reopen_session(self, session_id: str) -> None:
        """A resumed session is live again (its page reconnected, maybe to a restarted server)."""

    @abc.abstractmethod
    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        """Atomically replace the session's resume nonce `expected` by `nonce` (spending the token that carries
        `expected`). True if replaced, False if the session has another nonce, None if it is not stored."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    # text rules (issue 19)
    @abc.abstractmethod
    async def get_rules(self, session_id: str) -> dict[str, Any] | None:
        """The session's text rules as set_rules stored them (webapp/textrules.py's to_dict), or None."""

    @abc.abstractmethod
    async def set_rules(self, session_id: str, rules: dict[str, Any]) -> bool:
        """Replace the session's text rules; False if the session is not stored."""

    @abc.abstractmethod
    async def get_turns(self, session_id: str) -> list[dict[str, Any]]: ...

    async def finals_from(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        """The stored finals from `seq` on (what a viewer missed while the live feed was down)."""
        return [t for t in await self.get_turns(session_id) if t["seq"] >= seq]

    @abc.abstractmethod
    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]: ...

    # api keys and usage (issue 20)
    # A relay API key is a dict of API_KEY_FIELDS (its `digest` is the SHA-256 of the key: the key is never stored).
    # Usage is audio seconds and cost per (kind, subject, UTC day): kinds api_key, embed_key, ip.

    @abc.abstractmethod
    async def add_api_key(self, key: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def api_keys(self) -> list[dict[str, Any]]:
        """Every key ever made, revoked ones too, oldest first."""

    @abc.abstractmethod
    async def api_key_by_digest(self, digest: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str, when: float) -> bool:
        """Mark the key revoked; False when it is unknown or was revoked already."""

    @abc.abstractmethod
    async def add_usage(self, rows: list[UsageRow]) -> None:
        """Add each row's seconds and cost to its subject's day; all or nothing for up to 500 rows."""

    @abc.abstractmethod
    async def usage(self, kind: str, day: str) -> dict[str, dict[str, float]]:
        """subject -> {today_s, today_cost, total_s, total_cost} for every subject of `kind`; `day` is today."""

    @abc.abstractmethod
    async def set_share(self, session_id: str, version: int, token: str | None) -> None: ...

    # outputs (issue 19): each caption output's record (webapp/outputs/manager.py): its kind, URL, secrets and
    # cursor (finals delivered, its own sequence number, what was sent early), as one JSON object per output.

    @abc.abstractmethod
    async def add_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def update_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> bool:
        """Replace a stored output's record; False (and nothing written) if it was deleted meanwhile."""

    @abc.abstractmethod
    async def get_outputs(self, session_id: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def delete_output(self, session_id: str, output_id: str) -> bool: ...

    @abc.abstractmethod
    async def output_sessions(self) -> list[str]:
        """Sessions that have outputs (at start-up: which may have finals left to deliver)."""

    async def output_finals(self, session_id: str, seq: int, limit: int) -> list[dict[str, Any]]:
        """At most `limit` stored finals from `seq` on, in order (an output's next deliveries)."""
        return (await self.finals_from(session_id, seq))[:limit]

    async def lease_outputs(self, session_id: str, holder: str, ttl: float) -> bool:
        """Take or renew the right to deliver this session's outputs for `ttl` seconds. One process owns a
        SQLite file or a memory store, so only Redis (several processes) has to decide."""
        return True

    async def release_outputs(self, session_id: str, holder: str) -> None:  # noqa: B027 - as lease_outputs
        pass

    @abc.abstractmethod
    async def purge(self, started_before: float) -> int:
        """Delete sessions started before this Unix time; returns how many."""

    # session management (issue 21)

    @abc.abstractmethod
    async def rename_session(self, session_id: str, name: str | None) -> None:
        """Set (or, with None, clear) the session's name."""

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> bool:
        """Delete the session, its finals, its outputs and its short link; False if it was not stored."""

    @abc.abstractmethod
    async def search_sessions(self, owner: str, query: str, limit: int = 200) -> list[dict[str, Any]]:
        """The owner's sessions (newest first, among their SEARCH_SESSIONS newest) whose name or finals contain
        `query`, case-insensitively, taken literally (no wildcards)."""

    @abc.abstractmethod
    async def previews(self, session_ids: list[str]) -> dict[str, str]:
        """The first words (up to PREVIEW_CHARS) of each session that has finals."""

    @abc.abstractmethod
    async def session_by_short(self, short_id: str) -> dict[str, Any] | None:
        """The session whose current short link is `short_id`."""

    @abc.abstractmethod
    async def set_short(self, session_id: str, short_id: str | None) -> None:
        """Replace the session's short link (None: none); the old one stops resolving."""

    async def recover(self) -> int:
        """At start-up: mark sessions left open by a crash as ended. Returns how many."""
        return 0


def _session_out(row: dict[str, Any]) -> dict[str, Any]:
    row = {k: row.get(k) for k in SESSION_FIELDS}
    row["live"] = row["ended_at"] is None
    return row


def _add_usage(out: dict[str, dict[str, float]], subject: str, today: bool, secs: float, cost: float) -> None:
    entry = out.setdefault(subject, {"today_s": 0.0, "today_cost": 0.0, "total_s": 0.0, "total_cost": 0.0})
    entry["total_s"] += secs
    entry["total_cost"] += cost
    if today:
        entry["today_s"] += secs
        entry["today_cost"] += cost


def store_url(settings) -> str:
    """REDIS_URL if set, else the SQLite file in DATA_DIR."""
    return settings.redis_url or f"sqlite:///{Path(settings.data_dir).resolve() / 'sessions.sqlite3'}"


def make_store(url: str) -> SessionStore:
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    if scheme == "sqlite":
        return SqliteStore(url[len("sqlite:///") :])  # sqlite:///relative, sqlite:////absolute (SQLAlchemy's form)
    if scheme == "memory":
        return MemoryStore()
    raise ValueError(f"no session store for {scheme!r} URLs")


# ---- memory -------------------------------------------------------------------------------------


class MemoryStore(SessionStore):
    """This process's dicts: the contract of the others without their I/O (tests)."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.turns: dict[str, dict[int, dict[str, Any]]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.usage_rows: dict[tuple[str, str, str], list[float]] = {}
        self.outputs: dict[str, dict[str, dict[str, Any]]] = {}

    async def create_session(self, meta: dict[str, Any]) -> None:
        self.sessions[meta["id"]] = {k: meta.get(k) for k in SESSION_FIELDS}

    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any]) -> None:
        self.turns.setdefault(session_id, {})[seq] = orjson.loads(orjson.dumps(turn))  # a copy, as stored

    async def end_session(self, session_id: str, values: dict[str, Any]) -> None:
        if session_id in self.sessions:
            self.sessions[session_id].update({k: v for k, v in values.items() if k in SESSION_FIELDS})

    async def reopen_session(self, session_id: str) -> None:
        if session_id in self.sessions:
            self.sessions[session_id].update(ended_at=None, end_reason=None)

    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        meta = self.sessions.get(session_id)
        if meta is None:
            return None
        if meta["resume_nonce"] != expected:
            return False
        meta["resume_nonce"] = nonce
        return True

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        meta = self.sessions.get(session_id)
        return _session_out(meta) if meta is not None else None

    # text rules (issue 19): beside the session's fields (get_session does not return them)
    async def get_rules(self, session_id: str) -> dict[str, Any] | None:
        rules = self.sessions.get(session_id, {}).get("text_rules")
        return orjson.loads(rules) if rules else None

    async def set_rules(self, session_id: str, rules: dict[str, Any]) -> bool:
        if session_id not in self.sessions:
            return False
        self.sessions[session_id]["text_rules"] = orjson.dumps(rules)  # a copy, as stored
        return True

    async def get_turns(self, session_id: str) -> list[dict[str, Any]]:
        turns = self.turns.get(session_id, {})
        return [
            {
                "seq": seq,
                "turn": t.get("turn"),
                "text": t.get("text", ""),
                "start": t.get("start"),
                "end": t.get("end"),
                "words": list(t.get("words") or []),
                **({"languages": t["languages"]} if t.get("languages") else {}),
            }
            for seq, t in sorted(turns.items())
        ]

    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = sorted((m for m in self.sessions.values() if m["owner"] == owner), key=lambda m: -m["started_at"])
        return [_session_out(m) for m in rows[:limit]]

    # api keys and usage (issue 20)

    async def add_api_key(self, key: dict[str, Any]) -> None:
        self.keys[key["id"]] = {k: key.get(k) for k in API_KEY_FIELDS}

    async def api_keys(self) -> list[dict[str, Any]]:
        return sorted((dict(k) for k in self.keys.values()), key=lambda k: k["created_at"])

    async def api_key_by_digest(self, digest: str) -> dict[str, Any] | None:
        return next((dict(k) for k in self.keys.values() if k["digest"] == digest), None)

    async def revoke_api_key(self, key_id: str, when: float) -> bool:
        key = self.keys.get(key_id)
        if key is None or key["revoked_at"] is not None:
            return False
        key["revoked_at"] = when
        return True

    async def add_usage(self, rows: list[UsageRow]) -> None:
        for kind, subject, day, secs, cost in rows:
            entry = self.usage_rows.setdefault((kind, subject, day), [0.0, 0.0])
            entry[0] += secs
            entry[1] += cost

    async def usage(self, kind: str, day: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (k, subject, d), (secs, cost) in self.usage_rows.items():
            if k == kind:
                _add_usage(out, subject, d == day, secs, cost)
        return out

    async def set_share(self, session_id: str, version: int, token: str | None) -> None:
        if session_id in self.sessions:
            self.sessions[session_id].update(share_version=version, share_token=token)

    # outputs (issue 19)

    async def add_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> None:
        self.outputs.setdefault(session_id, {})[output_id] = orjson.loads(orjson.dumps(record))

    async def update_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> bool:
        group = self.outputs.get(session_id, {})
        if output_id not in group:
            return False
        group[output_id] = orjson.loads(orjson.dumps(record))
        return True

    async def get_outputs(self, session_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(orjson.dumps(r)) for r in self.outputs.get(session_id, {}).values()]

    async def delete_output(self, session_id: str, output_id: str) -> bool:
        group = self.outputs.get(session_id, {})
        found = group.pop(output_id, None) is not None
        if not group:
            self.outputs.pop(session_id, None)
        return found

    async def output_sessions(self) -> list[str]:
        return list(self.outputs)

    async def purge(self, started_before: float) -> int:
        # Open sessions are kept whatever their age, as in SqliteStore.
        ids = [i for i, m in self.sessions.items() if m["started_at"] < started_before and m["ended_at"] is not None]
        for session_id in ids:
            del self.sessions[session_id]
            self.turns.pop(session_id, None)
            self.outputs.pop(session_id, None)
        return len(ids)

    # session management (issue 21)

    async def rename_session(self, session_id: str, name: str | None) -> None:
        if session_id in self.sessions:
            self.sessions[session_id]["name"] = name

    async def delete_session(self, session_id: str) -> bool:
        self.turns.pop(session_id, None)
        self.outputs.pop(session_id, None)
        return self.sessions.pop(session_id, None) is not None

    async def search_sessions(self, owner: str, query: str, limit: int = 200) -> list[dict[str, Any]]:
        needle, budget, out = query.casefold(), SEARCH_TURNS, []
        for meta in await self.list_sessions(owner, SEARCH_SESSIONS):
            texts = [t.get("text", "") for _, t in sorted(self.turns.get(meta["id"], {}).items())][:budget]
            budget -= len(texts)
            if needle in (meta.get("name") or "").casefold() or any(needle in t.casefold() for t in texts):
                out.append(meta)
        return out[:limit]

    async def previews(self, session_ids: list[str]) -> dict[str, str]:
        firsts = {i: [t.get("text", "") for _, t in sorted(self.turns.get(i, {}).items())[:3]] for i in session_ids}
        return {i: p for i, texts in firsts.items() if (p := _preview(texts))}

    async def session_by_short(self, short_id: str) -> dict[str, Any] | None:
        meta = next((m for m in self.sessions.values() if m.get("short_id") == short_id), None)
        return _session_out(meta) if meta is not None else None

    async def set_short(self, session_id: str, short_id: str | None) -> None:
        if session_id in self.sessions:
            self.sessions[session_id]["short_id"] = short_id


# ---- SQLite -------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, owner TEXT, backend TEXT NOT NULL, model TEXT, sample_rate INTEGER,
    started_at REAL NOT NULL, ended_at REAL, duration REAL, audio_seconds REAL, end_reason TEXT,
    share_version INTEGER NOT NULL DEFAULT 0, share_token TEXT, resume_nonce TEXT, cost REAL, name TEXT, short_id TEXT);
CREATE INDEX IF NOT EXISTS sessions_owner ON sessions (owner, started_at);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, turn INTEGER, text TEXT NOT NULL,
    start REAL, "end" REAL, words TEXT NOT NULL, languages TEXT, PRIMARY KEY (session_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, created_at REAL NOT NULL,
    minutes_per_day INTEGER NOT NULL DEFAULT 0, revoked_at REAL);
CREATE TABLE IF NOT EXISTS usage (
    kind TEXT NOT NULL, subject TEXT NOT NULL, day TEXT NOT NULL, seconds REAL NOT NULL, cost REAL NOT NULL,
    PRIMARY KEY (kind, subject, day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outputs (
    session_id TEXT NOT NULL, id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (session_id, id)) WITHOUT ROWID;
"""
USAGE_PER_WRITE = 500  # 5 parameters a row


FINALS_PER_WRITE = 500  # 8 parameters a row: well under SQLite's 32,766 per statement
FINALS_WRITE_INTERVAL = 0.02  # seconds; what a final can wait for its write (and its viewers for it) under load


@functools.lru_cache(maxsize=64)
def _insert_turns(rows: int) -> str:
    return 'INSERT OR REPLACE INTO turns (session_id, seq, turn, text, start, "end", words, languages) VALUES ' + (
        ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    )


class SqliteStore(SessionStore):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db: Any = None  # an aiosqlite connection once started
        self.finals: list[tuple[tuple, asyncio.Future]] = []  # waiting for the next write
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
            columns = {r["name"] for r in await cur.fetchall()}
        # a file of an older version; text_rules (issue 19) is kept outside SESSION_FIELDS
        for column, kind in (
            ("resume_nonce", "TEXT"),
            ("cost", "REAL"),
            ("text_rules", "TEXT"),
            ("name", "TEXT"),
            ("short_id", "TEXT"),
        ):
            if column not in columns:
                await self.db.execute(f"ALTER TABLE sessions ADD COLUMN {column} {kind}")
        async with self.db.execute("PRAGMA table_info(turns)") as cur:
            if "languages" not in {r["name"] for r in await cur.fetchall()}:  # a file of an older version
                await self.db.execute("ALTER TABLE turns ADD COLUMN languages TEXT")
        await self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS sessions_short ON sessions (short_id)")

    async def close(self) -> None:
        if self.finals_writer is not None:
            with contextlib.suppress(Exception):
                await self.finals_writer
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def create_session(self, meta: dict[str, Any]) -> None:
        cols = [k for k in SESSION_FIELDS if k in meta]
        await self.db.execute(
            f"INSERT INTO sessions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [meta[k] for k in cols]
        )

    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any]) -> None:
        """Finals that arrive while a write runs go out together in the next one: one statement, one commit. A commit per final cost more CPU than relaying the audio (docs/benchmarks.md)."""
        row = (
            session_id,
            seq,
            turn.get("turn"),
            turn.get("text", ""),
            turn.get("start"),
            turn.get("end"),
            orjson.dumps(turn.get("words") or []).decode(),
            orjson.dumps(turn["languages"]).decode() if turn.get("languages") else None,
        )
        stored = asyncio.get_running_loop().create_future()
        self.finals.append((row, stored))
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
                await self.db.execute(_insert_turns(len(batch)), [v for row, _ in batch for v in row])
            except Exception as exc:  # each waiter retries its own final (Recorder._write)
                for _, stored in batch:
                    if not stored.done():
                        stored.set_exception(exc)
                continue
            for _, stored in batch:
                if not stored.done():
                    stored.set_result(None)
            # Writes at most every FINALS_WRITE_INTERVAL: under load the finals of the next one share it. A final
            # after a quiet spell finds no writer and goes out at once.
            await asyncio.sleep(started + FINALS_WRITE_INTERVAL - time.monotonic())

    async def end_session(self, session_id: str, values: dict[str, Any]) -> None:
        cols = [k for k in values if k in SESSION_FIELDS]
        await self.db.execute(
            f"UPDATE sessions SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
            [values[c] for c in cols] + [session_id],
        )

    async def reopen_session(self, session_id: str) -> None:
        await self.db.execute("UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = ?", (session_id,))

    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        cur = await self.db.execute(
            "UPDATE sessions SET resume_nonce = ? WHERE id = ? AND resume_nonce = ?", (nonce, session_id, expected)
        )
        if cur.rowcount:
            return True
        async with self.db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)) as cur:
            return False if await cur.fetchone() else None

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)) as cur:
            row = await cur.fetchone()
        return _session_out(dict(row)) if row else None

    # text rules (issue 19): the sessions table's text_rules column (JSON), added by start() to older files
    async def get_rules(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.execute("SELECT text_rules FROM sessions WHERE id = ?", (session_id,)) as cur:
            row = await cur.fetchone()
        return json.loads(row["text_rules"]) if row and row["text_rules"] else None

    async def set_rules(self, session_id: str, rules: dict[str, Any]) -> bool:
        cur = await self.db.execute(
            "UPDATE sessions SET text_rules = ? WHERE id = ?", (json.dumps(rules, ensure_ascii=False), session_id)
        )
        return bool(cur.rowcount)

    async def get_turns(self, session_id: str) -> list[dict[str, Any]]:
        async with self.db.execute(
            'SELECT seq, turn, text, start, "end", words, languages FROM turns WHERE session_id = ? ORDER BY seq',
            (session_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            {
                "seq": r["seq"],
                "turn": r["turn"],
                "text": r["text"],
                "start": r["start"],
                "end": r["end"],
                "words": json.loads(r["words"]),
                **({"languages": json.loads(r["languages"])} if r["languages"] else {}),
            }
            for r in rows
        ]

    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT * FROM sessions WHERE owner = ? ORDER BY started_at DESC LIMIT ?", (owner, limit)
        ) as cur:
            rows = await cur.fetchall()
        return [_session_out(dict(r)) for r in rows]

    # api keys and usage (issue 20)

    async def add_api_key(self, key: dict[str, Any]) -> None:
        await self.db.execute(
            f"INSERT INTO api_keys ({', '.join(API_KEY_FIELDS)}) VALUES ({', '.join('?' * len(API_KEY_FIELDS))})",
            [key.get(k) for k in API_KEY_FIELDS],
        )

    async def api_keys(self) -> list[dict[str, Any]]:
        async with self.db.execute("SELECT * FROM api_keys ORDER BY created_at") as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def api_key_by_digest(self, digest: str) -> dict[str, Any] | None:
        async with self.db.execute("SELECT * FROM api_keys WHERE digest = ?", (digest,)) as cur:
            row = await cur.fetchone()
        return dict(row) if row else None

    async def revoke_api_key(self, key_id: str, when: float) -> bool:
        cur = await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (when, key_id)
        )
        return bool(cur.rowcount)

    async def add_usage(self, rows: list[UsageRow]) -> None:
        # One multi-row upsert per chunk: one statement is one transaction in autocommit mode.
        for chunk in (rows[i : i + USAGE_PER_WRITE] for i in range(0, len(rows), USAGE_PER_WRITE)):  # (500 a call)
            await self.db.execute(
                "INSERT INTO usage (kind, subject, day, seconds, cost) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (kind, subject, day) DO UPDATE SET seconds = seconds + excluded.seconds, "
                "cost = cost + excluded.cost",
                [v for row in chunk for v in row],
            )

    async def usage(self, kind: str, day: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        async with self.db.execute(
            "SELECT subject, day = ? AS today, SUM(seconds) AS s, SUM(cost) AS c FROM usage WHERE kind = ? "
            "GROUP BY subject, day = ?",
            (day, kind, day),
        ) as cur:
            for r in await cur.fetchall():
                _add_usage(out, r["subject"], bool(r["today"]), r["s"], r["c"])
        return out

    async def set_share(self, session_id: str, version: int, token: str | None) -> None:
        await self.db.execute(
            "UPDATE sessions SET share_version = ?, share_token = ? WHERE id = ?", (version, token, session_id)
        )

    # outputs (issue 19)

    async def add_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> None:
        await self.db.execute(
            "INSERT INTO outputs (session_id, id, record) VALUES (?, ?, ?)",
            (session_id, output_id, orjson.dumps(record).decode()),
        )

    async def update_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> bool:
        cur = await self.db.execute(
            "UPDATE outputs SET record = ? WHERE session_id = ? AND id = ?",
            (orjson.dumps(record).decode(), session_id, output_id),
        )
        return cur.rowcount > 0

    async def get_outputs(self, session_id: str) -> list[dict[str, Any]]:
        async with self.db.execute("SELECT record FROM outputs WHERE session_id = ? ORDER BY id", (session_id,)) as cur:
            return [json.loads(r["record"]) for r in await cur.fetchall()]

    async def delete_output(self, session_id: str, output_id: str) -> bool:
        cur = await self.db.execute("DELETE FROM outputs WHERE session_id = ? AND id = ?", (session_id, output_id))
        return cur.rowcount > 0

    async def output_sessions(self) -> list[str]:
        async with self.db.execute("SELECT DISTINCT session_id FROM outputs") as cur:
            return [r["session_id"] for r in await cur.fetchall()]

    async def output_finals(self, session_id: str, seq: int, limit: int) -> list[dict[str, Any]]:
        async with self.db.execute(
            'SELECT seq, turn, text, start, "end", words FROM turns WHERE session_id = ? AND seq >= ? ORDER BY seq '
            "LIMIT ?",
            (session_id, seq, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [{**dict(r), "words": json.loads(r["words"])} for r in rows]

    async def purge(self, started_before: float) -> int:
        # Open sessions are kept whatever their age: their speaker may still be talking.
        async with self.db.execute(
            "SELECT id FROM sessions WHERE started_at < ? AND ended_at IS NOT NULL", (started_before,)
        ) as cur:
            ids = [r["id"] for r in await cur.fetchall()]
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            marks = ", ".join("?" * len(chunk))
            await self.db.execute("BEGIN")
            await self.db.execute(f"DELETE FROM turns WHERE session_id IN ({marks})", chunk)
            await self.db.execute(f"DELETE FROM outputs WHERE session_id IN ({marks})", chunk)
            await self.db.execute(f"DELETE FROM sessions WHERE id IN ({marks})", chunk)
            await self.db.execute("COMMIT")
        return len(ids)

    # session management (issue 21)

    async def rename_session(self, session_id: str, name: str | None) -> None:
        await self.db.execute("UPDATE sessions SET name = ? WHERE id = ?", (name, session_id))

    async def delete_session(self, session_id: str) -> bool:
        await self.db.execute("BEGIN")
        try:
            await self.db.execute("DELETE FROM turns WHERE session_id = ?", (session_id,))
            await self.db.execute("DELETE FROM outputs WHERE session_id = ?", (session_id,))
            cur = await self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return cur.rowcount > 0

    async def search_sessions(self, owner: str, query: str, limit: int = 200) -> list[dict[str, Any]]:
        # LIKE with the query's wildcards escaped; ASCII letters match either case (SQLite's LIKE).
        pattern = like_pattern(query)
        async with self.db.execute(
            "SELECT * FROM (SELECT * FROM sessions WHERE owner = ? ORDER BY started_at DESC LIMIT ?) AS s "
            "WHERE s.name LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM turns AS t WHERE t.session_id = s.id "
            "AND t.text LIKE ? ESCAPE '\\') ORDER BY s.started_at DESC LIMIT ?",
            (owner, SEARCH_SESSIONS, pattern, pattern, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_session_out(dict(r)) for r in rows]

    async def previews(self, session_ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in (session_ids[i : i + 200] for i in range(0, len(session_ids), 200)):
            marks = ", ".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT session_id, text FROM turns WHERE session_id IN ({marks}) AND seq < 3 ORDER BY session_id, seq",
                chunk,
            ) as cur:
                rows = await cur.fetchall()
            firsts: dict[str, list[str]] = {}
            for r in rows:
                firsts.setdefault(r["session_id"], []).append(r["text"])
            out.update({i: p for i, texts in firsts.items() if (p := _preview(texts))})
        return out

    async def session_by_short(self, short_id: str) -> dict[str, Any] | None:
        async with self.db.execute("SELECT * FROM sessions WHERE short_id = ?", (short_id,)) as cur:
            row = await cur.fetchone()
        return _session_out(dict(row)) if row else None

    async def set_short(self, session_id: str, short_id: str | None) -> None:
        await self.db.execute("UPDATE sessions SET short_id = ? WHERE id = ?", (short_id, session_id))

    async def recover(self) -> int:
        # One process owns this file, so at start-up no session can still be running.
        cur = await self.db.execute(
            "UPDATE sessions SET end_reason = 'interrupted', ended_at = COALESCE("
            '(SELECT started_at + MAX("end") FROM turns WHERE session_id = sessions.id), started_at), '
            'duration = COALESCE((SELECT MAX("end") FROM turns WHERE session_id = sessions.id), 0) '
            "WHERE ended_at IS NULL"
        )
        return cur.rowcount


# ---- Redis --------------------------------------------------------------------------------------


_CLAIM_RESUME = """
local current = redis.call('HGET', KEYS[1], 'resume_nonce')
if current == ARGV[1] then redis.call('HSET', KEYS[1], 'resume_nonce', ARGV[2]) return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return 0
"""


_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_UPDATE_OUTPUT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1
"""
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore(SessionStore):
    """Keys (prefix `cr:`): s:<id> hash (session), t:<id> stream (final turns, field d = JSON),
    sessions zset (by start time, for retention), o:<owner> zset (the owner's sessions).

    Redis down: every call fails within REDIS_TIMEOUT (redis_client); callers decide whether to retry."""

    def __init__(self, url: str, prefix: str = "cr:"):
        self.url = url
        self.p = prefix
        self.redis: Any = None  # a redis.asyncio client once started

    async def start(self) -> None:
        self.redis = redis_client(self.url)
        await self.redis.ping()  # fail at start-up, with a clear log, rather than at the first capture

    async def close(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def health(self) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.redis.ping(), HEALTH_TIMEOUT)
            return {"store": "ok"}
        except Exception:
            return {"store": "unavailable"}

    def _k(self, kind: str, session_id: str) -> str:
        return f"{self.p}{kind}:{session_id}"

    async def create_session(self, meta: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("s", meta["id"]), mapping={k: json.dumps(meta[k]) for k in SESSION_FIELDS if k in meta})
            pipe.zadd(f"{self.p}sessions", {meta["id"]: meta["started_at"]})
            if meta.get("owner"):
                pipe.zadd(self._k("o", meta["owner"]), {meta["id"]: meta["started_at"]})
            if meta.get("short_id"):
                pipe.set(self._k("v", meta["short_id"]), meta["id"])
            await pipe.execute()

    async def append_final(self, session_id: str, seq: int, turn: dict[str, Any]) -> None:
        await self.redis.xadd(self._k("t", session_id), {"seq": seq, "d": json.dumps(turn, ensure_ascii=False)})

    async def end_session(self, session_id: str, values: dict[str, Any]) -> None:
        await self.redis.hset(
            self._k("s", session_id), mapping={k: json.dumps(v) for k, v in values.items() if k in SESSION_FIELDS}
        )

    @staticmethod
    def _meta(raw: dict[str, str]) -> dict[str, Any] | None:
        if not raw or "id" not in raw:
            return None
        return _session_out({k: json.loads(v) for k, v in raw.items()})

    async def reopen_session(self, session_id: str) -> None:
        await self.redis.hset(self._k("s", session_id), mapping={"ended_at": "null", "end_reason": "null"})

    async def claim_resume(self, session_id: str, expected: str, nonce: str) -> bool | None:
        # One script: compare and set cannot interleave with another instance's claim.
        result = await self.redis.eval(
            _CLAIM_RESUME, 1, self._k("s", session_id), json.dumps(expected), json.dumps(nonce)
        )
        return None if result < 0 else bool(result)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        return self._meta(await self.redis.hgetall(self._k("s", session_id)))

    # text rules (issue 19): the session hash's text_rules field (JSON; _meta leaves it out)
    async def get_rules(self, session_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self._k("s", session_id), "text_rules")
        return json.loads(raw) if raw else None

    async def set_rules(self, session_id: str, rules: dict[str, Any]) -> bool:
        # Only an existing session (HSET would create a bare hash): the check and the write are one script.
        done = await self.redis.eval(
            _SET_IF_EXISTS, 1, self._k("s", session_id), "text_rules", json.dumps(rules, ensure_ascii=False)
        )
        return bool(done)

    async def stored_finals(self, session_id: str) -> int | None:
        last = await self.redis.xrevrange(self._k("t", session_id), count=1)
        return int(last[0][1]["seq"]) + 1 if last else 0

    async def finals_from(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        # From the stream's end back to `seq`: a viewer usually missed the last few finals of a long session.
        key, out, top = self._k("t", session_id), [], "+"
        while True:
            page = await self.redis.xrevrange(key, max=top, min="-", count=100)
            older = [(sid, e) for sid, e in page if int(e["seq"]) >= seq]
            out.extend(older)
            if len(older) < len(page) or len(page) < 100:
                break
            top = f"({page[-1][0]}"
        return [self._turn(entry) for _, entry in reversed(out)]

    @staticmethod
    def _turn(entry: dict[str, str]) -> dict[str, Any]:
        turn = json.loads(entry["d"])
        turn["seq"] = int(entry["seq"])
        return turn

    async def get_turns(self, session_id: str) -> list[dict[str, Any]]:
        return [self._turn(entry) for _, entry in await self.redis.xrange(self._k("t", session_id))]

    async def list_sessions(self, owner: str, limit: int = 200) -> list[dict[str, Any]]:
        ids = await self.redis.zrevrange(self._k("o", owner), 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(self._k("s", session_id))
            rows = await pipe.execute() if ids else []
        return [m for m in map(self._meta, rows) if m]

    # api keys and usage (issue 20)
    # k:<id> hash (the key's fields, JSON), kd:<digest> string (its id), keys zset (by creation);
    # u:<kind>:<subject> hash (fields <day>:s, <day>:c, all:s, all:c), uk:<kind> set (its subjects).

    async def add_api_key(self, key: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("k", key["id"]), mapping={k: json.dumps(key.get(k)) for k in API_KEY_FIELDS})
            pipe.set(self._k("kd", key["digest"]), key["id"])
            pipe.zadd(f"{self.p}keys", {key["id"]: key["created_at"]})
            await pipe.execute()

    @staticmethod
    def _key(raw: dict[str, str]) -> dict[str, Any] | None:
        return {k: json.loads(raw[k]) if k in raw else None for k in API_KEY_FIELDS} if raw else None

    async def api_keys(self) -> list[dict[str, Any]]:
        ids = await self.redis.zrange(f"{self.p}keys", 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._k("k", key_id))
            rows = await pipe.execute() if ids else []
        return [k for k in map(self._key, rows) if k]

    async def api_key_by_digest(self, digest: str) -> dict[str, Any] | None:
        key_id = await self.redis.get(self._k("kd", digest))
        return self._key(await self.redis.hgetall(self._k("k", key_id))) if key_id else None

    async def revoke_api_key(self, key_id: str, when: float) -> bool:
        raw = await self.redis.hget(self._k("k", key_id), "revoked_at")
        if raw is None or json.loads(raw) is not None:
            return False
        await self.redis.hset(self._k("k", key_id), "revoked_at", json.dumps(when))
        return True

    async def add_usage(self, rows: list[UsageRow]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for kind, subject, day, secs, cost in rows:
                key = self._k(f"u:{kind}", subject)
                for field, value in ((f"{day}:s", secs), (f"{day}:c", cost), ("all:s", secs), ("all:c", cost)):
                    pipe.hincrbyfloat(key, field, value)
                pipe.sadd(self._k("uk", kind), subject)
            await pipe.execute()

    async def usage(self, kind: str, day: str) -> dict[str, dict[str, float]]:
        subjects = sorted(await self.redis.smembers(self._k("uk", kind)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for subject in subjects:
                pipe.hmget(self._k(f"u:{kind}", subject), "all:s", "all:c", f"{day}:s", f"{day}:c")
            rows = await pipe.execute() if subjects else []
        return {
            subject: dict(
                zip(("total_s", "total_cost", "today_s", "today_cost"), (float(v or 0) for v in row), strict=True)
            )
            for subject, row in zip(subjects, rows, strict=True)
        }

    async def set_share(self, session_id: str, version: int, token: str | None) -> None:
        await self.redis.hset(
            self._k("s", session_id), mapping={"share_version": json.dumps(version), "share_token": json.dumps(token)}
        )

    # outputs (issue 19): out:<id> hash (output id -> record JSON), outs set (sessions with outputs),
    # olease:<id> (the process delivering them: SET NX with a TTL, renewed by its holder)

    async def add_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("out", session_id), output_id, json.dumps(record, ensure_ascii=False))
            pipe.sadd(f"{self.p}outs", session_id)
            await pipe.execute()

    async def update_output(self, session_id: str, output_id: str, record: dict[str, Any]) -> bool:
        # One script: a record deleted meanwhile is not written back.
        return bool(
            await self.redis.eval(
                _UPDATE_OUTPUT, 1, self._k("out", session_id), output_id, json.dumps(record, ensure_ascii=False)
            )
        )

    async def get_outputs(self, session_id: str) -> list[dict[str, Any]]:
        rows = await self.redis.hgetall(self._k("out", session_id))
        return [json.loads(rows[k]) for k in sorted(rows)]

    async def delete_output(self, session_id: str, output_id: str) -> bool:
        return bool(await self.redis.hdel(self._k("out", session_id), output_id))

    async def output_sessions(self) -> list[str]:
        ids = list(await self.redis.smembers(f"{self.p}outs"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.exists(self._k("out", session_id))
            alive = await pipe.execute() if ids else []
        gone = [i for i, a in zip(ids, alive, strict=True) if not a]
        if gone:
            await self.redis.srem(f"{self.p}outs", *gone)
        return [i for i, a in zip(ids, alive, strict=True) if a]

    async def lease_outputs(self, session_id: str, holder: str, ttl: float) -> bool:
        return bool(await self.redis.eval(_LEASE, 1, self._k("olease", session_id), holder, int(ttl * 1000)))

    async def release_outputs(self, session_id: str, holder: str) -> None:
        await self.redis.eval(_RELEASE, 1, self._k("olease", session_id), holder)

    async def purge(self, started_before: float) -> int:
        removed = 0
        for session_id in await self.redis.zrangebyscore(f"{self.p}sessions", "-inf", f"({started_before}"):
            meta = await self.get_session(session_id)
            if meta is not None and meta["live"] and meta["started_at"] > started_before - 86400:
                # Open sessions are kept, unless a day past the cut-off: then their instance died
                # without ending them (Redis has no single owner to mark them at start-up).
                continue
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._k("s", session_id), self._k("t", session_id), self._k("out", session_id))
                pipe.zrem(f"{self.p}sessions", session_id)
                if meta and meta.get("owner"):
                    pipe.zrem(self._k("o", meta["owner"]), session_id)
                if meta and meta.get("short_id"):
                    pipe.delete(self._k("v", meta["short_id"]))
                await pipe.execute()
            removed += 1
        return removed

    # session management (issue 21)

    async def rename_session(self, session_id: str, name: str | None) -> None:
        key = self._k("s", session_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # only a stored session: never a stub hash
            await pipe.watch(key)
            if await pipe.exists(key):
                pipe.multi()
                pipe.hset(key, "name", json.dumps(name))
                await pipe.execute()

    async def delete_session(self, session_id: str) -> bool:
        meta = await self.get_session(session_id)
        if meta is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k("s", session_id), self._k("t", session_id), self._k("out", session_id))
            pipe.zrem(f"{self.p}sessions", session_id)
            if meta.get("owner"):
                pipe.zrem(self._k("o", meta["owner"]), session_id)
            if meta.get("short_id"):
                pipe.delete(self._k("v", meta["short_id"]))
            await pipe.execute()
        return True

    async def search_sessions(self, owner: str, query: str, limit: int = 200) -> list[dict[str, Any]]:
        # No index in Redis: the owner's newest sessions, their finals read in pages, at most SEARCH_TURNS in all.
        needle, budget, out = query.casefold(), SEARCH_TURNS, []
        # The raw JSON of a final holds its text as is unless the query has what JSON escapes: then a quick look
        # at the raw entry rules out most non-matches without decoding them.
        quick = needle.isprintable() and '"' not in needle and "\\" not in needle
        for meta in await self.list_sessions(owner, SEARCH_SESSIONS):
            if needle in (meta.get("name") or "").casefold():
                out.append(meta)
            else:
                key, low, size = self._k("t", meta["id"]), "-", 20  # small first: a match is often early
                while budget > 0:
                    count = min(size, budget)
                    page = await self.redis.xrange(key, min=low, max="+", count=count)
                    budget -= len(page)
                    if any(
                        (not quick or needle in e["d"].casefold())
                        and needle in json.loads(e["d"]).get("text", "").casefold()
                        for _, e in page
                    ):
                        out.append(meta)
                        break
                    if len(page) < count:
                        break
                    low, size = f"({page[-1][0]}", min(500, size * 5)
            if len(out) >= limit or budget <= 0:
                break
        return out[:limit]

    async def previews(self, session_ids: list[str]) -> dict[str, str]:
        if not session_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.xrange(self._k("t", session_id), count=3)
            pages = await pipe.execute()
        firsts = {
            i: [self._turn(e).get("text", "") for _, e in page] for i, page in zip(session_ids, pages, strict=True)
        }
        return {i: p for i, texts in firsts.items() if (p := _preview(texts))}

    async def session_by_short(self, short_id: str) -> dict[str, Any] | None:
        session_id = await self.redis.get(self._k("v", short_id))
        meta = await self.get_session(session_id) if session_id else None
        return meta if meta is not None and meta.get("short_id") == short_id else None

    async def set_short(self, session_id: str, short_id: str | None) -> None:
        meta = await self.get_session(session_id)
        if meta is None:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            if meta.get("short_id"):
                pipe.delete(self._k("v", meta["short_id"]))
            if short_id:
                pipe.set(self._k("v", short_id), session_id)
            pipe.hset(self._k("s", session_id), "short_id", json.dumps(short_id))
            await pipe.execute()
