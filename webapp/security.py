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

from .config import Settings

LOGIN_COOKIE = "cr_login"
LOGIN_MAX_AGE = 30 * 24 * 3600

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
    def __init__(self, settings: Settings, secret_key: str):
        self.token = settings.access_token
        self.signer = URLSafeTimedSerializer(secret_key, salt="caption-relay.login")

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
        cookie = conn.cookies.get(LOGIN_COOKIE)
        if not cookie:
            return False
        try:
            data = self.signer.loads(cookie, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            return False
        expected = hmac.new(self.token.encode(), b"login", "sha256").hexdigest()[:16]
        return isinstance(data, dict) and hmac.compare_digest(str(data.get("t", "")), expected)


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
