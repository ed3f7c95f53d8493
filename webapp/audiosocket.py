"""The capture socket's fast path: uvicorn's websockets-sansio protocol with a direct mode.

uvicorn hands each WebSocket message to an ASGI app through a queue, a task switch and a pause/resume of
reading, and takes each send as a coroutine. For 12.5 audio frames a second on every capture socket that
plumbing cost more CPU than everything else the relay does (docs/benchmarks.md, "Relay performance").

With this protocol (cli.py passes it to uvicorn as `ws=`), a WebSocket scope carries `DIRECT` in its
extensions. The app does the handshake as usual (Origin check, a refusal is still HTTP 403, accept), then
calls `scope["extensions"][DIRECT].attach(listener)`: from then on each message goes straight from the
parser to the listener, and `send_text` writes at once. Without the extension (another ASGI server), the
app uses plain ASGI receive/send: see webapp/browsersocket.py.

Once the handshake is done, the protocol cuts the incoming bytes into whole frames itself. A whole,
masked, unfragmented binary frame (an audio frame) is unmasked with websockets' C helper and handed over;
every other frame (text, ping, close, a fragment, anything malformed or oversized) is fed whole to
websockets' sans-I/O parser, which therefore always starts at a frame boundary and keeps all of RFC 6455's
rules (close handshake, 1002/1007/1009 failures). The generator-based parser had been the relay's largest
Python cost per audio frame.
"""

from __future__ import annotations

import asyncio
from asyncio import get_running_loop
from contextlib import suppress
from typing import Any, Protocol

from orjson import dumps
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State
from websockets.speedups import apply_mask  # the C build: a wheel without it would fail here, not run slowly

OPEN = State.OPEN
AUDIO_FRAME = 0x82  # first header byte of an audio frame: FIN, no RSV bits, opcode BINARY
# Header of an unmasked, unfragmented text frame of each short length (the server's events are short).
_TEXT_HEADS = [bytes((0x81, n)) for n in range(126)]

DIRECT = "caption-relay.direct"


def _text_frame(event: dict) -> bytes:
    """One event as an unmasked, unfragmented text frame."""
    data = dumps(event)
    n = len(data)
    if n < 126:
        return _TEXT_HEADS[n] + data
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + data
    return b"\x81\x7f" + n.to_bytes(8, "big") + data


class Listener(Protocol):
    def on_bytes(self, data: bytes) -> None: ...
    def on_text(self, text: str) -> None: ...
    def on_disconnect(self) -> None: ...
    def on_writable(self) -> None: ...


