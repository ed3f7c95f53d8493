"""What the remote (WebSocket) recognizers share: connecting with server-side auth, mapping refused
handshakes to error codes, message callbacks, and a silence/keep-alive timer (what Flux messages mean: flux.py).

The connection is a picows client: frames arrive by callback and sends are plain calls, so an audio frame
costs no task switch or coroutine on its way upstream (docs/benchmarks.md, "Relay performance").
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from typing import Any
from urllib.parse import urlencode

import orjson
from picows import WSCloseCode, WSError, WSInvalidStatusError, WSListener, WSMsgType, ws_connect

from .base import Upstream, UpstreamError, handshake_error, provider_error
from .flux import UPDATES, DecodeError, FluxUpdate, configure_message, configure_result, decode_update

log = logging.getLogger(__name__)

WATCHDOG_TICK = 0.25  # seconds between silence/keep-alive checks while the microphone is quiet
WATCHDOG_SLICES = 10  # the connections are checked a tenth at a time, every WATCHDOG_TICK / 10
SILENCE_AFTER = 0.5  # send silence once the microphone paused this long inside an open turn
MAX_MESSAGE = 2**20  # bytes; providers send small JSON messages
CONFIGURE_ACK_TIMEOUT = 5.0  # seconds a Flux Configure may go unanswered before the next one is sent anyway
# A close frame with these codes (0 = no status code, as Flux sends after CloseStream) is the end we asked for.
CLEAN_CLOSE = frozenset((WSCloseCode.NO_INFO, WSCloseCode.OK, WSCloseCode.GOING_AWAY))

TEXT, CONT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.CONTINUATION, WSMsgType.BINARY, WSMsgType.CLOSE
monotonic = time.monotonic


def seed_masks() -> None:
    """picows masks client frames with libc rand(), which nobody seeds: every process would mask with the same
    sequence, and the audio we mask comes from browsers. RFC 6455 §5.3 wants unpredictable masks, so seed it."""
    try:
        ctypes.CDLL(None).srand(int.from_bytes(os.urandom(4), "little"))
    except (OSError, AttributeError):  # pragma: no cover - a libc without srand
        log.warning("mask_seed_failed")


seed_masks()


class _Ticker:
    """One timer for every upstream connection of the process: silence, KeepAlive and stall checks.

    A timer or a sleeping task per connection (picows' own auto-ping is one) creates objects that live long
    enough to reach the GC's old generation and die there; with a thousand streams, the full collections
    they cause stop the event loop for over 100 ms (docs/benchmarks.md, "Relay performance"). Each tick checks
    a tenth of the connections, so that a thousand of them never hold the loop for milliseconds at once; every
    connection is checked at least every WATCHDOG_TICK."""

    def __init__(self) -> None:
        self.links: set[WsUpstream] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.round: list[WsUpstream] = []  # this round's connections, a snapshot
        self.pos = 0

    def add(self, up: WsUpstream) -> None:
        self.links.add(up)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(WATCHDOG_TICK / WATCHDOG_SLICES, self._tick)

    def discard(self, up: WsUpstream) -> None:
        self.links.discard(up)

    def _tick(self) -> None:
        if self.pos >= len(self.round):
            self.round, self.pos = list(self.links), 0
        step = -(-len(self.round) // WATCHDOG_SLICES)
        now = monotonic()
        for up in self.round[self.pos : self.pos + step]:
            up._watch(now)
        self.pos += step
        more = self.links or self.pos < len(self.round)
        self.timer = (
            asyncio.get_running_loop().call_later(WATCHDOG_TICK / WATCHDOG_SLICES, self._tick) if more else None
        )


_ticker = _Ticker()


def build_url(base: str, query: list[tuple[str, str]]) -> str:
    """Base URL from settings + parameters we chose and encoded (never a client's raw query string)."""
    return f"{base}?{urlencode(query)}"


class _Link(WSListener):
    """picows callbacks for one upstream connection, handed to its WsUpstream."""

    def __init__(self, up: WsUpstream):
        super().__init__()
        self.up = up
        self.parts: list[bytes] | None = None  # a fragmented text message being assembled
        self.size = 0

    def on_ws_frame(self, transport, frame) -> None:
        self.up._last_recv = monotonic()  # any frame (a pong too) shows the link is alive
        kind = frame.msg_type
        if kind is TEXT:
            if frame.fin:
                self.up._on_message(frame.get_payload_as_bytes())
            else:
                self.parts, self.size = [frame.get_payload_as_bytes()], frame.payload_size
        elif kind is CONT:
            if self.parts is None:
                return  # the continuation of a binary message: providers send JSON text only
            self.parts.append(frame.get_payload_as_bytes())
            self.size += frame.payload_size
            if self.size > MAX_MESSAGE:
                self.parts = None
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG)
                transport.disconnect()
            elif frame.fin:
                data, self.parts = b"".join(self.parts), None
                self.up._on_message(data)
        elif kind is CLOSE:
            code = frame.get_close_code()
            self.up._close_code = code
            transport.send_close(code if code in CLEAN_CLOSE and code != WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()
        # BINARY: providers send JSON text only. PING is answered by picows itself.

    def on_ws_disconnected(self, transport) -> None:
        self.up._on_disconnected()

    def pause_writing(self) -> None:
        if self.up.listener is not None:
            self.up.listener.on_pressure(True)

    def resume_writing(self) -> None:
        if self.up.listener is not None:
            self.up.listener.on_pressure(False)


class WsUpstream(Upstream):
    """Base for recognizers reached over a WebSocket."""

    provider = "the recognizer"
    keepalive_every: float | None = None  # v1-style KeepAlive interval while no audio flows
    greeting = False  # the provider says it is ready (Flux `Connected`) before audio

    def __init__(self, settings, params, listener=None):
        super().__init__(settings, params, listener)
        self._t = None  # the picows transport once connected
        self._gone = False  # the connection is closed (or never opened)
        self._closing = False  # we sent CloseStream
        self._close_code: int | None = None
        self._ready: asyncio.Future | None = None
        self._last_sent = self._last_recv = monotonic()
        self._pinged = 0.0  # when a ping went out on a quiet link (0: none pending)
        self._silence = bytes(int(params.sample_rate * 2 * 0.08))  # 80 ms of zeros
        self._on_batch = listener.on_batch if listener is not None else None  # looked up once: every message calls it
        self._configuring = 0.0  # when the unanswered Flux Configure went out (0: none in flight)
        self._configure_next: tuple[str, ...] | None = None  # key terms waiting for that answer

    # -- provider specifics --
    def url(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def greet(self, msg: dict) -> None:
        """A message before the provider said it is ready: resolve or fail self._ready (see `greeting`)."""

    def handle(self, msg: dict) -> None:
        raise NotImplementedError

    flux_updates = False  # the provider may send Flux TurnInfo: interim updates take the FluxUpdate path

    def turn_update(self, update: FluxUpdate) -> None:
        """A Flux TurnInfo Update or StartOfTurn (the same as flux.apply_turninfo does with it)."""
        self.turns.update(update.transcript, update.words, update.audio_window_start, update.audio_window_end)

    def on_remote_close(self) -> None:
        """Called when the provider closes after our CloseStream: commit what is left."""
        self.turns.end_turn()

    def needs_silence(self) -> bool:
        return False

    # -- lifecycle --
    async def connect(self) -> None:
        timeout = self.settings.upstream_connect_timeout
        loop = asyncio.get_running_loop()
        if self.greeting:
            self._ready = loop.create_future()  # the greeting can come in the same packet as the 101
        try:
            self._t, _ = await asyncio.wait_for(
                ws_connect(
                    lambda: _Link(self),
                    self.url(),
                    extra_headers=self.headers(),
                    websocket_handshake_timeout=timeout,
                    enable_auto_ping=False,  # _Ticker pings a quiet link itself
                    max_frame_size=MAX_MESSAGE,
                    logger_name="upstream",
                ),
                timeout,
            )
        except WSInvalidStatusError as exc:
            resp = exc.response
            status = int(resp.status) if resp is not None else 502
            retry_after = resp.headers.get("Retry-After") if resp is not None else None
            raise handshake_error(status, retry_after, self.provider) from None
        except (TimeoutError, OSError, WSError) as exc:
            log.warning(
                "upstream_connect_failed", extra={"fields": {"provider": self.name, "error": type(exc).__name__}}
            )
            raise UpstreamError(
                "upstream_unavailable", f"cannot reach {self.provider}; try again shortly", retryable=True
            ) from None
        if self._ready is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), timeout)
            except TimeoutError:
                self._t.disconnect()
                raise UpstreamError(
                    "upstream_unavailable",
                    f"{self.provider} accepted the connection but never said it was ready",
                    retryable=True,
                ) from None
            finally:
                self._ready = None
        self._last_sent = self._last_recv = monotonic()
        _ticker.add(self)

    def _on_message(self, raw: bytes) -> None:
        update = None
        msg: Any = None  # a dict whenever update is None
        if self.flux_updates and self._ready is None:
            try:
                update = decode_update(raw)
            except DecodeError:  # not this shape (or a field of another type): the general path decides
                pass
            if update is not None and not (update.type == "TurnInfo" and update.event in UPDATES):
                update = None
        if update is None:
            try:
                msg = orjson.loads(raw)
            except ValueError:
                return  # not JSON: nothing a provider documents
            if not isinstance(msg, dict):
                return
        batch = self._on_batch
        if batch is not None:
            batch(True)
        try:
            if update is not None:
                self.turn_update(update)
            elif self._ready is not None and not self._ready.done():
                self.greet(msg)
            else:
                self.handle(msg)
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # a malformed field: skip that message
            log.warning("upstream_bad_message", extra={"fields": {"provider": self.name, "error": type(exc).__name__}})
        finally:
            if batch is not None:
                batch(False)

    # -- Flux Configure: one in flight (Flux caps unanswered ones), the latest change waits for its answer --
    def _flux_configure(self, keyterms: tuple[str, ...]) -> None:
        if self._configuring and monotonic() - self._configuring < CONFIGURE_ACK_TIMEOUT:
            self._configure_next = keyterms
            return
        self._configuring = monotonic()
        self._send_json(configure_message(keyterms))

    def _flux_configured(self, msg: dict) -> None:
        """ConfigureSuccess / ConfigureFailure: tell the page, then send the change that waited, if any."""
        self._configuring = 0.0
        notice = configure_result(msg)
        log.info(
            "upstream_configured",
            extra={
                "fields": {"provider": self.name, "code": notice["code"], "provider_code": notice.get("provider_code")}
            },
        )
        self._emit(notice)
        waiting, self._configure_next = self._configure_next, None
        if waiting is not None:
            self._flux_configure(waiting)

    def _on_disconnected(self) -> None:
        self._gone = True
        _ticker.discard(self)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                UpstreamError(
                    "upstream_unavailable", f"{self.provider} closed the connection before it was ready", retryable=True
                )
            )
            return
        # A reset, a stall (ping timeout) or a close with an error code is not the end we asked for.
        if self._closing and self._close_code in CLEAN_CLOSE:
            self.on_remote_close()
            self._finish()
        else:
            self._finish(
                UpstreamError("upstream_unavailable", f"{self.provider} closed the stream unexpectedly", retryable=True)
            )

    # -- run by _Ticker every WATCHDOG_TICK --
    def _watch(self, now: float) -> None:
        if self._gone:
            return  # discarded already; the tick iterates over a copy
        ping = self.settings.upstream_ping_seconds
        if not self._pinged and now - self._last_recv < ping and now - self._last_sent < SILENCE_AFTER:
            return  # a busy link: nothing to check (KeepAlive intervals are longer than SILENCE_AFTER)
        # A stalled provider (no data, no pong) is cut off about two ping periods after it went quiet.
        if self._pinged and self._last_recv < self._pinged:
            if now - self._pinged >= ping:
                log.warning(
                    "upstream_stalled",
                    extra={"fields": {"provider": self.name, "quiet_s": round(now - self._last_recv, 1)}},
                )
                self._t.disconnect(graceful=False)  # _on_disconnected reports it: not a close we asked for
                return
        elif now - self._last_recv >= ping:
            self._pinged = now
            self._t.send_ping()
        else:
            self._pinged = 0.0
        idle = now - self._last_sent
        if self.needs_silence() and idle >= SILENCE_AFTER:
            if self.listener is not None:
                self.listener.on_silence(self._silence)
            self.send_audio(self._silence)
        elif self.keepalive_every and idle >= self.keepalive_every:
            self._send_json({"type": "KeepAlive"})

    def _send_json(self, msg: dict) -> None:
        self._last_sent = monotonic()
        if not self._gone:
            self._t.send(TEXT, orjson.dumps(msg))

    def send_audio(self, pcm: bytes) -> None:
        self._last_sent = monotonic()
        if not self._gone:
            self._t.send(BINARY, pcm)  # a lost connection is reported by _on_disconnected

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_stream()

    def close_stream(self) -> None:
        self._send_json({"type": "CloseStream"})

    async def abort(self) -> None:
        _ticker.discard(self)
        if self._t is not None and not self._gone:
            self._t.send_close(WSCloseCode.GOING_AWAY)
            self._t.disconnect()
        self._finish()

    def fatal(self, msg: dict) -> UpstreamError:
        """A provider `Error` message: end the stream with our own message for its class. The provider's text
        may echo anything (a gateway has been seen to echo the credential): it goes to the log only, where
        the formatter redacts every configured secret."""
        code = str(msg.get("code") or msg.get("err_code") or msg.get("type") or "")[:80]
        description = str(msg.get("description") or msg.get("message") or msg.get("err_msg") or "")[:300]
        error = provider_error(self.provider, code, description)
        log.warning(
            "upstream_error_message",
            extra={
                "fields": {
                    "provider": self.name,
                    "mapped": error.code,
                    "provider_code": code,
                    "provider_text": description,
                }
            },
        )
        self._finish(error)
        return error
