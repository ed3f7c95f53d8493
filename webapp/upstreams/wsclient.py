"""What the remote (WebSocket) recognizers share: connecting with server-side auth, mapping refused
handshakes to error codes, a reader task, a silence/keep-alive watchdog, and Flux TurnInfo mapping.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .. import protocol
from .base import Upstream, UpstreamError, handshake_error

log = logging.getLogger(__name__)

WATCHDOG_TICK = 0.25     # seconds between watchdog checks
SILENCE_AFTER = 0.5      # send silence once the microphone paused this long inside an open turn


def build_url(base: str, query: list[tuple[str, str]]) -> str:
    """Base URL from settings + parameters we chose and encoded (never a client's raw query string)."""
    return f"{base}?{urlencode(query)}"


def flux_words(raw: Any) -> list[dict]:
    if not isinstance(raw, list):
        return []
    return [protocol.word(str(w.get("word", "")), w.get("start"), w.get("end"), w.get("confidence"))
            for w in raw if isinstance(w, dict)]


def apply_turninfo(up: Upstream, msg: dict, offset: float = 0.0) -> None:
    """Deepgram Flux TurnInfo -> normalized turn/transcript events (also used for gateway passthrough)."""
    event = msg.get("event")
    text = msg.get("transcript") or ""
    words = flux_words(msg.get("words"))
    start = float(msg.get("audio_window_start") or 0.0) + offset
    end = float(msg.get("audio_window_end") or 0.0) + offset
    if event in ("Update", "StartOfTurn"):
        up.turns.update(text, words, start, end)
    elif event == "EagerEndOfTurn":
        up.turns.update(text, words, start, end)
        up.turns.marker("EagerEndOfTurn")
    elif event == "TurnResumed":
        up.turns.marker("TurnResumed")
        up.turns.update(text, words, start, end)
    elif event == "EndOfTurn":
        up.turns.end_turn(text, words, end)
    # Unknown events are tolerated: Flux documents `event` as an open enum.


class WsUpstream(Upstream):
    """Base for recognizers reached over a WebSocket."""

    provider = "the recognizer"
    keepalive_every: float | None = None   # v1-style KeepAlive interval while no audio flows

    ws: ClientConnection | None = None

    def __init__(self, settings, params):
        super().__init__(settings, params)
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._last_sent = time.monotonic()
        self._silence = bytes(int(params.sample_rate * 2 * 0.08))  # 80 ms of zeros

    # -- provider specifics --
    def url(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def handshake(self) -> None:
        """Wait for the provider's greeting, if it sends one."""

    def handle(self, msg: dict) -> None:
        raise NotImplementedError

    def on_remote_close(self) -> None:
        """Called when the provider closes after our CloseStream: commit what is left."""
        self.turns.end_turn()

    def needs_silence(self) -> bool:
        return False

    # -- lifecycle --
    async def connect(self) -> None:
        timeout = self.settings.upstream_connect_timeout
        try:
            self.ws = await connect(self.url(), additional_headers=self.headers(), compression=None,
                                    open_timeout=timeout, max_size=2 ** 20,
                                    ping_interval=self.settings.upstream_ping_seconds,
                                    ping_timeout=self.settings.upstream_ping_seconds,
                                    # a peer that stopped answering will not answer the close either
                                    close_timeout=min(2.0, self.settings.upstream_ping_seconds))
        except InvalidStatus as exc:
            resp = exc.response
            raise handshake_error(resp.status_code, resp.headers.get("Retry-After"), self.provider) from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.warning("upstream_connect_failed", extra={"fields": {"provider": self.name, "error": type(exc).__name__}})
            raise UpstreamError("upstream_unavailable", f"cannot reach {self.provider}; try again shortly",
                                retryable=True) from None
        try:
            await asyncio.wait_for(self.handshake(), timeout)
        except asyncio.TimeoutError:
            await self.ws.close()
            raise UpstreamError("upstream_unavailable", f"{self.provider} accepted the connection but never said it was ready",
                                retryable=True) from None
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._watchdog())]

    async def _reader(self) -> None:
        assert self.ws is not None
        clean = True
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    continue  # providers send JSON text only
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    self.handle(msg)
        except ConnectionClosed:
            # Reset, stalled (keepalive timeout) or closed with an error code: not the end we asked for.
            clean = False
        if self._closing and clean:
            self.on_remote_close()
            self._finish()
        else:
            self._finish(UpstreamError("upstream_unavailable", f"{self.provider} closed the stream unexpectedly", retryable=True))

    async def _watchdog(self) -> None:
        """Keep the provider's stream alive while the microphone is quiet."""
        while True:
            await asyncio.sleep(WATCHDOG_TICK)
            idle = time.monotonic() - self._last_sent
            try:
                if self.needs_silence() and idle >= SILENCE_AFTER:
                    if self.on_silence is not None:
                        self.on_silence(self._silence)
                    await self.send_audio(self._silence)
                elif self.keepalive_every and idle >= self.keepalive_every:
                    await self._send_json({"type": "KeepAlive"})
            except ConnectionClosed:
                return

    async def _send_json(self, msg: dict) -> None:
        assert self.ws is not None
        self._last_sent = time.monotonic()
        await self.ws.send(json.dumps(msg))

    async def send_audio(self, pcm: bytes) -> None:
        self._last_sent = time.monotonic()
        try:
            await self.ws.send(pcm)
        except ConnectionClosed:
            pass  # the reader reports the loss

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ConnectionClosed):
            await self.close_stream()

    async def close_stream(self) -> None:
        await self._send_json({"type": "CloseStream"})

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        self._finish()

    def fatal(self, msg: dict) -> UpstreamError:
        """A provider `Error` message: pass it on and end the stream."""
        code = str(msg.get("code") or "").upper()
        description = str(msg.get("description") or msg.get("message") or "")[:300]
        mapped = "rate_limited" if "TOO_MANY" in code or "RATE" in code else "upstream_error"
        error = UpstreamError(mapped, f"{self.provider} reported an error: {description or code or 'unknown'}",
                              retryable=True)
        self._finish(error)
        return error
