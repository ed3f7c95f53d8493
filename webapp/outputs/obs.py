"""The OBS output: captions sent to OBS Studio over obs-websocket v5 as CEA-608 on its stream output.

Wire facts (obs-websocket docs/generated/protocol.md; /work/shared/docs/outputs.md, "OBS"): the server speaks
first with `Hello` (op 0), carrying `authentication.challenge` and `.salt` when a password is set; the client
answers `Identify` (op 1) with rpcVersion 1 and base64(sha256(base64(sha256(password + salt)) + challenge)); a
wrong one is closed with 4009, else `Identified` (op 2). Then `Request` (op 6) ↔ `RequestResponse` (op 7) by
requestId, and `Event` (op 5). `SendStreamCaption {captionText}` works only while OBS streams (501
OutputNotRunning otherwise), so each caption is sent only when `GetStreamStatus` says `outputActive` (cached
briefly, kept current by StreamStateChanged events); some macOS builds answer 501 even then
(obsproject/obs-websocket#1048). OBS keeps at most 128 bytes of one caption (libobs CAPTION_LINE_BYTES) and
libcaption wraps it into 32-character rows, breaking at newlines.

Text on screen: the last two 32-character rows of the caption (`format_608`). Each caption replaces the one on
screen at OBS's next video frame, so a long one split into successive captions would show each part but the
last for one frame only; the session sends a long turn's stable beginning every few seconds, and two rows hold
about 4 s of speech, so the newest rows are what a viewer can read. The whole text is on the overlay. A caption
that continues the previous one's sentence (Caption.continues: a turn that ended mid-sentence, the rest of a turn
after its early part) is shown after it, so the sentence rolls up instead of its beginning being replaced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import textwrap
import time
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from ..logs import fields
from .base import Caption, DeliveryError

log = logging.getLogger(__name__)

ROW_CHARS = 32  # CEA-608 row width
ROWS = 2  # rows kept on screen
MAX_BYTES = 128  # libobs keeps this much of one caption (CAPTION_LINE_BYTES), cutting the rest
RUNNING_CHARS = 160  # of the running sentence kept: more than the two rows shown
RPC_VERSION = 1
EVENTS = 1 | 1 << 6  # EventSubscription General (ExitStarted) | Outputs (StreamStateChanged)
MAX_MESSAGE = 2**20  # OBS's answers and events are small JSON
NOT_STREAMING = "OBS is not streaming"
# OBS closes with these after Identify (WebSocketCloseCode); none of them gets better by reconnecting.
FATAL_CLOSES = {
    4009: "OBS refused the password: check the obs-websocket password (Tools → WebSocket Server Settings)",
    4010: "this OBS's obs-websocket does not accept RPC version 1, the one this app speaks",
    4011: "OBS disconnected this output on purpose (its session list's Kick): add the output again",
}
RETRY_CODES = {207, 500, 502, 503, 504}  # NotReady and output states that can change
MAX_501_STREAMING = 3  # 501 while OBS says it streams: retried this often, then the output fails
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a NUL would end libobs's C string


class _connect_once(connect):
    """websockets' connect, without following redirects: the operator allowed this address, not where it points."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


