"""The embeddable widget (docs/embed.md): signed embed keys naming the sites that may frame /embed, their
revocation list in DATA_DIR, the per-key stream limit, and the widget's pages (/embed, /embed/snippet).

An embed key is itsdangerous-signed {id, origins, mode, expiry, max_streams}. It is not a secret (it sits in the
host page's HTML): it is the server's signed statement of which sites may frame the widget, checked by the
browser through `frame-ancestors`. Revoking records the key's id in DATA_DIR/embed_revoked.json, which the
running app re-reads whenever the file changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import html
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from . import protocol
from .config import ConfigError, Settings, _origin
from .links import ShareLinks
from .logs import fields
from .security import PAGE_CSP

log = logging.getLogger(__name__)

EMBED_SALT = "caption-relay.embed"
MODES = ("capture", "view")
REVOKED_FILE = "embed_revoked.json"
DEFAULT_TTL_DAYS = 365.0
MAX_TTL_DAYS = 3650.0
MAX_ORIGINS = 20
MAX_KEY_CHARS = 2000
REVOKE_POLL_S = 2.0  # how soon a revocation ends sessions already running

THEMES = ("light", "dark", "transparent")
FONT_SIZE = (10, 96)
LINES = (1, 10)
QUERY_NAMES = ("key", "share", "theme", "font_size", "lines", "lang")
_LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}")
# Stricter than config._origin: these go verbatim into a CSP header, so only host characters are allowed.
_ORIGIN = re.compile(
    r"https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)(:\d{1,5})?"
)
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{8,32}")

NOINDEX = {"X-Robots-Tag": "noindex, nofollow", "Cache-Control": "no-store"}
MIC_POLICY = "microphone=(self), screen-wake-lock=(self), camera=(), geolocation=()"
NO_MIC_POLICY = "microphone=(), screen-wake-lock=(self), camera=(), geolocation=()"


def parse_origin(value: str) -> str:
    """'https://A.example/' -> 'https://a.example'; raises ValueError naming the problem."""
    origin = _origin(value, "--origin")
    if not _ORIGIN.fullmatch(origin):
        raise ConfigError(
            f"--origin: {value!r} is not an origin; use the form https://example.org "
            "(scheme and host, optional port; no wildcards, user names or paths)"
        )
    return origin


def frame_csp(ancestors: str) -> str:
    """The page CSP with its frame-ancestors replaced."""
    head, sep, _ = PAGE_CSP.rpartition("frame-ancestors ")
    assert sep, "PAGE_CSP must end with frame-ancestors"
    return f"{head}frame-ancestors {ancestors}"


# ---- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedKey:
    id: str
    origins: tuple[str, ...]
    mode: str
    expires: int  # Unix seconds
    max_streams: int  # 0 = no per-key limit

    @property
    def ancestors(self) -> str:
        # 'self' too, so the snippet page's live preview (served from here) can frame it.
        return " ".join(("'self'", *self.origins))


@dataclass(frozen=True)
class KeyCheck:
    status: str  # ok, missing, invalid, expired, revoked
    key: EmbedKey | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def usable(self) -> EmbedKey | None:
        """The key when it may be used (status ok), else None."""
        return self.key if self.ok else None


KEY_PROBLEMS = {
    "missing": "This caption widget needs an embed key: its address must end in ?key=… "
    "(the site owner mints one with `./scripts/caption-relay embed-key`).",
    "invalid": "This embed key is not valid: it may have been cut short or changed when it was copied.",
    "expired": "This embed key has expired. The site owner can mint a new one with `./scripts/caption-relay embed-key`.",
    "revoked": "This embed key was revoked, so the captions cannot be shown here.",
}


class Revocations:
    """Revoked key ids in DATA_DIR/embed_revoked.json, re-read whenever the file changes (no restart needed)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / REVOKED_FILE
        self.stamp: tuple[int, int, int] | None = None
        self.ids: frozenset[str] = frozenset()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.stamp, self.ids = None, frozenset()
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # the inode changes on every os.replace
        if stamp == self.stamp:
            return
        try:
            data = json.loads(self.path.read_text())
            self.ids = frozenset(data.get("revoked", {}))
        except (OSError, ValueError, AttributeError) as exc:
            # Keep the last good list rather than un-revoking every key because of a bad write.
            log.error("embed_revocations_unreadable", extra=fields(path=str(self.path), error=repr(exc)))
        self.stamp = stamp

    def revoked(self, key_id: str) -> bool:
        self._refresh()
        return key_id in self.ids

    def add(self, key_id: str) -> bool:
        """Record a revocation (atomically); False when it was already revoked."""
        data: dict[str, Any] = {"revoked": {}}
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(self.path.read_text())
        if key_id in data.setdefault("revoked", {}):
            return False
        data["revoked"][key_id] = int(time.time())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{REVOKED_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        return True


class EmbedKeys:
    def __init__(self, secret_key: str, data_dir: str | Path):
        self.serializer = URLSafeSerializer(secret_key, salt=EMBED_SALT)
        self.revocations = Revocations(data_dir)

    def mint(
        self,
        origins: Iterable[str],
        mode: str = "capture",
        ttl_days: float = DEFAULT_TTL_DAYS,
        max_streams: int = 0,
        now: float | None = None,
    ) -> str:
        clean = list(dict.fromkeys(parse_origin(o) for o in origins))
        if not clean:
            raise ConfigError("name at least one site with --origin https://your.site")
        if len(clean) > MAX_ORIGINS:
            raise ConfigError(f"at most {MAX_ORIGINS} origins per key; mint several keys instead")
        if mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}")
        if not 0 < ttl_days <= MAX_TTL_DAYS:  # also refuses nan
            raise ConfigError(f"--ttl must be more than 0 and at most {MAX_TTL_DAYS:g} days")
        if not 0 <= max_streams <= 100000:
            raise ConfigError("--max-streams must be from 0 (no limit) to 100000")
        if max_streams and mode != "capture":
            raise ConfigError("--max-streams limits capture keys; a view key opens no audio streams")
        expires = int((time.time() if now is None else now) + ttl_days * 86400)
        return self.serializer.dumps(
            {"id": secrets.token_urlsafe(9), "o": clean, "m": mode, "x": expires, "n": max_streams}
        )

    def _decode(self, token: str) -> EmbedKey | None:
        """The key's contents if the signature is good, whatever its expiry or revocation."""
        if not token or len(token) > MAX_KEY_CHARS:
            return None
        try:
            data = self.serializer.loads(token)
        except BadSignature:
            return None
        try:
            key = EmbedKey(data["id"], tuple(data["o"]), data["m"], data["x"], data["n"])
        except (KeyError, TypeError):
            return None
        valid = (
            isinstance(key.id, str)
            and _KEY_ID.fullmatch(key.id)
            and key.mode in MODES
            and 0 < len(key.origins) <= MAX_ORIGINS
            and all(isinstance(o, str) and _ORIGIN.fullmatch(o) for o in key.origins)
            and all(type(v) is int and v >= 0 for v in (key.expires, key.max_streams))
        )
        return key if valid else None

    def check(self, token: str | None) -> KeyCheck:
        if token is None:
            return KeyCheck("missing")
        key = self._decode(token)
        if key is None:
            return KeyCheck("invalid")
        if self.revocations.revoked(key.id):
            return KeyCheck("revoked", key)
        if key.expires < time.time():
            return KeyCheck("expired", key)
        return KeyCheck("ok", key)

    def revoke(self, key_or_id: str) -> tuple[str, bool]:
        """Revoke a key (given whole, or by its id); returns (id, newly revoked). Raises ConfigError."""
        key = self._decode(key_or_id.strip())
        if key is not None:
            key_id = key.id
        elif _KEY_ID.fullmatch(key_or_id.strip()):
            key_id = key_or_id.strip()
        else:
            raise ConfigError(
                "--revoke: that is neither a key signed by this server nor a key id "
                "(check SECRET_KEY / DATA_DIR are the server's)"
            )
        return key_id, self.revocations.add(key_id)


