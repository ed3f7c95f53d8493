"""The embedded recognizer (Moonshine tiny-en in worker processes, see webapp/local/) behind the Upstream API."""

from __future__ import annotations

import logging

from .. import local as recognizer
from ..config import Settings
from .base import Upstream, UpstreamError

log = logging.getLogger(__name__)


async def startup(settings: Settings) -> None:
    """Start and warm the worker processes at app start, so the first session does not wait for the model."""
    pool = await recognizer.get_pool(settings)
    log.info("local recognizer ready: %d workers, %d slots", pool.n_workers, pool.max_streams)


async def shutdown() -> None:
    recognizer.shutdown()


def capacity_error(limit: int) -> UpstreamError:
    return UpstreamError(
        "capacity",
        f"All {limit} embedded recognizer slots are busy; try again in a minute, "
        "or ask the operator to raise LOCAL_MAX_STREAMS.",
        retryable=True,
        retry_after=60.0,
    )


class LocalUpstream(Upstream):
    name = "local"

    def __init__(self, settings: Settings, params, listener=None):
        super().__init__(settings, params, listener)
        self._stream: recognizer.RecognizerStream | None = None

    async def connect(self) -> None:
        try:
            pool = await recognizer.get_pool(self.settings)
        except Exception as exc:
            log.exception("local recognizer unavailable")
            raise UpstreamError(
                "upstream_unavailable",
                "The embedded recognizer could not start; the operator should check the server's log.",
                retryable=True,
            ) from exc
        try:
            self._stream = pool.open_stream(self._on_event, self.params.sample_rate)
        except recognizer.CapacityError as exc:
            raise capacity_error(exc.limit) from None

    # runs on the event loop thread (the pool delivers with call_soon_threadsafe)
    def _on_event(self, kind: str, data: dict) -> None:
        if kind == "update":
            # tiny-en ends nearly every hypothesis with "." : on an interim it looks like a finished sentence
            self.turns.update(data["text"].rstrip().rstrip(".?!"), [], data["start"], data["end"])
        elif kind == "final":
            # words: estimated times (webapp/local/wordtimes.py), "estimated": true on each
            self.turns.end_turn(data["text"] or None, data.get("words") or [], data["end"])
        elif kind == "error":
            log.warning("local_recognizer_failed", extra={"fields": {"error": str(data.get("message"))[:300]}})
            self._finish(
                UpstreamError(
                    "upstream_unavailable", "The embedded recognizer failed; try again shortly.", retryable=True
                )
            )

    def send_audio(self, pcm: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(pcm)

    async def finalize(self) -> None:
        if self._stream is not None:
            await self._stream.finalize()
        self.turns.end_turn()  # a turn whose last decode came back empty still ends with its interim text

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
        self.turns.end_turn()
        self._finish()

    async def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()
        self._finish()
