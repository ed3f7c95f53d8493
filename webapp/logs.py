"""Structured (one JSON object per line) logging that never prints a secret.

Use `log.info("event_name", extra={"fields": {...}})`; the formatter writes
{"ts":…, "level":…, "logger":…, "event":…, **fields}. A redaction pass replaces any configured secret
(API keys, access token, signing key) wherever it appears, and every bearer credential a URL, cookie or
Authorization header can carry (share links, resume tokens, embed keys, cookie values), as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

REDACTED = "[redacted]"
# Query parameters that carry a credential: ?resume= (resume token), ?key= (embed key), ?share= (share token)…
_QUERY = re.compile(
    r"(?i)([?&;](?:resume|key|share|token|api_key|apikey|access_token|auth|password|secret|sig)=)"
    r"[^&#\s\"'\\]*"
)
# Path segments that are tokens: /s/<share token>…, /v/<short link id>, /ws/watch/<share token>
_PATH = re.compile(r"(/s/|/v/|/ws/watch/)[^/?#\s\"'\\]+")
# Header values: everything after the name, to the end of the value (websockets' debug lines, tracebacks)
_HEADER = re.compile(
    r"(?i)\b((?:set-)?cookie|authorization|proxy-authorization|x-api-key)"
    r"(\\?[\"']?\s*[:=]\s*(?:\\?[\"'])?)[^\n\"\\]*"
)
# Our cookies and Bearer tokens wherever else they turn up
_COOKIE = re.compile(r"((?:__Host-)?cr_[a-z]+=)[^;,\s\"'\\]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"'\\,;]+")


def redact(text: str) -> str:
    """`text` with every credential-shaped value replaced (idempotent)."""
    text = _QUERY.sub(rf"\1{REDACTED}", text)
    text = _PATH.sub(rf"\1{REDACTED}", text)
    text = _HEADER.sub(rf"\1\2{REDACTED}", text)
    text = _COOKIE.sub(rf"\1{REDACTED}", text)
    return _BEARER.sub(rf"\1{REDACTED}", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = redact(json.dumps(entry, default=str, ensure_ascii=False))
        for secret in self.secrets:
            line = line.replace(secret, "[redacted]")
        return line


def setup(level: str = "info", secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # LOG_LEVEL=debug is this app's debug: libraries stay at info, for their debug lines dump what no log may
    # hold (websockets: every handshake header, Cookie and Authorization included, and every frame; aiosqlite:
    # every statement with its values).
    root.setLevel(max(logging.INFO, logging.getLevelName(level.upper())))
    logging.getLogger("webapp").setLevel(level.upper())
    # uvicorn's own loggers go through the same formatter (their socket lines name paths: redacted above).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def fields(**kw) -> dict:
    """Shorthand: log.info("x", extra=fields(a=1))."""
    return {"fields": kw}
