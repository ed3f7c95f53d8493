"""Webhooks (docs/outputs.md "webhook"): one JSON POST per caption (the finals, and a long turn's stable
beginning as `"final": false`), signed `X-Caption-Relay-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the output's secret>` so a receiver can check it came from here and is fresh."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import ClassVar

import httpx
import orjson

from . import posting
from .base import Caption

SIGNATURE = "X-Caption-Relay-Signature"
DELIVERY = "X-Caption-Relay-Delivery"  # this output's post number: the same on a retry, for receivers to dedupe


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(caption: Caption, seq: int) -> bytes:
    return orjson.dumps(
        {
            "type": "caption",
            "delivery": seq,
            "session": caption.session_id,
            "turn": caption.turn,
            "final": caption.final,
            "seq": caption.seq,
            "text": caption.text,
            "start": caption.start,
            "end": caption.end,
            "spoken_at": caption.spoken_at,
            "words": list(caption.words),
            "continues": caption.continues,
        }
    )


class WebhookDestination:
    kind: ClassVar[str] = "webhook"

    def __init__(self, url: str, secret: str, http: httpx.AsyncClient | None = None):
        self.url = url
        self.secret = secret
        self.http = http or posting.client()

    async def start(self) -> int | None:
        return None

    async def deliver(self, caption: Caption, seq: int) -> bool:
        body = payload(caption, seq)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE: sign(self.secret, int(time.time()), body),
            DELIVERY: str(seq),
        }
        await posting.send(self.http, "POST", self.url, content=body, headers=headers)
        return True

    def detail(self) -> str | None:
        return None

    async def close(self) -> None:
        await self.http.aclose()
