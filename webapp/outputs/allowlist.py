"""Which URLs an output may reach (no server-side request forgery): the built-in caption endpoints of YouTube
and Zoom, and the URL prefixes an operator lists in OUTPUT_ALLOWED_URLS. Pure: no DNS, no I/O."""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

# kind -> the built-in (scheme, host, path) each may post to; YouTube documents http as well as https.
BUILT_IN: dict[str, tuple[tuple[str, str, str], ...]] = {
    "youtube": (("https", "upload.youtube.com", "/closedcaption"), ("http", "upload.youtube.com", "/closedcaption")),
    "zoom": (("https", "wmcapi.zoom.us", "/closedcaption"),),
}
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_URL = 2000


class Refused(ValueError):
    """A URL an output may not use; the message names the rule and says what to do (never repeats the URL)."""


def _port(parts: SplitResult) -> int | None:
    return parts.port or DEFAULT_PORTS.get(parts.scheme)


def _under(parts: SplitResult, prefix: str) -> bool:
    allowed = urlsplit(prefix)
    if (parts.scheme, parts.hostname, _port(parts)) != (allowed.scheme, allowed.hostname, _port(allowed)):
        return False
    base = allowed.path
    if not base or base == "/":
        return True
    # On a path-segment boundary: /captions allows /captions and /captions/x, not /captions-evil.
    return parts.path == base.rstrip("/") or parts.path.startswith(base if base.endswith("/") else base + "/")


def check(kind: str, url: str, allowed_prefixes: tuple[str, ...], schemes: tuple[str, ...]) -> SplitResult:
    """The parsed URL if an output of `kind` may use it, else Refused saying which rule it breaks."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise Refused(f"url: give the destination's URL (at most {MAX_URL} characters)")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Refused("url: not a valid URL") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise Refused(f"url: a {kind} output needs a {' or '.join(s + '://' for s in schemes)} URL")
    if "@" in parts.netloc:
        raise Refused("url: user names or passwords in the URL are not allowed")
    if parts.fragment:
        raise Refused("url: remove the #fragment")
    if any(seg in (".", "..") for seg in unquote(parts.path).replace("\\", "/").split("/")):
        # httpx (and receivers) resolve dot segments: /captions/../admin would post to /admin
        raise Refused("url: remove the . and .. path segments")
    host = parts.hostname.lower()
    for scheme, built_host, path in BUILT_IN.get(kind, ()):
        if parts.scheme == scheme and host == built_host and _port(parts) == DEFAULT_PORTS[scheme]:
            if parts.path in (path, path + "/"):
                return parts
    if any(_under(parts, p) for p in allowed_prefixes):
        return parts
    built = [f"{s}://{h}{p}" for s, h, p in BUILT_IN.get(kind, ()) if s == "https"]
    where = f"{kind} outputs post only to {built[0]} and " if built else "this server posts only to "
    raise Refused(
        f"url: not allowed: {where}the URL prefixes its operator lists in OUTPUT_ALLOWED_URLS (ask them to add it)"
    )


def mask(url: str) -> str:
    """An output URL as shown back: scheme, host and first path segment; query values and the rest hidden
    (caption URLs carry their credential in the query, webhook URLs often in the path)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    path = "/" + segments[0] if segments else ""
    if len(segments) > 1:
        path += "/…"
    query = "&".join(f"{kv.split('=', 1)[0]}=…" for kv in parts.query.split("&") if kv) if parts.query else ""
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{path}" + (f"?{query}" if query else "")
