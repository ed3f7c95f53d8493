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