class DirectSocket:
    """What the app gets from the scope: attach a listener, send without awaiting, flow control
    (webapp.browsersocket.BrowserSocket)."""

    __slots__ = ("_p", "held", "writable")
    sending = False  # a write is done once it is handed to the transport

    def __init__(self, protocol: DirectWebSocketProtocol):
        self._p = protocol
        self.held: list[bytes] | None = None  # frames kept back by hold(True)
        # False while the kernel buffer to the browser is full (the browser reads slowly)
        self.writable = protocol.writable.is_set()

    @property
    def listener(self) -> Listener | None:
        return self._p.listener

    def attach(self, listener: Listener) -> None:
        """Deliver every later message to `listener`; messages that came before it are delivered first."""
        p = self._p
        p.listener = listener
        gone = False
        while not p.queue.empty():
            message: Any = p.queue.get_nowait()  # an ASGI receive event (typed as the union of every kind)
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("bytes") is not None:
                    listener.on_bytes(message["bytes"])
                elif message.get("text") is not None:
                    listener.on_text(message["text"])
            elif kind == "websocket.disconnect":
                gone = True
        if gone or p.disconnected:
            listener.on_disconnect()
        elif p.read_paused:
            p.read_paused = False
            p.transport.resume_reading()

    def send_event(self, event: dict) -> bool:
        """Write one event as a JSON text message; False when the socket is closing or gone."""
        p = self._p
        if p.close_sent or p.disconnected or p.conn.state is not OPEN:
            return False
        frame = _text_frame(event)
        held = self.held
        if held is None:
            p.transport.write(frame)
        else:
            held.append(frame)
        return True

    def hold(self, on: bool) -> None:
        """hold(True) keeps frames back; hold(False) writes what was kept in one write (the events of one
        upstream message: a final and its EndOfTurn, say)."""
        if on:
            self.held = []
            return
        held, self.held = self.held, None
        if held and not self._p.disconnected:
            self._p.transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def drop(self, code: int, reason: str, last: list[dict], grace: float) -> None:
        """Give up on a browser that does not read: write `last` and a close frame behind what its buffer holds
        (whatever the flow control says), and cut the connection if it has not taken them within `grace` s."""
        p = self._p
        self.held = None
        if p.disconnected:
            return
        data = b""
        if not p.close_sent and p.conn.state is OPEN:
            data = b"".join(_text_frame(e) for e in last)
            p.conn.send_close(code, reason)
            data += b"".join(p.conn.data_to_send())
            p.close_sent = True
        transport = p.transport
        if data:
            transport.write(data)
        transport.close()  # once the buffer is taken; a reader that never reads is aborted below
        get_running_loop().call_later(grace, transport.abort)

    async def close(self, code: int, grace: float) -> None:
        """The normal end, through the protocol's ASGI send (which waits while the browser's buffer is full)."""
        with suppress(OSError, asyncio.TimeoutError):  # the browser may be gone, or not read
            await asyncio.wait_for(self._p.send({"type": "websocket.close", "code": code, "reason": ""}), grace)

    def pause_reading(self) -> None:
        """Backpressure: the upstream cannot take audio as fast as the browser sends it."""
        if not self._p.disconnected:
            self._p.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._p.disconnected:
            self._p.transport.resume_reading()


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol; once a listener is attached, messages bypass the ASGI queue."""

    direct: DirectSocket | None = None
    listener: Listener | None = None  # attached by the app (DirectSocket.attach); None again once the socket is gone
    _rest: bytearray | None = None  # the start of a frame whose end has not arrived yet
    _need = 0  # bytes _rest must hold before parsing is worth trying again
    _handed = False  # websockets' parser owns the rest of the stream (closing, oversized frame)

    def data_received(self, data: bytes) -> None:
        # First what browsers send nearly every time: one whole audio frame (a masked binary frame of 126 to
        # 65,535 bytes, 2-byte length) alone in the read. An open state also means no close and no hand-off.
        listener = self.listener
        if listener is not None and self._rest is None:
            size = len(data)
            if size > 8 and data[0] == 0x82 and data[1] == 0xFE and size == (data[2] << 8 | data[3]) + 8:
                conn = self.conn
                if conn.current_size is None and conn.state is OPEN:
                    listener.on_bytes(apply_mask(data[8:], data[4:8]))
                    return
        if not self.handshake_complete or self._handed:  # the HTTP request, or the end of the connection
            return super().data_received(data)
        rest = self._rest
        if rest is not None:  # accumulate without re-parsing: a frame trickling in costs linear time
            rest += data
            if len(rest) < self._need:
                return
            data, self._rest = bytes(rest), None
        conn = self.conn
        size = len(data)
        pos = 0
        while pos < size:
            need = 2
            if size - pos >= 2:
                first, second = data[pos], data[pos + 1]
                n = second & 0x7F
                head = pos + 2
                if n == 126:
                    need, n, head = 4, int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
                elif n == 127:
                    need, n, head = 10, int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
                if size - pos >= need:
                    if second & 0x80:
                        head += 4
                    if n > self.config.ws_max_size:  # refused from its header (1009), never buffered
                        self._handed = True
                        return super().data_received(data[pos:])
                    end = head + n
                    need = end - pos
                    if end <= size:
                        if first == AUDIO_FRAME and second & 0x80 and conn.current_size is None and conn.state is OPEN:
                            self._binary(apply_mask(data[head:end], data[head - 4 : head]))
                        else:  # a whole frame of any other kind: websockets' parser applies the rules
                            super().data_received(data[pos:end])
                            if conn.state is not OPEN or self.close_sent:
                                self._handed = True  # it finishes the closing handshake (or discards)
                                if end < size:
                                    super().data_received(data[end:])
                                return
                        pos = end
                        continue
            self._rest, self._need = bytearray(data[pos:]), need
            return

    def _binary(self, data: bytes) -> None:
        """One whole binary message from the fast path."""
        if self.close_sent:
            return  # as uvicorn does: past websocket.close, messages are discarded
        listener = self.listener
        if listener is not None:
            listener.on_bytes(data)
        else:  # not attached (yet): the ASGI queue, as uvicorn's handle_bytes would
            self.curr_msg_data_type = "bytes"
            self.frames = [data]
            super().send_receive_event_to_app()

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # an accepted upgrade: the ASGI task is created but has not run yet
            self.direct = DirectSocket(self)
            scope["extensions"][DIRECT] = self.direct

    def send_receive_event_to_app(self) -> None:
        listener = self.listener
        if listener is None or self.close_sent:
            return super().send_receive_event_to_app()
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "bytes":
            listener.on_bytes(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        listener.on_text(text)

    def _notify_gone(self) -> None:
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.on_disconnect()

    def handle_close(self, event) -> None:
        super().handle_close(event)
        self._notify_gone()

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        self._notify_gone()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._notify_gone()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.direct is not None:
            self.direct.writable = False

    def resume_writing(self) -> None:
        super().resume_writing()
        direct = self.direct
        if direct is not None:
            direct.writable = True
        if self.listener is not None:
            self.listener.on_writable()
