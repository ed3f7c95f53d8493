"""One capture session: the browser socket on one side, an upstream recognizer on the other.

The browser may send audio from its first moment; until the upstream is connected the frames (and any
Finalize/CloseStream, in order) wait in a bounded buffer, so the first words are never lost. Every message the
browser can send has a defined outcome: audio is forwarded, bad frames get an `error` event and are dropped
while the session goes on, CloseStream finalizes and ends with `closed`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from typing import Any, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from . import protocol
from .config import Settings
from .logs import fields
from .protocol import MAX_AUDIO_FRAME, StreamParams
from .upstreams import Upstream, UpstreamError, make_upstream

log = logging.getLogger(__name__)

MAX_TEXT_MESSAGE = 4096        # bytes; control messages are tiny
PENDING_SECONDS = 30           # audio held while the upstream connects
OUTBOX_LIMIT = 256             # events queued for a browser that reads slowly
CLOSE_TIMEOUT = 15.0           # seconds to wait for the upstream's last events after CloseStream


class SessionSink:
    """Where a session's life is recorded (storage, live fan-out). The default records nothing.

    opened() runs before `ready` and returns extra fields for it (e.g. share_url); event() gets every
    transcript/turn event as it is sent to the browser and must not block; closed() runs once at the end.
    """

    async def opened(self, session: "RelaySession") -> dict[str, Any]:
        return {}

    def event(self, event: dict[str, Any]) -> None:
        pass

    async def closed(self, session: "RelaySession", reason: str) -> None:
        pass


class Outbox:
    """The browser's send queue, bounded: when a reader falls behind, interim updates go first, never finals."""

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.items: deque[dict[str, Any]] = deque()
        self.wake = asyncio.Event()
        self.closed = False

    def put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        self.items.append(event)
        if len(self.items) > OUTBOX_LIMIT:
            for i, item in enumerate(self.items):
                if item.get("type") == "transcript" and not item.get("final"):
                    del self.items[i]
                    break
        self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.items:
                    event = self.items.popleft()
                    await self.ws.send_text(json.dumps(event, separators=(",", ":")))
                    if event.get("type") == "closed":
                        self.closed = True
                        return
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True  # the browser is gone; nothing more can be delivered


