"""A real WebSocket client of /ws/listen, as a browser page would use it."""
from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

FRAME = 2560  # 80 ms of 16 kHz 16-bit mono


def tone_pcm(seconds: float, rate: int = 16000) -> bytes:
    """A deterministic non-silent signal (a ramp pattern), so byte-for-byte comparisons are meaningful."""
    n = int(seconds * rate)
    return b"".join(((i * 37) % 2000 - 1000).to_bytes(2, "little", signed=True) for i in range(n))


def frames(pcm: bytes, size: int = FRAME) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


async def collect_until_closed(ws, timeout: float = 20.0) -> list[dict]:
    """Read every server message until `closed` (the last one) and the socket closes."""
    out: list[dict] = []

    async def read():
        try:
            async for raw in ws:
                out.append(json.loads(raw))
        except ConnectionClosed:
            pass  # closed with an error code: the messages still tell what happened
    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no close within {timeout}s; got {out[-5:]}")
    return out


async def run_capture(url: str, pcm: bytes, *, origin: str | None = None, pace: float = 0.0,
                      before_close=None, headers: dict | None = None, close: bool = True) -> list[dict]:
    """Send pcm in 80 ms frames (paced by `pace` seconds per frame), then CloseStream; return all messages."""
    kwargs = {"origin": origin} if origin else {}
    async with connect(url, compression=None, additional_headers=headers or {}, **kwargs) as ws:
        reader = asyncio.create_task(collect_until_closed(ws))
        try:
            for chunk in frames(pcm):
                await ws.send(chunk)
                if pace:
                    await asyncio.sleep(pace)  # real-time pacing of the audio, not synchronisation
            if before_close:
                await before_close(ws)
            if close:
                await ws.send(json.dumps({"type": "CloseStream"}))
        except ConnectionClosed:
            pass  # the server ended the session (an error): its messages say why
        return await reader


def finals(messages: list[dict]) -> list[str]:
    return [m["text"] for m in messages if m["type"] == "transcript" and m["final"]]


def types(messages: list[dict]) -> list[str]:
    return [m["type"] for m in messages]


# ---- a raw socket, for clients no library would be: one that never reads, one that floods ----

def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One client frame (FIN, masked with a zero key: the server unmasks whatever the key)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def raw_listen(port: int, path: str = "/ws/listen", rcvbuf: int = 4096):
    """Open /ws/listen on a plain TCP socket with a small receive buffer; returns (reader, writer) after the 101.
    The reader's own buffer is small too, so a test that does not read makes the server's buffers fill."""
    import base64
    import os
    import socket
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0], head
    return reader, writer


async def read_to_eof(reader, timeout: float) -> tuple[list[dict], tuple[int, str] | None]:
    """Read server frames until the connection ends: (JSON text events, (close code, reason) or None)."""
    data = bytearray()

    async def read():
        while chunk := await reader.read(65536):
            data.extend(chunk)
    try:
        await asyncio.wait_for(read(), timeout)
    except (ConnectionError, OSError):
        pass  # cut off: what arrived before still counts
    events, close, pos = [], None, 0
    while pos + 2 <= len(data):
        opcode, n, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, head = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
        elif n == 127:
            n, head = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
        payload = bytes(data[head:head + n])
        if len(payload) < n:
            break
        if opcode == 0x1:
            events.append(json.loads(payload))
        elif opcode == 0x8:
            close = (int.from_bytes(payload[:2], "big"), payload[2:].decode()) if len(payload) >= 2 else (1005, "")
        pos = head + n
    return events, close
