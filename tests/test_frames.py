"""The capture socket's frame splitter (webapp/audiosocket.py), checked against uvicorn's own protocol.

Both protocol classes, ours and uvicorn's stock websockets-sansio one, get the same client bytes cut into the
same chunks, and must deliver the same messages to the app, write the same frames back (pongs, the close
reply) and close with the same code. The bytes are fed through a recording transport so that every chunking
can be chosen, down to one byte at a time; the rest of the suite runs the protocol on real sockets.
"""
from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from webapp.audiosocket import DIRECT, DirectWebSocketProtocol

MAX_SIZE = 70_000  # the servers' ws_max_size here: small enough to test, above 65,535 (8-byte lengths)
HANDSHAKE = (b"GET /ws/listen HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket: keeps what the server writes, reports the close to the protocol."""

    def __init__(self):
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.protocol = None

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data):
        if not self.closed:
            self.out += data

    def is_closing(self):
        return self.closed

    def close(self):
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class Recorder:
    """The app: accepts, then records every message, through the direct listener when there is one."""

    def __init__(self):
        self.messages: list[tuple[str, object]] = []
        self.accepted = asyncio.Event()
        self.gone = asyncio.Event()

    def on_bytes(self, data):
        self.messages.append(("bytes", bytes(data)))

    def on_text(self, text):
        self.messages.append(("text", text))

    def on_disconnect(self):
        self.gone.set()

    def on_writable(self):
        pass

    async def __call__(self, scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.accepted.set()
        direct = scope["extensions"].get(DIRECT)
        if direct is not None:
            direct.attach(self)
            await self.gone.wait()
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.gone.set()
                return
            self.messages.append(("bytes", message["bytes"]) if message.get("bytes") is not None
                                 else ("text", message["text"]))


async def open_socket(protocol_class):
    """A protocol past its handshake, with the app attached: (app, protocol, transport)."""
    app = Recorder()
    config = Config(app, ws_max_size=MAX_SIZE, ws_per_message_deflate=False, ws_ping_interval=None, log_config=None)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    await asyncio.wait_for(app.accepted.wait(), 5)
    await asyncio.sleep(0)  # the app attaches its listener right after accept
    return app, protocol, transport


async def serve(protocol_class, chunks: list[bytes]):
    """Feed `chunks` after the handshake; return (messages, frames written after the 101, closed)."""
    app, protocol, transport = await open_socket(protocol_class)
    for chunk in chunks:
        if transport.closed:
            break
        protocol.data_received(chunk)
        await asyncio.sleep(0)  # let the ASGI reader take what was queued, as the event loop would
    if transport.closed:
        await asyncio.wait_for(app.gone.wait(), 5)
    else:
        for _ in range(len(chunks) + 10):  # the ASGI queue drains one message per loop turn
            await asyncio.sleep(0)
    head, _, body = bytes(transport.out).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return app.messages, server_frames(body), transport.closed


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frame = done.value
            frames.append((frame.opcode.value, bytes(frame.data)))
        except EOFError:
            return frames


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x1f\x2e\x3d\x4c",
          first: int | None = None) -> bytes:
    """A client frame, masked unless mask is None; `first` overrides the first header byte."""
    b0 = first if first is not None else (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, m | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def audio(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def close(code: int = 1000) -> bytes:
    return frame(Opcode.CLOSE.value, struct.pack("!H", code))


BAD = object()  # marks, in the table below, the frame after which the server must fail the connection

# Streams of client frames; each ends in a close frame, or has BAD after the frame the server must refuse.
STREAMS = {
    "one audio frame": [frame(2, audio(2560)), close()],
    "audio of every length class": [frame(2, audio(n, n)) for n in (0, 1, 125, 126, 2560, 65535, 65536)] + [close()],
    "control messages between audio": [frame(2, audio(2560)), frame(1, b'{"type":"Finalize"}'), frame(2, audio(2560, 1)),
                                       frame(9, b"ping!"), frame(10, b"unasked pong"), frame(2, audio(100, 2)), close()],
    "fragmented binary message": [frame(2, audio(1000), fin=False), frame(0, audio(500, 3), fin=False),
                                  frame(9, b"mid"), frame(0, audio(60, 4)), frame(2, audio(2560)), close()],
    "fragmented text message": [frame(1, "héllo ".encode(), fin=False), frame(0, "wörld".encode()), close()],
    "audio after the close frame is ignored": [frame(2, audio(2560)), close(1001), frame(2, audio(2560, 5))],
    "unmasked frame (1002)": [frame(2, audio(2560)), frame(2, audio(100), mask=None), BAD, frame(2, audio(10))],
    "reserved bit set (1002)": [frame(2, audio(2560)), frame(2, audio(100), first=0xC2), BAD],
    "unknown opcode (1002)": [frame(2, audio(16)), frame(3, b"x"), BAD],
    "continuation with nothing to continue (1002)": [frame(0, audio(10)), BAD, frame(2, audio(10))],
    "audio frame inside a fragmented text message (1002)": [frame(1, b"abc", fin=False), frame(2, audio(2560)), BAD],
    "fragmented ping (1002)": [frame(9, b"p", fin=False), BAD],
    "invalid UTF-8 text (1007)": [frame(2, audio(20)), frame(1, b"\xff\xfe"), BAD, frame(2, audio(20))],
    "frame over the size limit (1009)": [frame(2, audio(8)), frame(2, audio(MAX_SIZE + 1)), BAD, frame(2, audio(8))],
}


def cuts(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos:pos + step])
        pos, i = pos + step, i + 1
    return out


async def assert_same_as_uvicorn(chunks: list[bytes], failing: bool = False) -> tuple:
    ours = await serve(DirectWebSocketProtocol, chunks)
    stock = await serve(WebSocketsSansIOProtocol, chunks)
    if failing:
        # uvicorn drops the good messages that share a read with a bad frame (its data_received checks the
        # parser's error before the events); ours delivers them. Replies and close codes are the same.
        assert ours[1:] == stock[1:]
        assert ours[0][:len(stock[0])] == stock[0]
    else:
        assert ours == stock
    return ours


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("chunking", ["whole", "frame by frame", "one byte at a time", "odd sizes"])
async def test_same_messages_and_replies_as_uvicorns_own_parser(name, chunking):
    stream = [f for f in STREAMS[name] if f is not BAD]
    failing = BAD in STREAMS[name]
    data = b"".join(stream)
    if chunking == "whole":
        chunks = [data]
    elif chunking == "frame by frame":
        chunks = list(stream)
    elif chunking == "one byte at a time":
        if len(data) > 20_000:
            pytest.skip("one byte at a time is for the short streams (the odd sizes cover the long ones)")
        chunks = cuts(data, [1])
    else:
        chunks = cuts(data, [1, 3, 2565, 7, 1448, 2])
    messages, replies, closed = await assert_same_as_uvicorn(chunks, failing)
    # ... and what ours does is right: every message sent before a close or a bad frame, then the closing handshake
    assert closed
    if not name.startswith("fragmented"):  # (test_fragmented_messages_arrive_whole has those)
        assert messages == expected_messages(STREAMS[name])
    if not failing:
        assert replies[-1][0] == Opcode.CLOSE.value
    else:
        code = int(name[name.index("(") + 1:name.index(")")])
        assert replies[-1] == (Opcode.CLOSE.value, struct.pack("!H", code) + replies[-1][1][2:])


def expected_messages(stream: list[bytes]) -> list[tuple[str, object]]:
    """The whole (unfragmented) data messages sent before the first close frame or bad frame, in order."""
    out = []
    for i, raw in enumerate(stream):
        if raw is BAD or (i + 1 < len(stream) and stream[i + 1] is BAD):
            break
        opcode = raw[0] & 0x0F
        if opcode == Opcode.CLOSE.value:
            break
        if not raw[0] & 0x80:
            continue  # a fragment: not a whole message
        if opcode == 1:
            out.append(("text", unmask(raw).decode()))
        elif opcode == 2:
            out.append(("bytes", unmask(raw)))
    return out


def unmask(raw: bytes) -> bytes:
    n = raw[1] & 0x7F
    head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
    key = raw[head:head + 4]
    return bytes(b ^ key[i % 4] for i, b in enumerate(raw[head + 4:]))


def test_fragmented_messages_arrive_whole():
    messages, _, _ = asyncio.run(serve(DirectWebSocketProtocol, [b"".join(STREAMS["fragmented binary message"])]))
    assert messages == [("bytes", audio(1000) + audio(500, 3) + audio(60, 4)), ("bytes", audio(2560))]
    messages, _, _ = asyncio.run(serve(DirectWebSocketProtocol, [b"".join(STREAMS["fragmented text message"])]))
    assert messages == [("text", "héllo wörld")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=12),
       lengths=st.lists(st.sampled_from([0, 1, 2, 125, 126, 127, 2560, 4000]), min_size=1, max_size=8))
