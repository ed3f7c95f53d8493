"""Share links and the owner credential.

A share token is itsdangerous-signed [session_id, version] with its mint time; it expires after SHARE_TTL.
Revoking bumps the session's share_version, so every earlier token stops matching (404) without keeping a
deny list. A short link /v/<short id> is a random id the store maps to the session's current token: "Turn off
link" and "New link" replace it with the token, and deleting the session removes it. The owner credential is the signed HttpOnly `cr_owner` cookie (`__Host-cr_owner`, Secure, over HTTPS)
holding a random owner id: the page response sets it, the capture socket's handshake carries it, and the session
records it.
"""

from __future__ import annotations

import hmac
import re
import secrets
import string
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

from .security import Cookies

OWNER_COOKIE = "cr_owner"
OWNER_MAX_AGE = 400 * 24 * 3600  # the longest lifetime browsers honour
SHARE_SALT = "caption-relay.share"
SHORT_CHARS = 10  # base62: 59 random bits, as a link that people type from a slide
SHORT_ALPHABET = string.digits + string.ascii_letters
SHORT_ID = re.compile(f"[0-9A-Za-z]{{{SHORT_CHARS}}}", re.ASCII)


def short_id() -> str:
    return "".join(secrets.choice(SHORT_ALPHABET) for _ in range(SHORT_CHARS))


def share_urls(token: str, short: str | None) -> dict[str, str]:
    """The `share_url` (the signed token's) and, when there is one, the `short_url` of a session's link."""
    return {"share_url": f"/s/{token}", **({"short_url": f"/v/{short}"} if short else {})}


@dataclass(frozen=True)
class TokenCheck:
    status: str  # "ok", "expired" or "invalid"
    session_id: str = ""
    version: int = -1


class ShareLinks:
    def __init__(self, secret_key: str, ttl_days: float):
        self.secret_key = secret_key
        self.max_age = int(
            ttl_days * 86400
        )  # signature ages are whole seconds, so dropping the fraction changes nothing
        self.serializer = URLSafeTimedSerializer(secret_key, salt=SHARE_SALT)

    def mint(self, session_id: str, version: int, now: float | None = None) -> str:
        if now is None:
            return self.serializer.dumps([session_id, version])
        # A token as it would have been minted at `now` (used for tests of expiry and for tools).
        at = now

        class At(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(at)

        return URLSafeTimedSerializer(self.secret_key, salt=SHARE_SALT, signer=At).dumps([session_id, version])

    def check(self, token: str) -> TokenCheck:
        if len(token) > 200:
            return TokenCheck("invalid")
        try:
            data = self.serializer.loads(token, max_age=self.max_age)
        except SignatureExpired:
            return TokenCheck("expired")  # raised only once the signature itself is valid
        except BadSignature:
            return TokenCheck("invalid")
        if (
            not isinstance(data, list)
            or len(data) != 2
            or not isinstance(data[0], str)
            or not isinstance(data[1], int)
            or isinstance(data[1], bool)
        ):
            return TokenCheck("invalid")
        return TokenCheck("ok", data[0], data[1])


class Owners:
    def __init__(self, secret_key: str, cookies: Cookies):
        self.serializer = URLSafeSerializer(secret_key, salt="caption-relay.owner")
        self.cookies = cookies
        self.form_key = hmac.new(secret_key.encode(), b"caption-relay.form", "sha256").digest()

    def form_token(self, owner: str, session_id: str) -> str:
        """The hidden field of the /sessions forms: only a page this server rendered for this owner has it."""
        return hmac.new(self.form_key, f"{owner}|{session_id}".encode(), "sha256").hexdigest()[:32]

    def form_token_ok(self, owner: str | None, session_id: str, token: str) -> bool:
        return owner is not None and hmac.compare_digest(self.form_token(owner, session_id).encode(), token.encode())

    def _load(self, raw: str | None) -> str | None:
        if not raw or len(raw) > 200:
            return None
        try:
            value = self.serializer.loads(raw)
        except BadSignature:
            return None
        return value if isinstance(value, str) and value else None

    def read(self, conn: HTTPConnection) -> str | None:
        """The owner id of the first good cookie (`__Host-cr_owner`, then `cr_owner`)."""
        return next((o for raw in self.cookies.values(conn, OWNER_COOKIE) if (o := self._load(raw))), None)

    def ensure_cookie(self, conn: HTTPConnection, response: Response) -> str:
        """Give this browser an owner id if it has none (or a forged one); returns the id. A browser whose cookie is
        under the other name (`cr_owner` from before, now over HTTPS) gets it under this scheme's name, same id."""
        name = self.cookies.name(conn, OWNER_COOKIE)
        owner = self._load(conn.cookies.get(name))
        if owner is None:
            owner = self.read(conn) or secrets.token_urlsafe(16)
            self.cookies.set(
                conn,
                response,
                OWNER_COOKIE,
                self.serializer.dumps(owner),
                max_age=OWNER_MAX_AGE,
                httponly=True,
                samesite="lax",
            )
            if name != OWNER_COOKIE and conn.cookies.get(OWNER_COOKIE):
                response.delete_cookie(OWNER_COOKIE, path="/")  # moved to __Host-cr_owner
        return owner
