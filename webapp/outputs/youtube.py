"""YouTube Live's caption ingestion (docs/outputs.md "youtube"): POST to the stream's ingestion URL with
`&seq=N` (one more per new post, the same on a retry); the body is the UTC time the words were spoken as
`YYYY-MM-DDTHH:MM:SS.mmm`, a newline, the caption text, a newline; `Content-Type: text/plain`, no charset."""

from __future__ import annotations

import datetime as dt
import time
from typing import ClassVar

import httpx

from . import posting
from .base import Caption


def timestamp(epoch: float) -> str:
    when = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


OLDEST = 30.0  # seconds: YouTube drops captions stamped ~60 s off its clock; a late one (a resumed session, a
# receiver back from an outage) is stamped at most this far in the past so it is still shown


def body(caption: Caption, now: float | None = None) -> bytes:
    text = " ".join(caption.text.split())  # one line: a newline in the text would start a new caption
    stamp = max(caption.spoken_at, (time.time() if now is None else now) - OLDEST)
    return f"{timestamp(stamp)}\n{text}\n".encode()


class YoutubeDestination:
    kind: ClassVar[str] = "youtube"

    def __init__(self, url: str, http: httpx.AsyncClient | None = None):
        self.url = url
        self.http = http or posting.client()
        self.last: tuple[int, bytes] | None = None  # a retry of post `seq` sends the very same body

    async def start(self) -> int | None:
        return None  # YouTube does not say which seq it has; the stored cursor is the truth

    async def deliver(self, caption: Caption, seq: int) -> bool:
        if self.last is None or self.last[0] != seq:
            self.last = (seq, body(caption))
        await posting.send(
            self.http,
            "POST",
            posting.with_params(self.url, seq=seq),
            content=self.last[1],
            headers={"Content-Type": "text/plain"},
        )
        return True

    def detail(self) -> str | None:
        return None

    async def close(self) -> None:
        await self.http.aclose()
