"""Uploaded audio files: probed and decoded with PyAV (FFmpeg) into 16 kHz mono 16-bit PCM, the recognizer's input.
Any container and codec FFmpeg reads (WAV, FLAC, MP3, M4A/AAC, OGG/Opus, WebM); the first audio stream is used.

Decoding runs on a thread and hands the event loop bounded chunks (at most QUEUED of them wait), so a long file
never sits decoded in memory and the loop never decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator
from typing import IO

import av

RATE = 16000  # the embedded recognizer's rate (webapp/local/signal.py); remote backends get the file as it came
CHUNK_SECONDS = 1.0
QUEUED = 8  # decoded chunks waiting for the consumer, at most


class MediaError(Exception):
    """The file is not audio FFmpeg can decode; the message says so in words for the uploader."""


def probe(file: IO[bytes]) -> float | None:
    """The file's duration in seconds as its container states it (None if it does not say: a browser's WebM);
    MediaError when FFmpeg cannot open it or it has no audio stream. Leaves the file at its start."""
    file.seek(0)
    try:
        with av.open(file, mode="r") as container:
            if not container.streams.audio:
                raise MediaError("The file has no audio track.")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = None
    except av.FFmpegError as exc:
        raise MediaError(f"The file could not be read as audio ({_reason(exc)}).") from None
    finally:
        file.seek(0)
    return seconds if seconds is None or seconds >= 0 else None


def _reason(exc: Exception) -> str:
    return (getattr(exc, "strerror", None) or type(exc).__name__)[:120]


async def pcm_chunks(file: IO[bytes], max_seconds: float) -> AsyncGenerator[bytes, None]:
    """The file's audio as 16 kHz mono s16le chunks of about CHUNK_SECONDS. Raises MediaError for a file that
    fails to decode, and (after yielding max_seconds of audio) for one that is longer."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():  # blocks while QUEUED chunks wait; gives up once the consumer left
            with contextlib.suppress(TimeoutError):
                future.result(0.5)
                return
        future.cancel()

    def decode() -> None:
        try:
            file.seek(0)
            with av.open(file, mode="r") as container:
                if not container.streams.audio:
                    raise MediaError("The file has no audio track.")
                stream = container.streams.audio[0]
                resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                buf, total = bytearray(), 0
                limit = int(max_seconds * RATE) * 2
                frames = (f for packet in container.demux(stream) for f in packet.decode())
                for frame in _then_flush(frames):
                    for out in resampler.resample(frame):
                        buf += bytes(out.planes[0])[: out.samples * 2]
                    if len(buf) >= CHUNK_SECONDS * RATE * 2 or frame is None:
                        total += len(buf)
                        if total > limit:
                            raise MediaError(f"The audio is longer than the limit of {max_seconds / 60:g} minutes.")
                        if buf:
                            put(bytes(buf))
                        buf.clear()
                    if stop.is_set():
                        return
        except MediaError as exc:
            put(exc)
        except (av.FFmpegError, ValueError, OSError) as exc:
            put(MediaError(f"The file could not be decoded as audio ({_reason(exc)})."))
        except BaseException as exc:  # a bug: reported to the request, not lost in a thread
            put(exc)
        put(None)

    thread = threading.Thread(target=decode, name="media-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _then_flush(frames):
    """The frames, then None: the resampler's last samples are flushed on it."""
    yield from frames
    yield None