def test_any_chunking_of_audio_and_controls(sizes, lengths):
    stream = []
    for i, n in enumerate(lengths):
        stream.append(frame(2, audio(n, i)))
        if i % 3 == 2:
            stream.append(frame(9, b"hb") if i % 2 else frame(1, b'{"type":"KeepAlive"}'))
    stream.append(close())
    messages, replies, closed = asyncio.run(assert_same_as_uvicorn(cuts(b"".join(stream), sizes)))
    assert [p for kind, p in messages if kind == "bytes"] == [audio(n, i) for i, n in enumerate(lengths)]
    assert closed and replies[-1][0] == Opcode.CLOSE.value


async def test_a_frame_trickling_in_is_buffered_not_reparsed():
    """A client that sends a large frame a byte at a time costs the server linear time: the bytes are appended to
    one buffer, and parsing waits until the whole frame is there."""
    data = frame(2, audio(60_000))
    app, protocol, transport = await open_socket(DirectWebSocketProtocol)
    for i in range(len(data) - 1):
        protocol.data_received(data[i:i + 1])
        if i == 20:
            buffer = protocol._rest
    assert protocol._rest is buffer and len(buffer) == len(data) - 1  # one buffer, grown in place
    assert protocol._need == len(data)  # nothing is parsed again before the frame's last byte
    protocol.data_received(data[-1:])
    assert protocol._rest is None and app.messages == [("bytes", audio(60_000))]
    protocol.data_received(close())
    await asyncio.wait_for(app.gone.wait(), 5)