# ---- the widget's query ----------------------------------------------------------------------------


class EmbedParamError(ValueError):
    """A query parameter of /embed is invalid; str() names it and says what is allowed."""


@dataclass(frozen=True)
class WidgetQuery:
    key: str | None
    share: str | None
    theme: str = "light"  # the presentation defaults: what a query that leaves them out gets
    font_size: int = 20
    lines: int = 3
    lang: str = "en"

    def presentation(self) -> list[tuple[str, str]]:
        """The presentation parameters that differ from the defaults, in a stable order."""
        out = []
        for name in ("theme", "font_size", "lines", "lang"):
            value = getattr(self, name)
            if value != getattr(DEFAULTS, name):
                out.append((name, str(value)))
        return out


DEFAULTS = WidgetQuery(None, None)


def _bounded(name: str, raw: str, lo: int, hi: int, unit: str = "") -> int:
    value = protocol.whole_number(raw)
    if value is None or not lo <= value <= hi:
        raise EmbedParamError(f"{name} must be a whole number from {lo} to {hi}{unit} (got {raw[:20]!r})")
    return value


def parse_query(items: Iterable[tuple[str, str]]) -> WidgetQuery:
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in QUERY_NAMES:
            raise EmbedParamError(f"unknown parameter {name[:40]!r}; allowed: {', '.join(QUERY_NAMES)}")
        if name in seen:
            raise EmbedParamError(f"parameter {name!r} given twice")
        seen[name] = value.strip()
    theme = seen.get("theme", DEFAULTS.theme)
    if theme not in THEMES:
        raise EmbedParamError(f"theme must be one of {', '.join(THEMES)} (got {theme[:20]!r})")
    font_size = DEFAULTS.font_size
    if "font_size" in seen:
        font_size = _bounded("font_size", seen["font_size"], *FONT_SIZE, " (pixels)")
    lines = _bounded("lines", seen["lines"], *LINES) if "lines" in seen else DEFAULTS.lines
    lang = seen.get("lang", DEFAULTS.lang)
    if not _LANG.fullmatch(lang):
        raise EmbedParamError(f"lang must be a language tag such as en, en-GB or pt-BR (got {lang[:20]!r})")
    share = seen.get("share")
    if share is not None and not share:
        raise EmbedParamError("share is empty; give the token of a share link (the part after /s/)")
    return WidgetQuery(seen.get("key"), share, theme, font_size, lines, lang)