class RelaySession:
    def __init__(self, ws: WebSocket, settings: Settings, params: StreamParams,
                 upstream_factory: Callable[[Settings, StreamParams], Upstream] = make_upstream,
                 sink: SessionSink | None = None):
        self.ws = ws
        self.sink = sink or SessionSink()
        self.settings = settings
        self.params = params
        self.id = secrets.token_urlsafe(9)
        self.upstream = upstream_factory(settings, params)
        self.out = Outbox(ws)
        self.live = False
        self.closing = False          # CloseStream received (or browser gone)
        self.pending: deque[bytes | str] = deque()   # audio and control, in arrival order
        self.pending_bytes = 0
        self.bytes_in = 0
        self.close_reason = "client_closed"
        self.started = time.monotonic()

    # ---- browser -> relay ----------------------------------------------------------------------

    def _bad(self, code: str, message: str) -> None:
        self.out.put(protocol.error(code, message, retryable=False))

    async def _on_audio(self, data: bytes) -> None:
        n = len(data)
        if n > MAX_AUDIO_FRAME:
            return self._bad("frame_too_large", f"audio frame of {n} bytes dropped: the limit is {MAX_AUDIO_FRAME} bytes (send 80 ms frames)")
        if n == 0 or n & 1:
            return self._bad("bad_audio", f"audio frame of {n} bytes dropped: 16-bit PCM needs a non-zero, even byte count")
        if self.closing:
            return self._bad("bad_message", "audio after CloseStream is ignored")
        self.bytes_in += n
        if self.live:
            await self.upstream.send_audio(data)
            return
        if self.pending_bytes + n > PENDING_SECONDS * self.params.bytes_per_second:
            return self._bad("buffer_full", f"the recognizer is still connecting; audio beyond {PENDING_SECONDS} s is dropped")
        self.pending.append(data)
        self.pending_bytes += n

    async def _on_text(self, text: str) -> None:
        if len(text) > MAX_TEXT_MESSAGE:
            return self._bad("bad_message", f"text message over {MAX_TEXT_MESSAGE} bytes ignored; control messages are small JSON objects")
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return self._bad("bad_message", "text messages must be JSON, e.g. {\"type\":\"CloseStream\"}")
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in ("Finalize", "CloseStream", "KeepAlive"):
            shown = kind if isinstance(kind, str) and len(kind) <= 40 else "?"
            return self._bad("unknown_message", f"unknown message type {shown!r}; send Finalize, CloseStream or KeepAlive")
        if kind == "KeepAlive" or self.closing:
            return  # the relay keeps the upstream alive itself; repeated CloseStream is harmless
        if kind == "CloseStream":
            self.closing = True
        if self.live:
            await self._control(kind)
        else:
            self.pending.append(kind)

    async def _control(self, kind: str) -> None:
        if kind == "Finalize":
            await self.upstream.finalize()
        else:
            await self.upstream.close()

    async def _read_browser(self) -> None:
        """Read until the browser disconnects."""
        receive = self.ws.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                await self._on_audio(data)
            elif message.get("text") is not None:
                await self._on_text(message["text"])

    # ---- relay -> browser ----------------------------------------------------------------------

    async def _go_live(self) -> None:
        """Connect upstream, announce ready, drain what waited."""
        await self.upstream.connect()
        extra = await self.sink.opened(self)
        self.out.put({"type": "ready", "session_id": self.id, "backend": self.settings.backend,
                      "sample_rate": self.params.sample_rate, **extra})
        while self.pending:
            item = self.pending.popleft()
            if isinstance(item, str):
                await self._control(item)
            else:
                await self.upstream.send_audio(item)
        self.pending_bytes = 0
        self.live = True
        log.info("session_live", extra=fields(session=self.id, backend=self.settings.backend,
                                              connect_ms=round((time.monotonic() - self.started) * 1000)))

    async def _pump_events(self) -> None:
        sink = self.sink.event
        async for event in self.upstream.events():
            sink(event)
            self.out.put(event)

    async def run(self) -> None:
        writer = asyncio.create_task(self.out.run())
        reader = asyncio.create_task(self._read_browser())
        upstream_done = asyncio.create_task(self._upstream_lifecycle())
        error: dict[str, Any] | None = None
        try:
            done, _ = await asyncio.wait({reader, upstream_done}, return_when=asyncio.FIRST_COMPLETED)
            if upstream_done in done:
                error = upstream_done.result()
            else:
                # Browser gone: still finalize the open turn (later layers record it), then stop.
                self.closing, self.close_reason = True, "client_gone"
                if self.live:
                    with contextlib.suppress(UpstreamError, asyncio.TimeoutError, OSError):
                        await asyncio.wait_for(self.upstream.close(), CLOSE_TIMEOUT)
                upstream_done.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upstream_done
        finally:
            reader.cancel()
            upstream_done.cancel()
            await self.upstream.abort()
            if self.live:
                try:
                    await self.sink.closed(self, self.close_reason)
                except Exception:
                    log.exception("sink_close_failed", extra=fields(session=self.id))
            if error is not None:
                self.out.put(error)
            self.out.put({"type": "closed", "reason": self.close_reason})
            try:
                await asyncio.wait_for(writer, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                writer.cancel()
            with contextlib.suppress(RuntimeError, OSError):
                await self.ws.close(1000 if error is None else 1011)
            log.info("session_end", extra=fields(session=self.id, reason=self.close_reason, error=(error or {}).get("code"),
                                                 audio_s=round(self.bytes_in / self.params.bytes_per_second, 2),
                                                 wall_s=round(time.monotonic() - self.started, 2)))

    async def _upstream_lifecycle(self) -> dict[str, Any] | None:
        """Returns the error event that ended the session, or None for a clean end."""
        try:
            await self._go_live()
            await self._pump_events()
            return None
        except UpstreamError as exc:
            self.close_reason = "upstream_error" if exc.code != "capacity" else "capacity"
            log.warning("upstream_error", extra=fields(session=self.id, code=exc.code, retryable=exc.retryable))
            return exc.event()
        except (OSError, asyncio.TimeoutError) as exc:
            self.close_reason = "upstream_error"
            log.warning("upstream_io_error", extra=fields(session=self.id, error=type(exc).__name__))
            return protocol.error("upstream_unavailable", "lost the connection to the recognizer; try again", retryable=True)
