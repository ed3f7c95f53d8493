"""The HTTP side shared by the HTTP kinds (youtube, zoom, webhook): one httpx client per output (its own
connection pool, so a stalled receiver holds only its own connections), a timeout on every request, redirects
never followed, and what a response or a network failure means as a DeliveryError."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from .base import DeliveryError

# httpx logs every request's full URL at info level: output URLs are secrets (they carry the stream's key).
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

TIMEOUT = httpx.Timeout(5.0, connect=3.0)  # seconds: per request; a stalled receiver fails it and is retried
# seconds for a whole request: httpx's timeouts are per read, so an answer trickling a byte every few seconds
# would hold the output's post (and its captions) for ever
TOTAL_SECONDS = 10.0
MAX_ANSWER = 64 * 1024  # bytes of a receiver's answer read (Zoom's is a sequence number, YouTube's a timestamp)
USER_AGENT = "caption-relay (+https://github.com/caption-relay)"


@functools.cache
def tls() -> ssl.SSLContext:
    """One TLS context for every output's client (loading the CA bundle costs milliseconds of CPU each time)."""
    import certifi  # httpx's own CA bundle

    return ssl.create_default_context(cafile=certifi.where())


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=TIMEOUT,
        verify=tls(),
        follow_redirects=False,  # a redirect could lead anywhere: the allowlist checked only this URL
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        trust_env=False,  # no proxy from the environment: the allowlist is about where requests really go
    )


def with_params(url: str, **params: str | int) -> str:
    """The URL with these query parameters set (replacing any of the same name), the others kept in order."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after", "").strip()
    return min(float(raw), 300.0) if raw.isdigit() else None


async def _bounded(http: httpx.AsyncClient, method: str, url: str, **kw) -> httpx.Response:
    """The request's response with at most MAX_ANSWER bytes of its body read (decoded): a receiver's answer is a
    status and a short text, and reading all of a hostile one would hold it in memory (300 MB: +630 MB)."""
    async with http.stream(method, url, **kw) as streamed:
        body = bytearray()
        async for chunk in streamed.aiter_bytes():
            body += chunk
            if len(body) >= MAX_ANSWER:
                break
    headers = [
        (k, v)
        for k, v in streamed.headers.items()
        if k not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        streamed.status_code, headers=headers, content=bytes(body[:MAX_ANSWER]), request=streamed.request
    )


async def send(http: httpx.AsyncClient, method: str, url: str, retry_all: bool = False, **kw) -> httpx.Response:
    """One request; a 2xx response is returned, anything else raised as DeliveryError. 5xx, 408, 429 and
    network faults are retryable; other 4xx and redirects are not, unless `retry_all` (Zoom asks it)."""
    try:
        async with asyncio.timeout(TOTAL_SECONDS):
            response = await _bounded(http, method, url, **kw)
    except (httpx.TimeoutException, TimeoutError):
        raise DeliveryError("the receiver did not answer in time") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"could not reach the receiver ({type(exc).__name__})") from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    if 300 <= status < 400:
        raise DeliveryError(f"the receiver answered {status}, a redirect (not followed)", retryable=False)
    retryable = retry_all or status >= 500 or status in (408, 425, 429)
    raise DeliveryError(f"the receiver answered {status}", retryable=retryable, retry_after=retry_after(response))
