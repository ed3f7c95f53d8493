"""Relay API keys for the OpenAI/seed-compatible endpoints (never the upstream key): `caption-relay api-key
create | list | revoke`, and `ApiKeys.authenticate`, the one check those endpoints make.

A key is `crk_` + 43 random URL-safe characters, shown once when made. The store keeps only its SHA-256 digest,
name, id, creation time, `--minutes-per-day` and revocation time; a request's key is looked up by its digest and
the digests compared in constant time (a key has 256 random bits, so a fast hash is enough).

Who gets in (`authenticate`):
- `Authorization: Bearer <key>`, or on a WebSocket `?api_key=<key>` (browsers cannot set headers there);
- a good key that is not revoked: an ApiClient of that key;
- with ACCESS_TOKEN set: the access token as the Bearer (throttled like the login form) or the page's login cookie;
- while no API key was ever made and ACCESS_TOKEN is unset: anyone (the endpoints are as open as the page);
- otherwise ApiAuthError (401; 429 while a client is locked out for guessing; 503 when the store is down).
Once a key was made the endpoints stay closed, even with every key revoked: revoking the last key must not open
the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from . import metrics
from .config import Settings
from .logs import fields
from .security import Login
from .store import STORE_ERRORS, SessionStore
from .usage import ApiQuotaError, Usage, today

log = logging.getLogger(__name__)

KEY_PREFIX = "crk_"
MAX_KEY_CHARS = 200  # longer credentials are not looked up
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_MINUTES_PER_DAY = 1440


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiClient:
    """Who a request is: `key_id` is the relay API key's id, "" when admitted by the access token or openly."""

    key_id: str
    name: str  # the key's name; "access_token" or "anonymous" without a key
    ip: str  # the client's address (TRUSTED_PROXIES judged)
    minutes_per_day: int = 0  # the key's day limit (0 = none)