# ---- per-key stream limit and live revocation -------------------------------------------------------


class EmbedRefused(Exception):
    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


class Slot:
    """One admitted widget stream; release() gives it back (idempotent)."""

    def __init__(self, owner: Embeds | None = None, key: EmbedKey | None = None, session: Any = None):
        self.owner, self.key, self.session = owner, key, session

    def release(self) -> None:
        if self.owner is not None:
            self.owner._release(self)
            self.owner = None


SOCKET_CODES = {"invalid": "embed_key_invalid", "expired": "embed_key_expired", "revoked": "embed_key_revoked"}


# ---- pages and socket hooks --------------------------------------------------------------------------


class Embeds:
    def __init__(self, settings: Settings, secret_key: str, templates: Jinja2Templates):
        self.settings = settings
        self.keys = EmbedKeys(secret_key, settings.data_dir)
        self.links = ShareLinks(secret_key, settings.share_ttl_days)
        self.templates = templates
        self.active: dict[str, set[Slot]] = {}
        self.watcher: asyncio.Task | None = None

    # ---- /ws/listen hooks (admission.py) -----------------------------------------------------------

    def socket_key(self, raw: str | None) -> EmbedKey | None:
        """The capture key a widget socket carries (None when it carries none). Raises EmbedRefused."""
        if raw is None:
            return None
        check = self.keys.check(raw)
        key = check.usable
        if key is None:
            log.info(
                "embed_socket_refused", extra=fields(status=check.status, key_id=check.key.id if check.key else None)
            )
            raise EmbedRefused(SOCKET_CODES[check.status], KEY_PROBLEMS[check.status])
        if key.mode != "capture":
            raise EmbedRefused(
                "embed_key_view_only", "This embed key only shows shared transcripts; it cannot caption a microphone."
            )
        return key

    def take_slot(self, key: EmbedKey | None, session: Any) -> Slot:
        """Admit one stream under the key's --max-streams; the slot also lets a revocation end the session."""
        if key is None:
            return Slot()
        held = self.active.setdefault(key.id, set())
        if key.max_streams and len(held) >= key.max_streams:
            log.info("embed_streams_refused", extra=fields(key_id=key.id, max_streams=key.max_streams))
            raise EmbedRefused(
                "too_many_streams",
                f"This site's captions are limited to {key.max_streams} live "
                "session(s) at once. Try again in a minute.",
                retry_after=60,
            )
        slot = Slot(self, key, session)
        held.add(slot)
        if self.watcher is None or self.watcher.done():
            self.watcher = asyncio.create_task(self._watch_revocations(), name="embed-revocations")
        return slot

    def _release(self, slot: Slot) -> None:
        assert slot.key is not None  # take_slot gives an owner only to slots with a key
        held = self.active.get(slot.key.id)
        if held is not None:
            held.discard(slot)
            if not held:
                del self.active[slot.key.id]

    async def _watch_revocations(self) -> None:
        """While widget streams run, end those whose key gets revoked (polls the file's stat: cheap)."""
        while self.active:
            await asyncio.sleep(REVOKE_POLL_S)
            for key_id, held in list(self.active.items()):
                if self.keys.revocations.revoked(key_id):
                    for slot in list(held):
                        log.info("embed_session_revoked", extra=fields(key_id=key_id))
                        slot.session.request_stop(
                            "embed_key_revoked",
                            protocol.error("embed_key_revoked", KEY_PROBLEMS["revoked"], retryable=False),
                        )

    # ---- pages -----------------------------------------------------------------------------------

    def _page(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        ancestors: str | None = "'none'",
        mic: bool = False,
    ) -> Response:
        headers = dict(NOINDEX)
        if ancestors is not None:  # None: the usual page CSP (frame-ancestors 'self') from SecurityHeaders
            headers["Content-Security-Policy"] = frame_csp(ancestors)
        headers["Permissions-Policy"] = MIC_POLICY if mic else NO_MIC_POLICY
        return self.templates.TemplateResponse(request, template, context, status_code=status, headers=headers)

    def _problem(
        self,
        request: Request,
        status: int,
        title: str,
        message: str,
        query: WidgetQuery | None = None,
        ancestors: str = "'none'",
    ) -> Response:
        return self._page(
            request,
            "embed_error.html",
            {
                "title": title,
                "message": message,
                "theme": query.theme if query else "light",
                "lang": query.lang if query else "en",
            },
            status=status,
            ancestors=ancestors,
        )

    def _refused_key(self, request: Request, check: KeyCheck, query: WidgetQuery | None) -> Response:
        log.info(
            "embed_refused",
            extra=fields(status=check.status, key_id=check.key.id if check.key else None, path=request.url.path),
        )
        title = "Captions not available here" if check.status != "revoked" else "This embed key was revoked"
        return self._problem(request, 403, title, KEY_PROBLEMS[check.status], query)

    async def widget(self, request: Request) -> Response:
        items = request.query_params.multi_items()
        raw_key = next((v for k, v in items if k == "key"), None)
        check = self.keys.check(raw_key)
        key = check.usable
        try:
            query = parse_query(items)
        except EmbedParamError as exc:
            # Framable by the key's sites when the key is good, so the site owner sees the mistake in place.
            return self._problem(
                request,
                400,
                "This caption widget's address has a mistake",
                str(exc),
                ancestors=key.ancestors if key else "'none'",
            )
        if query.share is not None:
            return self._view(request, query, query.share, check)
        if key is None:
            return self._refused_key(request, check, query)
        if key.mode != "capture":
            return self._problem(
                request,
                400,
                "This key only shows shared transcripts",
                "Add &share=… (the token of a share link, the part after /s/) to show a live transcript.",
                query,
                ancestors=key.ancestors,
            )
        return self._page(
            request, "embed.html", self._context(query, key, "capture"), ancestors=key.ancestors, mic=True
        )

    def _view(self, request: Request, query: WidgetQuery, share: str, check: KeyCheck) -> Response:
        # View mode without a key: this server's own pages, and top-level use (an OBS browser source) only.
        key = check.usable
        if check.status == "missing":
            ancestors = "'self'"
        elif key is not None:
            ancestors = key.ancestors
        else:
            return self._refused_key(request, check, query)
        link = self.links.check(share)
        if link.status != "ok":
            expired = link.status == "expired"
            return self._problem(
                request,
                410 if expired else 404,
                "This caption link has expired" if expired else "This caption link does not work",
                "Ask the person who shared it for a new link."
                if expired
                else "It may have been mistyped or cut short. Ask the person who shared it for the link again.",
                query,
                ancestors=ancestors,
            )
        return self._page(request, "embed.html", self._context(query, key, "view"), ancestors=ancestors)

    def _context(self, query: WidgetQuery, key: EmbedKey | None, mode: str) -> dict[str, Any]:
        return {
            "q": query,
            "mode": mode,
            "key": key,
            "raw_key": query.key or "",
            "origins": " ".join(key.origins) if key else "",
            "watch": f"/ws/watch/{query.share}" if query.share else "",
        }

    async def snippet(self, request: Request) -> Response:
        """The exact <iframe> tag for a key, with a live preview; an ordinary page of this site."""
        items = request.query_params.multi_items()
        try:
            query = parse_query(items)
        except EmbedParamError as exc:
            return self._problem(request, 400, "This snippet address has a mistake", str(exc), ancestors="'self'")
        check = self.keys.check(query.key)
        key = check.usable
        if key is None or query.key is None:  # (query.key is set whenever key is)
            return self._refused_key(request, check, query)
        params = [("key", query.key), *query.presentation()]
        needs_share = key.mode == "view" and query.share is None
        if query.share is not None or needs_share:
            params.append(("share", query.share or "SHARE_TOKEN"))
        src = f"{str(request.base_url).rstrip('/')}/embed?{urlencode(params)}"
        allow = ' allow="microphone; screen-wake-lock"' if key.mode == "capture" and query.share is None else ""
        tag = (
            f'<iframe src="{html.escape(src)}"{allow} style="border:0;width:100%;height:160px" '
            'title="Live captions"></iframe>'
        )
        return self._page(
            request,
            "embed_snippet.html",
            {
                "tag": tag,
                "key": key,
                "key_id": key.id,
                "preview": None if needs_share else f"/embed?{urlencode(params)}",
                "allow": "microphone; screen-wake-lock" if allow else "",
                "needs_share": needs_share,
                "expires": dt.datetime.fromtimestamp(key.expires, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            },
            ancestors=None,
            mic=True,
        )


# ---- command line: `caption-relay embed-key` --------------------------------------------------------


def add_cli(sub) -> None:
    p = sub.add_parser(
        "embed-key",
        help="mint a key that lets the listed sites embed the /embed widget, or --revoke one",
        description="Prints a key for /embed?key=…; the listed origins may frame the widget (docs/embed.md).\n"
        "It is signed with the server's SECRET_KEY (or the one kept in DATA_DIR): run it with the server's settings.",
        epilog="examples:\n"
        "  ./scripts/caption-relay embed-key --origin https://www.example.org\n"
        "  ./scripts/caption-relay embed-key --origin https://a.example --origin https://b.example --mode view --ttl 7\n"
        "  ./scripts/caption-relay embed-key --revoke KEY_OR_ID",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="URL",
        help="a site that may embed the widget, e.g. https://www.example.org (repeat for several)",
    )
    p.add_argument(
        "--ttl",
        type=float,
        default=DEFAULT_TTL_DAYS,
        metavar="DAYS",
        help=f"days the key works (default {DEFAULT_TTL_DAYS:g})",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="capture",
        help="capture: visitors caption their microphone; view: show a shared live transcript (default capture)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=0,
        metavar="N",
        help="most live capture sessions at once under this key (default 0 = no per-key limit)",
    )
    p.add_argument("--revoke", metavar="KEY", help="revoke a key (the whole key, or its id); takes effect at once")


def cli(args: argparse.Namespace, settings: Settings) -> int:
    from .security import load_secret_key

    keys = EmbedKeys(load_secret_key(settings), settings.data_dir)
    try:
        if args.revoke:
            key_id, new = keys.revoke(args.revoke)
            print(f"embed key {key_id} {'revoked' if new else 'was already revoked'}", file=sys.stderr)
            return 0
        key = keys.mint(args.origin, args.mode, args.ttl, args.max_streams)
    except ConfigError as exc:
        print(f"caption-relay embed-key: {exc}", file=sys.stderr)
        return 2
    decoded = keys._decode(key)
    assert decoded is not None  # minted just now
    print(key)  # stdout holds only the key, for scripts
    print(
        f"key id {decoded.id} · mode {decoded.mode} · origins {' '.join(decoded.origins)} · expires "
        f"{dt.datetime.fromtimestamp(decoded.expires, dt.UTC):%Y-%m-%d}"
        f"{f' · at most {decoded.max_streams} streams' if decoded.max_streams else ''}\n"
        f"snippet: https://<this server>/embed/snippet?key={key}",
        file=sys.stderr,
    )
    return 0
