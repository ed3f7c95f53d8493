"""The capture socket's fast path: uvicorn's websockets-sansio protocol with a direct mode.

uvicorn hands each WebSocket message to an ASGI app through a queue, a task switch and a pause/resume of
reading, and takes each send as a coroutine. For 12.5 audio frames a second on every capture socket that
plumbing cost more CPU than everything else the relay does (docs/benchmarks.md, "Relay performance").

With this protocol (cli.py passes it to uvicorn as `ws=`), a WebSocket scope carries `DIRECT` in its
extensions. The app does the handshake as usual (Origin check, a refusal is still HTTP 403, accept), then
calls `scope["extensions"][DIRECT].attach(listener)`: from then on each message goes straight from the
parser to the listener, and `send_text` writes at once. Frames are still parsed by websockets' sans-I/O
protocol, pings and the closing handshake are still uvicorn's. Without the extension (another ASGI server),
the app uses plain ASGI receive/send: see webapp/relay.py.
"""
from __future__ import annotations

from typing import Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode

BINARY = Opcode.BINARY

DIRECT = "caption-relay.direct"


class Listener(Protocol):
    def on_bytes(self, data: bytes) -> None: ...
    def on_text(self, text: str) -> None: ...
    def on_disconnect(self) -> None: ...
    def on_writable(self) -> None: ...


class DirectSocket:
    """What the app gets from the scope: attach a listener, send without awaiting, flow control."""

    __slots__ = ("_p", "listener", "batching")

    def __init__(self, protocol: "DirectWebSocketProtocol"):
        self._p = protocol
        self.listener: Listener | None = None
        self.batching = False

    def attach(self, listener: Listener) -> None:
        """Deliver every later message to `listener`; messages that came before it are delivered first."""
        p = self._p
        self.listener = listener
        gone = False
        while not p.queue.empty():
            message = p.queue.get_nowait()
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

    @property
    def writable(self) -> bool:
        """False while the kernel buffer to the browser is full (the browser reads slowly)."""
        return self._p.writable.is_set()

    def send_text(self, data: bytes) -> bool:
        """Write one text message (UTF-8 bytes); False when the socket is closing or gone. Between begin()
        and end() messages are held and leave in one write (a final and its EndOfTurn, say)."""
        p = self._p
        if p.close_sent or p.disconnected:
            return False
        try:
            p.conn.send_text(data)
        except InvalidState:
            return False
        if not self.batching:
            self._flush()
        return True

    def begin(self) -> None:
        self.batching = True

    def end(self) -> None:
        """Write what was held since begin()."""
        self.batching = False
        self._flush()

    def _flush(self) -> None:
        p = self._p
        if not p.disconnected:
            out = p.conn.data_to_send()
            if out:
                p.transport.write(b"".join(out))

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

    def data_received(self, data: bytes) -> None:
        direct = self.direct
        if direct is None or direct.listener is None:
            return super().data_received(data)
        conn = self.conn
        conn.receive_data(data)
        if conn.parser_exc is not None:
            self.handle_parser_exception()
            return
        for event in conn.events_received():
            listener = direct.listener
            # An audio frame (a whole binary message) goes straight to the listener ...
            if (listener is not None and type(event) is Frame and event.opcode is BINARY and event.fin
                    and not self.frames and not self.close_sent):
                listener.on_bytes(event.data)
            else:  # ... anything else the way uvicorn handles it (its dispatch reads conn.events)
                conn.events = [event]
                super().handle_events()

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # an accepted upgrade: the ASGI task is created but has not run yet
            self.direct = DirectSocket(self)
            scope["extensions"][DIRECT] = self.direct

    def send_receive_event_to_app(self) -> None:
        direct = self.direct
        listener = direct.listener if direct is not None else None
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
        direct = self.direct
        if direct is not None and direct.listener is not None:
            listener, direct.listener = direct.listener, None
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

    def resume_writing(self) -> None:
        super().resume_writing()
        direct = self.direct
        if direct is not None and direct.listener is not None:
            direct.listener.on_writable()