def auth_string(password: str, salt: str, challenge: str) -> str:
    """obs-websocket's Identify authentication for this Hello."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest()).decode()
    return base64.b64encode(hashlib.sha256((secret + challenge).encode()).digest()).decode()


def format_608(text: str) -> str:
    """The caption as OBS should get it: the last ROWS word-wrapped rows of ROW_CHARS, joined by newlines
    (libcaption starts a row at each), within MAX_BYTES. A word longer than a row is cut."""
    rows = textwrap.wrap(" ".join(_CONTROL.sub(" ", text).split()), ROW_CHARS, break_on_hyphens=False)[-ROWS:]
    out = "\n".join(rows)
    if len(out.encode()) > MAX_BYTES:  # wide UTF-8 characters: one row (32 × 4 bytes) always fits
        out = rows[-1]
    return out


class ObsDestination:
    """One OBS: a connection kept open across captions and reopened after OBS restarts."""

    kind: ClassVar[str] = "obs"

    def __init__(self, url: str, password: str | None, *, timeout: float = 4.0, status_ttl: float = 2.0):
        self.url = url
        self._password = password or None
        self.timeout = timeout  # the most one start() or deliver() waits for OBS, connecting included
        self.status_ttl = status_ttl  # how long a GetStreamStatus answer is trusted without an event
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one connect at a time
        self._pending: dict[str, asyncio.Future] = {}  # this connection's requests waiting for their answer
        self._ids = 0
        self._streaming: bool | None = None
        self._status_at = 0.0  # monotonic time of the last stream status (answer or event)
        self._fatal: DeliveryError | None = None  # OBS said never to come back
        self._detail: str | None = None
        self._refused_501 = 0  # consecutive 501 answers while OBS reported streaming
        self.running = ""  # the text on screen before format_608 (the running sentence), for a caption that continues

    # -- Destination --
    async def start(self) -> int | None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._connect()
                await self._stream_status(fresh=True)
        except TimeoutError:
            raise self._stalled() from None
        return None  # OBS keeps no caption sequence

    async def deliver(self, caption: Caption, seq: int) -> bool:
        said = " ".join(caption.text.split())
        if caption.continues and said:
            said = f"{self.running} {said}".strip()  # the sentence runs on: its start stays on screen
        text = format_608(said)
        if not text:
            return False  # nothing to show (an empty caption would clear the screen)
        delivered = await self._send(text)
        self.running = said[-RUNNING_CHARS:]  # after the answer: a retry of this caption sends the same text
        return delivered

    async def _send(self, text: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self._connect()
                if not await self._stream_status():
                    return False
                status, _ = await self._request("SendStreamCaption", {"captionText": text})
                if status.get("result") is True:
                    self._refused_501 = 0
                    return True
                return await self._refused(status)
        except TimeoutError:
            raise self._stalled() from None

    def detail(self) -> str | None:
        return self._detail

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await ws.close()
            ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    # -- connection --
    async def _connect(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        async with self._lock:
            if self._ws is not None:
                return
            try:
                ws = await _connect_once(
                    self.url,
                    subprotocols=[Subprotocol("obswebsocket.json")],
                    compression=None,
                    proxy=None,  # straight to the address the operator allowed, never via an environment proxy
                    open_timeout=None,  # the caller's deadline bounds the whole exchange
                    max_size=MAX_MESSAGE,
                    ping_interval=10,
                    ping_timeout=10,
                    close_timeout=1,
                    user_agent_header=None,
                )
            except InvalidURI:
                raise self._fail(
                    DeliveryError("the OBS address must look like ws://host:4455", retryable=False)
                ) from None
            except InvalidHandshake as exc:
                log.warning("obs_connect_failed", extra=fields(error=type(exc).__name__))
                raise DeliveryError(
                    "something answered at the OBS address but it is not obs-websocket: check the host and port"
                ) from None
            except OSError as exc:
                log.warning("obs_connect_failed", extra=fields(error=type(exc).__name__))
                raise DeliveryError(
                    "cannot reach OBS: is OBS running, with Tools → WebSocket Server Settings → "
                    "Enable WebSocket server on, and the host and port right?"
                ) from None
            try:
                await self._identify(ws)
            except BaseException:
                ws.transport.abort()
                raise
            # Each connection has its own waiting requests: a dead one's reader must not fail the next one's.
            self._ws, self._pending, self._streaming = ws, {}, None
            self._reader = asyncio.create_task(self._read(ws, self._pending), name="obs-reader")

    async def _identify(self, ws: ClientConnection) -> None:
        try:
            hello = await self._receive(ws, op=0)
            auth = hello.get("authentication")
            identify: dict[str, Any] = {"rpcVersion": RPC_VERSION, "eventSubscriptions": EVENTS}
            if isinstance(auth, dict):
                if self._password is None:
                    raise self._fail(
                        DeliveryError(
                            "OBS asks for a password: add the obs-websocket password to this output", retryable=False
                        )
                    )
                identify["authentication"] = auth_string(
                    self._password, str(auth.get("salt", "")), str(auth.get("challenge", ""))
                )
            await ws.send(json.dumps({"op": 1, "d": identify}))
            await self._receive(ws, op=2)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code in FATAL_CLOSES:
                log.warning("obs_refused", extra=fields(close_code=code))
                raise self._fail(DeliveryError(FATAL_CLOSES[code], retryable=False)) from None
            raise DeliveryError("OBS closed the connection while it was being set up") from None
        log.info(
            "obs_connected",
            extra=fields(
                obs=str(hello.get("obsStudioVersion", ""))[:20],
                obs_websocket=str(hello.get("obsWebSocketVersion", ""))[:20],
                auth=isinstance(auth, dict),
            ),
        )

    @staticmethod
    async def _receive(ws: ClientConnection, op: int) -> dict:
        """The `d` of the next message, which must have opcode `op` (obs-websocket sends nothing else first)."""
        raw = await ws.recv()
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested past json's limit
            msg = None
        if not isinstance(msg, dict) or msg.get("op") != op or not isinstance(msg.get("d"), dict):
            raise DeliveryError("the OBS address answered, but not as obs-websocket 5 does: use OBS 28 or newer")
        return msg["d"]

    async def _read(self, ws: ClientConnection, pending: dict[str, asyncio.Future]) -> None:
        """Answers and events until the connection ends; then every waiting request fails (retryable)."""
        closed = "OBS closed the connection (OBS quit or restarted?); it is reopened with the next caption"
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                    self._on_message(ws, pending, msg["op"], msg["d"])
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                    continue  # not a message obs-websocket documents: skipped
        except ConnectionClosed:
            pass
        finally:
            code = ws.close_code
            if self._ws is ws:
                self._ws = None
            if code in FATAL_CLOSES:
                self._fail(DeliveryError(FATAL_CLOSES[code], retryable=False))
            log.info("obs_disconnected", extra=fields(close_code=code))
            error = self._fatal or DeliveryError(closed)
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)
            pending.clear()

    def _on_message(self, ws: ClientConnection, pending: dict[str, asyncio.Future], op: int, d: dict) -> None:
        if op == 7:
            future = pending.pop(d["requestId"], None)
            if future is not None and not future.done():
                future.set_result(d)
        elif op == 5 and self._ws is ws:  # a connection being replaced says nothing about the new one
            kind = d.get("eventType")
            if kind == "StreamStateChanged":
                self._set_streaming(bool(d["eventData"]["outputActive"]))
            elif kind == "ExitStarted":
                # OBS is quitting: end this connection now, so the next caption opens a new one (refused until an
                # OBS listens again: retryable) rather than being skipped as "not streaming" on this one.
                self._ws, self._streaming = None, None
                ws.transport.abort()

    async def _request(self, kind: str, data: dict | None = None) -> tuple[dict, dict]:
        """(requestStatus, responseData) of one request. The caller's deadline bounds the wait."""
        ws, pending = self._ws, self._pending
        if ws is None:
            raise DeliveryError("OBS closed the connection; it is reopened with the next caption")
        self._ids += 1
        rid = str(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        pending[rid] = future
        msg: dict[str, Any] = {"requestType": kind, "requestId": rid}
        if data is not None:
            msg["requestData"] = data
        try:
            await ws.send(json.dumps({"op": 6, "d": msg}))
        except ConnectionClosed:
            pending.pop(rid, None)
            raise DeliveryError("OBS closed the connection; it is reopened with the next caption") from None
        try:
            answer = await future
        finally:
            pending.pop(rid, None)
        status = answer.get("requestStatus")
        response = answer.get("responseData")
        return (status if isinstance(status, dict) else {}), (response if isinstance(response, dict) else {})

    # -- stream state --
    async def _stream_status(self, fresh: bool = False) -> bool:
        if fresh or self._streaming is None or time.monotonic() - self._status_at > self.status_ttl:
            status, data = await self._request("GetStreamStatus")
            if status.get("result") is not True:
                raise self._status_error(status, "OBS could not tell whether it is streaming")
            self._set_streaming(bool(data.get("outputActive")))
        return bool(self._streaming)

    def _set_streaming(self, active: bool) -> None:
        self._streaming, self._status_at = active, time.monotonic()
        self._detail = None if active else NOT_STREAMING

    async def _refused(self, status: dict) -> bool:
        """SendStreamCaption said no: skipped if the stream just stopped, else a DeliveryError."""
        if status.get("code") != 501:
            raise self._status_error(status, "OBS refused the caption")
        if not await self._stream_status(fresh=True):
            return False  # the stream stopped between the check and the caption
        self._refused_501 += 1
        if self._refused_501 < MAX_501_STREAMING:
            raise DeliveryError("OBS says its stream output is not running although it is streaming", retry_after=2)
        raise DeliveryError(
            "OBS refuses captions although it is streaming (a known obs-websocket fault on some macOS builds, "
            "obsproject/obs-websocket#1048): use the browser-source overlay instead",
            retryable=False,
        )

    @staticmethod
    def _status_error(status: dict, what: str) -> DeliveryError:
        code = status.get("code")
        comment = str(status.get("comment") or "")[:200]
        message = f"{what} (obs-websocket code {code}{': ' + comment if comment else ''})"
        return DeliveryError(message, retryable=code in RETRY_CODES, retry_after=1 if code == 207 else None)

    # -- failures --
    def _stalled(self) -> DeliveryError:
        """OBS took longer than the deadline: drop the connection (a late answer means nothing now)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.transport.abort()
        log.warning("obs_stalled", extra=fields(timeout_s=self.timeout))
        return DeliveryError(f"OBS did not answer within {self.timeout:g} s")

    def _fail(self, error: DeliveryError) -> DeliveryError:
        self._fatal = error
        return error
