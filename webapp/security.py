"""Who may use the relay: page security headers, the audio socket's Origin check, and the optional
ACCESS_TOKEN login (a signed HttpOnly cookie for browsers, `Authorization: Bearer` for other clients).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

from .config import Settings
from .logs import fields
from .quotas import Quotas

log = logging.getLogger(__name__)

LOGIN_COOKIE = "cr_login"
LOGIN_MAX_AGE = 30 * 24 * 3600
HOST_PREFIX = "__Host-"  # a browser takes such a cookie only Secure, Path=/ and without Domain

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
PAGE_HEADERS = [
    (b"content-security-policy", PAGE_CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"permissions-policy", b"microphone=(self), camera=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Pure ASGI middleware (leaves WebSockets alone); a route may set its own CSP, which then wins."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in PAGE_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostGuard:
    """Answers only requests for a Host name of this server: loopback names, the bind address, ALLOWED_HOSTS and
    the hosts of ALLOWED_ORIGINS (bound to 0.0.0.0 or ::, also this machine's host name and any IP address).
    Against DNS rebinding: a page on evil.example whose name is made to resolve to 127.0.0.1 sends
    `Host: evil.example` and a matching Origin, so the Origin check alone would let it use the server's key.
    HTTP gets 403; a WebSocket is closed before its handshake is accepted (answered with 403). /healthz is left
    open for load balancers, which probe with whatever Host they like."""

    def __init__(self, app, settings: Settings):
        self.app = app
        names = set(settings.allowed_hosts) | {urlsplit(o).hostname or "" for o in settings.allowed_origins}
        bind = settings.host.strip("[]").lower()
        self.any_ip = bind in ("0.0.0.0", "::", "")
        if self.any_ip:
            host_name = socket.gethostname().lower()
            # the names a phone may type for this machine (the mDNS .local one too; webapp/tls.py puts them in its cert)
            names |= {host_name, f"{host_name}.local", socket.getfqdn().lower()}
        else:
            names.add(bind)
        self.open = "*" in names
        self.names = {n for n in names if n and not n.startswith("*.")}
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # "*.example.org" -> ".example.org"

    def allowed(self, scope) -> bool:
        raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
        if raw is None or self.open:
            return True  # no Host: not a browser (every browser sends one), so not a rebinding page
        try:
            name = (urlsplit("//" + raw.decode("latin-1")).hostname or "").rstrip(".")
        except ValueError:
            return False
        if (
            name in self.names
            or name == "localhost"
            or name.endswith(".localhost")
            or (self.suffixes and name.endswith(self.suffixes))
        ):
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False
        # An address is no rebinding risk (no name to re-resolve); still only this server's own ones.
        server = (scope.get("server") or ("",))[0]
        return ip.is_loopback or self.any_ip or str(ip) == server

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("path") == "/healthz" or self.allowed(scope):
            return await self.app(scope, receive, send)
        host = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"").decode("latin-1")
        log.warning("host_refused", extra=fields(host=host[:100]))  # not the path: it may hold a share token
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"This server does not answer to that host name (see ALLOWED_HOSTS).\n"
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def load_secret_key(settings: Settings) -> str:
    """SECRET_KEY, or one generated once and kept in DATA_DIR so signed links survive restarts."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    # `--workers` starts several processes on a fresh DATA_DIR at once: the key is written whole to a file of this
    # process and linked into place (atomic, and only one link can win); a loser reads the winner's key.
    key = secrets.token_urlsafe(48)
    tmp = path.with_name(f".secret_key.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key


class Cookies:
    """Cookie names and flags by the browser's scheme. Over HTTPS (the connection's own, or `X-Forwarded-Proto`
    from a TRUSTED_PROXIES peer) a cookie is `__Host-<name>` and Secure: no plain-http page or other subdomain can
    set or overwrite it. Over plain http (http://127.0.0.1) it keeps its bare name. Both names are read, the
    `__Host-` one first, so cookies set before, or over http, keep working."""

    def __init__(self, settings: Settings, quotas: Quotas | None = None):
        # the one judgement of TRUSTED_PROXIES (webapp/quotas.py)
        self._peer_trusted = (quotas or Quotas(settings)).peer_trusted

    def https(self, conn: HTTPConnection) -> bool:
        if conn.url.scheme in ("https", "wss"):
            return True
        if not self._peer_trusted(conn):
            return False  # anyone can send the header: believed only from a trusted proxy
        # The first value is the scheme the browser used with the outermost proxy.
        return conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() in ("https", "wss")

    def name(self, conn: HTTPConnection, name: str) -> str:
        """The name this connection's cookie `name` is set under."""
        return HOST_PREFIX + name if self.https(conn) else name

    @staticmethod
    def values(conn: HTTPConnection, name: str) -> list[str]:
        """The values the browser sent for `name`, the `__Host-` one first."""
        return [v for v in (conn.cookies.get(HOST_PREFIX + name), conn.cookies.get(name)) if v]

    def set(self, conn: HTTPConnection, response: Response, name: str, value: str, **kw) -> None:
        secure = self.https(conn)
        response.set_cookie(HOST_PREFIX + name if secure else name, value, secure=secure, path="/", **kw)

    def delete(
        self, conn: HTTPConnection, response: Response, name: str, samesite: Literal["lax", "strict", "none"] = "lax"
    ) -> None:
        response.delete_cookie(name, path="/", samesite=samesite)
        if self.https(conn):
            response.delete_cookie(HOST_PREFIX + name, path="/", secure=True, samesite=samesite)


def origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    """Same origin as this server, or listed in ALLOWED_ORIGINS. No Origin header = not a browser: allowed
    (a browser always sends one, so a page elsewhere can never ride a visitor's session)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().lower()
    if origin in settings.allowed_origins:
        return True
    parts = urlsplit(origin)
    host = conn.headers.get("host", "").lower()
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


class LoginThrottle:
    """Failed access-token attempts per client. MAX_FAILURES wrong tokens within WINDOW seconds lock the client
    out for LOCKOUT seconds, doubled for each lockout since it was last quiet (up to MAX_LOCKOUT). While locked,
    every token is refused unchecked, the right one too: otherwise guessing would go on at full speed. At most
    MAX_CLIENTS are remembered (the least recently failed is forgotten first); an IPv6 client is its /64."""

    MAX_FAILURES = 5
    WINDOW = 60.0
    LOCKOUT = 60.0
    MAX_LOCKOUT = 3600.0
    MAX_CLIENTS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        # client -> [window start, failures in it, locked until, lockouts so far, last failure]
        self.clients: OrderedDict[str, list[float]] = OrderedDict()

    @staticmethod
    def key(client: str) -> str:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return client[:64]
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)

    def _forget_quiet(self, now: float) -> None:
        """Drop clients quiet for MAX_LOCKOUT since their last failure and lockout (oldest first: amortized O(1))."""
        while self.clients:
            entry = next(iter(self.clients.values()))
            if now - max(entry[2], entry[4]) < self.MAX_LOCKOUT:
                break
            self.clients.popitem(last=False)

    def locked(self, client: str) -> int | None:
        """Seconds until `client` may try a token again, or None."""
        entry = self.clients.get(self.key(client))
        left = entry[2] - self.clock() if entry else 0
        return math.ceil(left) if left > 0 else None

    def failed(self, client: str) -> int | None:
        """Count a wrong token; returns the lockout's seconds when this failure starts one."""
        now, key = self.clock(), self.key(client)
        self._forget_quiet(now)
        entry = self.clients.pop(key, None) or [now, 0, 0.0, 0, now]
        self.clients[key] = entry  # most recent last
        if len(self.clients) > self.MAX_CLIENTS:
            self.clients.popitem(last=False)
        if now - entry[0] > self.WINDOW:
            entry[0], entry[1] = now, 0
        entry[1] += 1
        entry[4] = now
        if entry[1] < self.MAX_FAILURES:
            return None
        seconds = min(self.LOCKOUT * 2 ** entry[3], self.MAX_LOCKOUT)
        entry[0], entry[1], entry[2], entry[3] = now, 0, now + seconds, entry[3] + 1
        return math.ceil(seconds)

    def passed(self, client: str) -> None:
        self.clients.pop(self.key(client), None)


class Login:
    def __init__(
        self,
        settings: Settings,
        secret_key: str,
        cookies: Cookies | None = None,
        client_ip: Callable[[HTTPConnection], str] | None = None,
    ):
        self.token = settings.access_token
        self.signer = URLSafeTimedSerializer(secret_key, salt="caption-relay.login")
        self.cookies = cookies or Cookies(settings)
        self.client_ip = client_ip or Quotas(settings).client_ip
        self.throttle = LoginThrottle()

    @property
    def required(self) -> bool:
        return bool(self.token)

    def check_token(self, candidate: str) -> bool:
        return bool(self.token) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def cookie_value(self) -> str:
        # Bound to a digest of the token so changing ACCESS_TOKEN logs every browser out.
        return self.signer.dumps({"t": hmac.new(self.token.encode(), b"login", "sha256").hexdigest()[:16]})

    def try_token(self, client: str, candidate: str) -> tuple[bool, int | None]:
        """(right, retry_after): every token attempt goes through here; retry_after is set while `client` is locked
        out for guessing (then even the right token is refused)."""
        if (wait := self.throttle.locked(client)) is not None:
            return False, wait
        if self.check_token(candidate):
            self.throttle.passed(client)
            return True, None
        wait = self.throttle.failed(client)
        log.info("login_failed", extra=fields(client=client, locked_s=wait))
        return False, wait

    @staticmethod
    def throttled(seconds: int) -> str:
        """What the login form and the capture socket say while a client is locked out."""
        return f"Too many wrong access tokens from your address. Try again in {seconds} seconds."

    def admit(self, conn: HTTPConnection) -> tuple[bool, int | None]:
        """(allowed, retry_after) for a page or socket: a good login cookie, or a Bearer token (throttled)."""
        if not self.required:
            return True, None
        if any(self._cookie_ok(c) for c in self.cookies.values(conn, LOGIN_COOKIE)):
            return True, None  # proof of an earlier login: not a guess, never throttled
        auth = conn.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return False, None
        return self.try_token(self.client_ip(conn), auth[7:].strip())

    def allowed(self, conn: HTTPConnection) -> bool:
        return self.admit(conn)[0]

    def _cookie_ok(self, cookie: str) -> bool:
        try:
            data = self.signer.loads(cookie, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            return False
        expected = hmac.new(self.token.encode(), b"login", "sha256").hexdigest()[:16]
        return isinstance(data, dict) and hmac.compare_digest(str(data.get("t", "")), expected)

    def set_cookie(self, conn: HTTPConnection, response: Response) -> None:
        self.cookies.set(
            conn, response, LOGIN_COOKIE, self.cookie_value(), max_age=LOGIN_MAX_AGE, httponly=True, samesite="strict"
        )

    def delete_cookie(self, conn: HTTPConnection, response: Response) -> None:
        self.cookies.delete(conn, response, LOGIN_COOKIE, samesite="strict")


@dataclass(frozen=True)
class ResumeClaim:
    session_id: str
    nonce: str  # the session's resume nonce when the token was issued: a resume replaces it (spends the token)
    key_id: str  # the embed key the session runs under ("" = the page's own socket)


class ResumeTokens:
    """Signed, expiring proof that a socket may continue a session (given in `ready`). It is good once: resuming
    gives the session a new nonce (webapp/resume.py), and the new `ready` a new token."""

    MAX_AGE = 24 * 3600

    def __init__(self, secret_key: str):
        self.signer = URLSafeTimedSerializer(secret_key, salt="caption-relay.resume")

    def issue(self, session_id: str, nonce: str, key_id: str = "") -> str:
        return self.signer.dumps([session_id, nonce, key_id])

    def verify(self, token: str) -> ResumeClaim | None:
        if len(token) > 300:
            return None
        try:
            value = self.signer.loads(token, max_age=self.MAX_AGE)
        except BadSignature:
            return None
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
            return None  # also a token of an older version (a bare session id): that session starts afresh
        return ResumeClaim(*value)
