"""The relay session's browser edge: one socket interface, two implementations, and the bounded send queue.

- The direct socket (webapp.audiosocket.DirectSocket, as caption-relay runs uvicorn): messages by callback,
  sends written at once, flow control from the kernel's buffer.
- AsgiSocket, the same methods over plain ASGI receive/send (any other ASGI server): a reader task feeds the
  listener, a writer task sends one event at a time.
Both deliver to a webapp.audiosocket.Listener (on_bytes, on_text, on_disconnect, on_writable). Outbox queues
what a browser cannot take yet, and gives up on one that does not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import protocol
from .audiosocket import DIRECT, Listener
from .logs import fields

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 256  # events queued for a browser that reads slowly (then interims are dropped)
OUTBOX_HARD_LIMIT = 4096  # events (finals, errors…) queued for a browser that does not read: it is given up on
BAD_INPUT_EVERY = 1.0  # seconds: at most one error per bad-input code in this time, the rest are counted


class BrowserSocket(Protocol):
    """What the session needs of the browser's socket once it is accepted."""

    writable: bool  # send_event() may be called now (False: the browser's buffer is full, or a send is under way)
    sending: bool  # a send has not finished yet (ASGI); the direct socket's writes finish at once

    def attach(self, listener: Listener) -> None:
        """Deliver the browser's messages (those already received first) and flow control to `listener`."""

    def send_event(self, event: dict[str, Any]) -> bool:
        """Send one event as JSON text; False when the socket is closing or gone."""

    def hold(self, on: bool) -> None:
        """hold(True) keeps sends back; hold(False) lets them go, in one write where the socket can."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def drop(self, code: int, reason: str, last: list[dict[str, Any]], grace: float) -> None:
        """Give up on a browser that does not read: send `last` where the socket can, close, and cut it off
        after `grace` seconds."""

    async def close(self, code: int, grace: float) -> None:
        """The normal end; the browser has `grace` seconds to take the close frame."""


def socket_for(ws: WebSocket) -> BrowserSocket:
    """The direct socket when the server offers it (webapp.audiosocket), else the ASGI fallback."""
    direct = ws.scope.get("extensions", {}).get(DIRECT)
    return direct if direct is not None else AsgiSocket(ws)


class AsgiSocket:
    """BrowserSocket over plain ASGI receive/send."""

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.writable = True
        self.sending = False
        self._gone = False  # the browser is gone, or `closed` was sent
        self._next: dict[str, Any] | None = None  # the event the writer sends next
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._tasks: list[asyncio.Task] = []

    def attach(self, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(listener)), loop.create_task(self._write(listener))]

    async def _read(self, listener: Listener) -> None:
        receive, reading = self.ws.receive, self._reading
        try:
            while True:
                if not reading.is_set():
                    await reading.wait()
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is not None:
                    listener.on_bytes(data)
                elif message.get("text") is not None:
                    listener.on_text(message["text"])
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        listener.on_disconnect()

    def send_event(self, event: dict[str, Any]) -> bool:
        if self._gone:
            return False
        self.writable, self.sending = False, True
        self._next = event
        self._wake.set()
        return True

    async def _write(self, listener: Listener) -> None:
        wake = self._wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                event, self._next = self._next, None
                if event is None:
                    continue
                await self.ws.send_text(orjson.dumps(event).decode())
                self._gone = event["type"] == "closed"  # nothing goes after it
                self.writable, self.sending = True, False
                listener.on_writable()
                if self._gone:
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            # The browser is gone: what waits is offered again, and refused (send_event is False from now on).
            self._gone = True
            self.writable, self.sending = True, False
            listener.on_writable()

    def hold(self, on: bool) -> None:
        pass  # each ASGI send is one message

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def drop(self, code: int, reason: str, last: list[dict[str, Any]], grace: float) -> None:
        # `last` cannot pass a send that blocks on a browser that does not read: only the close is tried.
        await self.close(code, grace, reason)

    async def close(self, code: int, grace: float, reason: str | None = None) -> None:
        for task in self._tasks:
            task.cancel()  # a send blocked on a browser that does not read is abandoned
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect, asyncio.TimeoutError):
            # the browser may be gone, or not read (a server's close may wait for it)
            await asyncio.wait_for(self.ws.close(code, reason), grace)


class Outbox:
    """The browser's send queue, bounded: when a reader falls behind, interim updates go first, never finals.

    An event is sent at once while the socket is writable, and queued while it is not (the direct socket's
    buffer is full, or an ASGI send is under way); the socket's on_writable sends more (flush()).
    Every put costs O(1) whatever the browser does: queued interims are tracked in their own deque (a holder
    [event], emptied when dropped), so dropping the oldest needs no scan. A browser that takes none of its
    waiting events for `slow_after` seconds, or lets OUTBOX_HARD_LIMIT events pile up, is given up on:
    on_slow() is called once and nothing more is queued (see RelaySession._slow_client). Errors about the
    browser's own input are coalesced (bad_input)."""

    def __init__(
        self, sock: BrowserSocket, on_slow: Callable[[str], None], session_id: str = "", slow_after: float = 10.0
    ):
        self.sock = sock
        self.session_id = session_id
        self.items: deque = deque()  # events, or [event] holders of interims ([None] once dropped)
        self.interims: deque[list] = deque()  # holders of the queued interims, oldest first
        self.queued = 0  # live events in items
        self.wake = asyncio.Event()
        self.closed = False
        self.slow = False  # given up on: the browser does not read
        self.slow_after = slow_after
        self.on_slow = on_slow
        self.waiting_since = 0.0  # since when events wait with nothing written
        self._timer: asyncio.TimerHandle | None = None
        self._bad: dict[str, list] = {}  # bad-input code -> [window start, count not sent, last message, timer]

    def put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        sock = self.sock
        if not self.queued and not sock.sending:
            if sock.writable:
                self._write(event)
                if sock.sending:
                    self._waiting()  # an ASGI send that may never finish: the browser has slow_after for it
                return
            log.info("browser_slow", extra=fields(session=self.session_id))  # its buffer is full: hold events
            self._waiting()
        if event["type"] == "transcript" and not event["final"]:
            holder = [event]
            self.items.append(holder)
            self.interims.append(holder)
        else:
            self.items.append(event)
        self.queued += 1
        if self.queued > OUTBOX_LIMIT:
            if self.interims:
                self.interims.popleft()[0] = None  # the oldest interim: a later one of its turn replaces it
                self.queued -= 1
            elif self.queued > OUTBOX_HARD_LIMIT:
                self._give_up(f"{self.queued} events waiting")
                return
        self.wake.set()

    def _pop(self) -> dict[str, Any] | None:
        items = self.items
        while items:
            item = items.popleft()
            if type(item) is list:
                if item[0] is None:
                    continue  # dropped
                self.interims.popleft()  # it is the oldest live interim
                item = item[0]
            self.queued -= 1
            return item
        return None

    def _waiting(self) -> None:
        """Events start to wait: the browser has `slow_after` seconds to take some."""
        self.waiting_since = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.slow_after, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.closed or not (self.queued or self.sock.sending):
            return
        left = self.waiting_since + self.slow_after - time.monotonic()
        if left > 0:  # it took some since: check again when the new period ends
            self._timer = asyncio.get_running_loop().call_later(left, self._check)
        else:
            self._give_up(f"nothing taken for {self.slow_after:g} s")

    def _give_up(self, why: str) -> None:
        if self.slow:
            return
        log.warning("browser_not_reading", extra=fields(session=self.session_id, queued=self.queued, why=why))
        self.slow = self.closed = True
        self.items.clear()
        self.interims.clear()
        self.queued = 0
        self.wake.set()
        self.on_slow(why)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _write(self, event: dict[str, Any]) -> None:
        if not self.sock.send_event(event) or event["type"] == "closed":
            self.closed = True  # sent the last message, or the browser is gone

    def flush(self) -> None:
        """The socket can take more (the direct socket's buffer has room again, an ASGI send finished)."""
        wrote = False
        sock = self.sock
        while self.queued and not self.closed and sock.writable and (event := self._pop()) is not None:
            self._write(event)
            wrote = True
        if wrote:
            self.waiting_since = time.monotonic()
        self.wake.set()

    async def finish(self, timeout: float) -> None:
        """Give a slow reader up to `timeout` seconds to take what is queued (and an ASGI send to finish)."""
        deadline = time.monotonic() + timeout
        while self.queued and not self.closed or self.sock.sending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), left)
            self.flush()

    def bad_input(self, code: str, message: str) -> None:
        """Tell the browser about bad input: at most one error per code per BAD_INPUT_EVERY seconds, the others
        counted and reported at the end of that time (a flood of bad frames costs O(1) each and sends little)."""
        now = time.monotonic()
        entry = self._bad.get(code)
        if entry is None or now - entry[0] >= BAD_INPUT_EVERY and not entry[1]:
            self._bad[code] = [now, 0, message, None]
            self.put(protocol.error(code, message, retryable=False))
            return
        entry[1] += 1
        entry[2] = message
        if entry[3] is None:
            entry[3] = asyncio.get_running_loop().call_at(entry[0] + BAD_INPUT_EVERY, self._bad_summary, code)

    def _bad_summary(self, code: str) -> None:
        start, count, message, timer = self._bad.pop(code)
        if timer is not None:
            timer.cancel()
        if count:
            self._bad[code] = [time.monotonic(), 0, message, None]  # a new window: the next one waits for it
            more = f"{count} more like it" if count > 1 else "1 more like it"
            self.put(protocol.error(code, f"{message} ({more} dropped)", retryable=False))

    def bad_input_summary(self) -> None:
        """The session ends: what was counted and not reported yet goes out now."""
        for code in list(self._bad):
            self._bad_summary(code)
