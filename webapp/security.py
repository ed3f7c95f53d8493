"""Who may use the relay: page security headers, the audio socket's Origin check, and the optional
ACCESS_TOKEN login (a signed HttpOnly cookie for browsers, `Authorization: Bearer` for other clients).
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

from .config import Settings
from .quotas import Quotas

LOGIN_COOKIE = "cr_login"
LOGIN_MAX_AGE = 30 * 24 * 3600
HOST_PREFIX = "__Host-"  # a browser takes such a cookie only Secure, Path=/ and without Domain

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
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

    def __init__(self, settings: Settings):
        self._trusted = Quotas(settings)._trusted  # the one judgement of TRUSTED_PROXIES (webapp/quotas.py)

    def https(self, conn: HTTPConnection) -> bool:
        if conn.url.scheme in ("https", "wss"):
            return True
        if not self._trusted(conn.client.host if conn.client else ""):
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

    def delete(self, conn: HTTPConnection, response: Response, name: str, samesite: str = "lax") -> None:
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


class Login:
    def __init__(self, settings: Settings, secret_key: str, cookies: Cookies | None = None):
        self.token = settings.access_token
        self.signer = URLSafeTimedSerializer(secret_key, salt="caption-relay.login")
        self.cookies = cookies or Cookies(settings)

    @property
    def required(self) -> bool:
        return bool(self.token)

    def check_token(self, candidate: str) -> bool:
        return bool(self.token) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def cookie_value(self) -> str:
        # Bound to a digest of the token so changing ACCESS_TOKEN logs every browser out.
        return self.signer.dumps({"t": hmac.new(self.token.encode(), b"login", "sha256").hexdigest()[:16]})

    def allowed(self, conn: HTTPConnection) -> bool:
        if not self.required:
            return True
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self.check_token(auth[7:].strip()):
            return True
        return any(self._cookie_ok(c) for c in self.cookies.values(conn, LOGIN_COOKIE))

    def _cookie_ok(self, cookie: str) -> bool:
        try:
            data = self.signer.loads(cookie, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            return False
        expected = hmac.new(self.token.encode(), b"login", "sha256").hexdigest()[:16]
        return isinstance(data, dict) and hmac.compare_digest(str(data.get("t", "")), expected)

    def set_cookie(self, conn: HTTPConnection, response: Response) -> None:
        self.cookies.set(conn, response, LOGIN_COOKIE, self.cookie_value(), max_age=LOGIN_MAX_AGE, httponly=True,
                         samesite="strict")

    def delete_cookie(self, conn: HTTPConnection, response: Response) -> None:
        self.cookies.delete(conn, response, LOGIN_COOKIE, samesite="strict")


class ResumeTokens:
    """Signed, expiring proof that a socket may continue a session (given in `ready`)."""

    MAX_AGE = 24 * 3600

    def __init__(self, secret_key: str):
        self.signer = URLSafeTimedSerializer(secret_key, salt="caption-relay.resume")

    def issue(self, session_id: str) -> str:
        return self.signer.dumps(session_id)

    def verify(self, token: str) -> str | None:
        try:
            value = self.signer.loads(token, max_age=self.MAX_AGE)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None
