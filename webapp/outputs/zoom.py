"""Zoom's third-party closed-caption API (docs/outputs.md "zoom"): POST the text as plain UTF-8 to the meeting's
API-token URL with `&seq=N&lang=…`; on start, `GET …/closedcaption/seq?<same query>` gives the last seq Zoom
accepted so a restarted output continues after it. Zoom asks that every error be retried with backoff."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from . import posting
from .base import Caption, DeliveryError

DEFAULT_LANG = "en-US"


def seq_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/seq"))


class ZoomDestination:
    kind: ClassVar[str] = "zoom"

    def __init__(self, url: str, lang: str = DEFAULT_LANG, http: httpx.AsyncClient | None = None):
        self.url = url
        self.lang = lang
        self.http = http or posting.client()

    async def start(self) -> int | None:
        response = await posting.send(self.http, "GET", seq_url(self.url), retry_all=True)
        raw = response.text.strip()
        if not raw.isdigit():
            raise DeliveryError("Zoom's seq answer was not a number")
        return int(raw)

    async def deliver(self, caption: Caption, seq: int) -> bool:
        await posting.send(
            self.http,
            "POST",
            posting.with_params(self.url, seq=seq, lang=self.lang),
            content=" ".join(caption.text.split()).encode(),
            headers={"Content-Type": "text/plain"},
            retry_all=True,
        )
        return True

    def detail(self) -> str | None:
        return None

    async def close(self) -> None:
        await self.http.aclose()