class ApiAuthError(Exception):
    """The request may not use the API: answer `error_response(exc)` (or close a WebSocket with 1008)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


ERROR_TYPES = {
    **dict.fromkeys((400, 401, 404, 413, 415), "invalid_request_error"),
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    retry_after: float | str | None = None,
) -> JSONResponse:
    """An error of the /v1 endpoints in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with
    Retry-After when given (seconds, or a provider's own header value as it came)."""
    body = {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after if isinstance(retry_after, str) else str(int(retry_after))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="caption-relay"'
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(exc: ApiAuthError | ApiQuotaError) -> JSONResponse:
    """The HTTP answer to an ApiAuthError (401/429/503) or ApiQuotaError (429)."""
    return openai_error(exc.status, exc.message, code=exc.code, retry_after=exc.retry_after)


MISSING = "This endpoint needs an API key: send Authorization: Bearer <key> (made with `./scripts/caption-relay api-key create`)."
WRONG = "That API key is not valid here. Check it, or ask the operator for a key (`./scripts/caption-relay api-key create`)."
REVOKED = "That API key was revoked. Ask the operator for a new one."


SEEN_KEYS = 1000  # key records remembered for a store outage


class ApiKeys:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        login: Login | None = None,
        client_ip: Callable[[HTTPConnection], str] | None = None,
        usage: Usage | None = None,
    ):
        self.store = store
        self.login = login
        self.client_ip = client_ip or (lambda conn: conn.client.host if conn.client else "unknown")
        self.usage = usage
        self.in_use = False  # a key was made (it never changes back: revoked keys stay in the store)
        # While the store is down no key can be made or revoked, so what it last said still holds: keys seen
        # lately, and whether it had none. A Redis outage then does not stop the API (captions go on).
        self.seen: dict[str, dict[str, Any]] = {}
        self.none_seen = False

    # ---- the endpoints' check ----------------------------------------------------------------------

    async def authenticate(self, conn: HTTPConnection) -> ApiClient:
        """Who `conn` (a Request or WebSocket) is, or ApiAuthError. A key with a day limit is primed with
        today's stored usage, so `usage.check`/`usage.meter` see it."""
        ip = self.client_ip(conn)
        auth = conn.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        from_header = scheme.lower() == "bearer"  # what Login.admit reads itself
        # Deepgram-style clients of /v1/realtime send `Token <key>`
        candidate: str | None = value.strip() if scheme.lower() in ("bearer", "token") and value.strip() else None
        if candidate is None and conn.scope["type"] == "websocket":
            candidate = conn.query_params.get("api_key")
        try:
            if candidate and candidate.startswith(KEY_PREFIX) and len(candidate) <= MAX_KEY_CHARS:
                wanted = digest(candidate)
                row = await self._lookup(wanted)
                if row is not None and hmac.compare_digest(row["digest"], wanted):
                    if row["revoked_at"] is not None:
                        log.info("api_key_refused", extra=fields(key_id=row["id"], why="revoked"))
                        raise ApiAuthError(401, "api_key_revoked", REVOKED)
                    client = ApiClient(row["id"], row["name"], ip, int(row["minutes_per_day"] or 0))
                    if self.usage is not None:
                        with contextlib.suppress(*STORE_ERRORS):  # down: today's figure is what this process knows
                            await self.usage.prime(client)
                    return client
            if self.login is not None and self.login.required:
                if candidate is not None and not from_header:
                    allowed, wait = self.login.try_token(ip, candidate)
                else:
                    allowed, wait = self.login.admit(conn)  # the Bearer, or the page's login cookie
                if wait is not None:
                    raise ApiAuthError(429, "rate_limit_exceeded", Login.throttled(wait), retry_after=wait)
                if allowed:
                    return ApiClient("", "access_token", ip)
                raise ApiAuthError(401, "invalid_api_key", WRONG if candidate else MISSING)
            if await self._keys_in_use():
                raise ApiAuthError(401, "invalid_api_key", WRONG if candidate else MISSING)
        except STORE_ERRORS as exc:
            metrics.STORE_ERRORS.labels("api_keys").inc()
            log.warning("api_key_store_unavailable", extra=fields(error=type(exc).__name__))
            raise ApiAuthError(
                503, "store_unavailable", "The key store is unavailable; try again in a few seconds.", retry_after=5
            ) from None
        return ApiClient("", "anonymous", ip)

    async def _keys_in_use(self) -> bool:
        if not self.in_use:
            try:
                self.in_use = bool(await self.store.api_keys())  # the CLI may have made one since
            except STORE_ERRORS:
                if not self.none_seen:
                    raise
                return False  # none before the outage, and none can be made during it
            self.none_seen = not self.in_use
        return self.in_use

    async def _lookup(self, wanted: str) -> dict[str, Any] | None:
        try:
            row = await self.store.api_key_by_digest(wanted)
        except STORE_ERRORS:
            if wanted in self.seen:
                return self.seen[wanted]
            raise
        if row is not None:
            if len(self.seen) >= SEEN_KEYS:
                self.seen.pop(next(iter(self.seen)))
            self.seen[wanted] = row
        return row

    # ---- what the CLI does -------------------------------------------------------------------------

    async def create(self, name: str, minutes_per_day: int = 0) -> tuple[str, dict[str, Any]]:
        """(the key, its record); raises ValueError saying what to fix."""
        if not _NAME.fullmatch(name):
            raise ValueError(
                "--name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(e.g. sunday-uploads)"
            )
        if not 0 <= minutes_per_day <= MAX_MINUTES_PER_DAY:
            raise ValueError(f"--minutes-per-day: from 0 (no limit) to {MAX_MINUTES_PER_DAY}")
        if any(k["name"] == name and k["revoked_at"] is None for k in await self.store.api_keys()):
            raise ValueError(f"--name: a key named {name!r} exists; revoke it first or choose another name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {
            "id": secrets.token_hex(4),
            "name": name,
            "digest": digest(key),
            "created_at": time.time(),
            "minutes_per_day": minutes_per_day,
            "revoked_at": None,
        }
        await self.store.add_api_key(record)
        log.info("api_key_created", extra=fields(key_id=record["id"], name=name, minutes_per_day=minutes_per_day))
        return key, record

    async def find(self, id_or_name: str) -> dict[str, Any] | None:
        """A key by its id, else the unrevoked key of that name (else the latest revoked one of it)."""
        keys = await self.store.api_keys()
        by_id = [k for k in keys if k["id"] == id_or_name]
        named = [k for k in keys if k["name"] == id_or_name]
        named.sort(key=lambda k: (k["revoked_at"] is None, k["created_at"]))
        found = by_id or named
        return found[-1] if found else None

    async def revoke(self, id_or_name: str) -> tuple[dict[str, Any], bool]:
        """(the key, newly revoked); raises LookupError when there is no such key."""
        key = await self.find(id_or_name)
        if key is None:
            raise LookupError(
                f"no API key with the id or name {id_or_name[:64]!r} (see `./scripts/caption-relay api-key list`)"
            )
        new = await self.store.revoke_api_key(key["id"], time.time())
        log.info("api_key_revoked", extra=fields(key_id=key["id"], name=key["name"], new=new))
        return key, new

    async def listing(self) -> list[dict[str, Any]]:
        """Every key with its usage (today and total seconds and cost)."""
        keys = await self.store.api_keys()
        used = await self.store.usage("api_key", today())
        empty = {"today_s": 0.0, "today_cost": 0.0, "total_s": 0.0, "total_cost": 0.0}
        return [{**k, **used.get(k["id"], empty)} for k in keys]


# ---- command line: `caption-relay api-key` ------------------------------------------------------


def add_cli(sub) -> None:
    p = sub.add_parser(
        "api-key",
        help="make, list or revoke the relay's API keys (for /v1/audio/transcriptions and /v1/realtime)",
        description="Relay API keys, kept hashed in the app's store (DATA_DIR's SQLite file, or REDIS_URL); "
        "works while the app runs.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; it is printed once, on stdout")
    create.add_argument("--name", required=True, help="what the key is for, e.g. sunday-uploads")
    create.add_argument(
        "--minutes-per-day",
        type=int,
        default=0,
        metavar="M",
        help="audio minutes the key may use per UTC day (default 0 = no limit)",
    )
    actions.add_parser("list", help="every key with its usage today and in total, and its cost")
    revoke = actions.add_parser("revoke", help="revoke a key (by id or name); takes effect at once")
    revoke.add_argument("key", metavar="ID_OR_NAME")


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("name", "id", "created (UTC)", "min/day", "today min", "total min", "cost today", "cost total", "state")
    body = [
        (
            r["name"],
            r["id"],
            _when(r["created_at"]),
            str(r["minutes_per_day"] or "-"),
            f"{r['today_s'] / 60:.2f}",
            f"{r['total_s'] / 60:.2f}",
            f"{r['today_cost']:.4f}",
            f"{r['total_cost']:.4f}",
            f"revoked {_when(r['revoked_at'])}" if r["revoked_at"] is not None else "active",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (head, *body))


async def _cli(args: argparse.Namespace, settings: Settings) -> int:
    from .store import make_store, store_url

    store = make_store(store_url(settings))
    await store.start()
    try:
        keys = ApiKeys(settings, store)
        if args.action == "create":
            try:
                key, record = await keys.create(args.name, args.minutes_per_day)
            except ValueError as exc:
                print(f"caption-relay api-key: {exc}", file=sys.stderr)
                return 2
            print(key)  # stdout holds only the key, for scripts
            limit = f"{record['minutes_per_day']} minutes a day" if record["minutes_per_day"] else "no daily limit"
            print(
                f"API key {record['id']} ({record['name']}, {limit}) made. It is shown only now: the server keeps "
                "its hash. Clients send it as Authorization: Bearer <key> (or ?api_key= on /v1/realtime).",
                file=sys.stderr,
            )
            return 0
        if args.action == "revoke":
            try:
                record, new = await keys.revoke(args.key)
            except LookupError as exc:
                print(f"caption-relay api-key: {exc}", file=sys.stderr)
                return 1
            state = "revoked" if new else "was already revoked"
            print(f"API key {record['id']} ({record['name']}) {state}", file=sys.stderr)
            return 0
        rows = await keys.listing()
        print(
            _table(rows)
            if rows
            else "no API keys yet (make one with `./scripts/caption-relay api-key create --name N`)"
        )
        return 0
    finally:
        await store.close()


def cli(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_cli(args, settings))
    except STORE_ERRORS as exc:
        print(
            f"caption-relay api-key: the store is unavailable ({type(exc).__name__}); is REDIS_URL right?",
            file=sys.stderr,
        )
        return 1
