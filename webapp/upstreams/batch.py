"""Pre-recorded (batch) transcription, one function per backend, each answering a `Transcript`:

- local: the embedded recognizer's batch worker (webapp/local/pool.py open_batch), fed the decoded file at most
  AHEAD seconds beyond what it has handled; its segments are its endpointer's turns, with the estimated word times
  live finals carry;
- aigateway: the file forwarded to AIgateway's OpenAI-compatible batch endpoint, asked for verbose_json;
- deepgram: Deepgram's pre-recorded `POST /v1/listen` (raw file body), utterances as segments.

Provider formats stay here; webapp/batch.py renders a Transcript in the client's response_format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from .. import protocol
from ..config import Settings
from ..exports import ends_sentence
from ..logs import fields

log = logging.getLogger(__name__)

AHEAD = 30.0  # seconds of audio fed to the batch worker beyond what it reported handled (bounded memory there)
STALL = 120.0  # seconds without progress after which a local job is given up (the host is overloaded)
HTTP_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=120.0, pool=10.0)


@dataclass
class Segment:
    start: float
    end: float
    text: str
    # {"word", "start", "end"} (the embedded recognizer's also "confidence": null, "estimated": true); empty: not timed
    words: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Transcript:
    segments: list[Segment]
    duration: float
    language: str = "en"
    text: str | None = None  # the provider's whole text when it gives one; else the segments' joined

    @property
    def full_text(self) -> str:
        if self.text is not None:
            return self.text
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class BatchError(Exception):
    """A failed job, as the client should see it: HTTP status, OpenAI error type and code, message."""

    def __init__(self, status: int, message: str, code: str | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after


# ---- local ---------------------------------------------------------------------------------------


async def transcribe_local(
    settings: Settings,
    chunks: AsyncGenerator[bytes, None],
    on_segment: Callable[[Segment], None],
    on_progress: Callable[[float], None],
    charge: Callable[[float], None],
) -> Transcript:
    """Feed the 16 kHz PCM `chunks` to a batch stream; on_segment per turn as it ends, on_progress with the audio
    seconds handled. `charge(seconds)` is called before each chunk is fed (a minute quota): it raises to stop."""
    from .. import local as recognizer

    segments: list[Segment] = []
    job = _Progress()

    def on_event(kind: str, data: dict) -> None:
        if kind == "final" and (data.get("text") or "").strip():
            # its words: the estimated times live finals carry (webapp/local/wordtimes.py), "estimated": true each
            words = [dict(w) for w in data.get("words") or [] if isinstance(w, dict)]
            seg = Segment(float(data["start"]), float(data["end"]), data["text"].strip(), words)
            segments.append(seg)
            on_segment(seg)
        elif kind == "progress":
            job.done = float(data["seconds"])
            on_progress(job.done)
            job.moved.set()
        elif kind == "error":
            job.error = str(data.get("message"))[:300]
            job.moved.set()

    try:
        pool = await recognizer.get_pool(settings)
        stream = await pool.open_batch(on_event)
    except recognizer.CapacityError as exc:
        raise BatchError(
            503, f"All {exc.limit} batch transcription slots are busy; try again in a minute.", "busy", "60"
        ) from None
    except Exception as exc:
        log.error("batch_recognizer_unavailable", extra=fields(error=repr(exc)[:300]))
        raise BatchError(503, "The embedded recognizer could not start; try again shortly.", "unavailable") from None
    try:
        async with contextlib.aclosing(chunks) as feed:  # closed at once when the job stops: the decoder thread ends
            async for chunk in feed:
                seconds = len(chunk) / 32000
                charge(seconds)
                await job.wait_until(job.fed - AHEAD)
                stream.feed(chunk)
                job.fed += seconds
        await job.wait_until(job.fed - 1.0)  # progress comes per second of audio handled
        await stream.close(timeout=STALL)
        if job.error:
            raise BatchError(503, "The embedded recognizer failed on this file; try again shortly.", "recognizer")
    except BaseException:
        stream.abort()
        raise
    return Transcript(segments, job.fed)


class _Progress:
    """A local job's state: audio seconds fed, seconds the worker reported handled, its error."""

    def __init__(self) -> None:
        self.fed = 0.0
        self.done = 0.0
        self.error: str | None = None
        self.moved = asyncio.Event()

    async def wait_until(self, seconds: float) -> None:
        """Until the worker has handled `seconds` of audio; BatchError after STALL seconds without progress."""
        deadline = time.monotonic() + STALL
        while self.done < seconds:
            if self.error:
                raise BatchError(503, "The embedded recognizer failed on this file; try again shortly.", "recognizer")
            self.moved.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BatchError(503, "The recognizer is overloaded; try the file again later.", "busy", "60")
            try:
                await asyncio.wait_for(self.moved.wait(), left)
            except TimeoutError:
                continue
            deadline = time.monotonic() + STALL  # progress: the stall clock starts again


# ---- remote: errors --------------------------------------------------------------------------------

PASSED_STATUSES = {400, 401, 402, 403, 404, 413, 415, 429, 500, 503}


def _http_error(provider: str, response: httpx.Response, secrets: tuple[str, ...] = ()) -> BatchError:
    """The provider's refusal, same status for the client (what the issue maps), its message when it gives one.
    A 401/403 is about the server's key, never the client's: said so."""
    status = response.status_code
    message = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            err = body.get("error")
            message = (
                (err.get("message") if isinstance(err, dict) else err)
                or body.get("err_msg")
                or body.get("message")
                or ""
            )
    except ValueError:
        pass
    message = str(message)
    for secret in secrets:  # a provider that echoes the credential it was sent must not hand it to the client
        message = message.replace(secret, "[redacted]")
    message = message[:300]
    if status in (401, 403):
        text = f"{provider} refused this server's API key; the operator should check it."
    elif status == 402:
        text = f"The {provider} account of this server is out of credit; the operator should top it up."
    elif status == 429:
        text = f"{provider} is rate-limiting this server; try again later."
    elif status >= 500:
        text = f"{provider} failed ({status}); try again later."
    else:
        text = f"{provider} refused the request ({status})."
    if message:
        text += f" {provider} said: {message}"
    code = {401: "upstream_auth", 402: "upstream_payment", 429: "rate_limited"}.get(status)
    return BatchError(status if status in PASSED_STATUSES else 502, text, code, response.headers.get("retry-after"))


async def _post(provider: str, url: str, secrets: tuple[str, ...], **kw) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as client:
            response = await client.post(url, **kw)
    except httpx.HTTPError as exc:
        log.warning("batch_upstream_unreachable", extra=fields(provider=provider, error=type(exc).__name__))
        raise BatchError(502, f"{provider} could not be reached; try again later.", "upstream_unreachable") from None
    if response.status_code != 200:
        log.warning("batch_upstream_refused", extra=fields(provider=provider, status=response.status_code))
        raise _http_error(provider, response, secrets)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BatchError(502, f"{provider} answered something that is not a transcript.", "upstream_bad_answer")
    return body


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _first(value: Any) -> dict[str, Any]:
    return _dict(value[0]) if isinstance(value, list) and value else {}


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _num(value: Any, default: float = 0.0) -> float:
    n = protocol.number(value)
    return default if n is None else float(n)


def _words(raw: Any, text_key: str = "word") -> list[dict[str, Any]]:
    out = []
    for w in raw if isinstance(raw, list) else []:
        if isinstance(w, dict) and isinstance(w.get(text_key) or w.get("word"), str):
            out.append({"word": w.get(text_key) or w["word"], "start": _num(w.get("start")), "end": _num(w.get("end"))})
    return out


def _segments_from_words(words: list[dict[str, Any]], duration: float, text: str) -> list[Segment]:
    """A provider that gave words but no segments: a segment per sentence (exports.ends_sentence, the one rule:
    "Mr." ends none, "…" does) or per 12 s."""
    if not words:
        return [Segment(0.0, duration, text)] if text.strip() else []
    out: list[Segment] = []
    group: list[dict[str, Any]] = []
    for w in words:
        group.append(w)
        if ends_sentence(w["word"]) or w["end"] - group[0]["start"] >= 12.0:
            out.append(Segment(group[0]["start"], group[-1]["end"], " ".join(g["word"] for g in group), group))
            group = []
    if group:
        out.append(Segment(group[0]["start"], group[-1]["end"], " ".join(g["word"] for g in group), group))
    return out


# ---- aigateway -------------------------------------------------------------------------------------


async def transcribe_aigateway(
    settings: Settings,
    file: IO[bytes],
    filename: str,
    content_type: str,
    language: str | None,
    prompt: str | None,
    words: bool,
    duration: float | None,
) -> Transcript:
    """The gateway's OpenAI-compatible endpoint, always asked for verbose_json (so every format, and the stored
    session, can be made from its answer)."""
    data: dict[str, str | list[str]] = {"model": settings.model, "response_format": "verbose_json"}
    data["timestamp_granularities[]"] = ["segment", "word"] if words else ["segment"]
    if language:
        data["language"] = language
    if prompt:
        data["prompt"] = prompt
    file.seek(0)
    body = await _post(
        "AIgateway",
        settings.aigateway_batch_url,
        settings.secrets,
        headers={"Authorization": f"Bearer {settings.aigateway_api_key}"},
        data=data,
        files={"file": (filename, file.read(), content_type)},  # at most MAX_UPLOAD_MB, already spooled to disk
    )
    text = _str(body.get("text"))
    dur = _num(body.get("duration"), duration or 0.0)
    word_list = _words(body.get("words"))
    segments = [
        Segment(_num(s.get("start")), _num(s.get("end")), s["text"].strip(), _words(s.get("words")))
        for s in _list(body.get("segments"))
        if isinstance(s, dict) and isinstance(s.get("text"), str)
    ] or _segments_from_words(word_list, dur, text)
    if word_list and not any(s.words for s in segments):
        for s in segments:  # words given at the top level: each segment gets those inside it
            s.words = [w for w in word_list if s.start - 0.01 <= w["start"] < s.end + 0.01]
    return Transcript(segments, dur, _str(body.get("language"), language or "en"), text)


# ---- deepgram --------------------------------------------------------------------------------------


async def transcribe_deepgram(
    settings: Settings,
    file: IO[bytes],
    content_type: str,
    language: str | None,
    keyterms: tuple[str, ...],
    duration: float | None,
) -> Transcript:
    """Deepgram pre-recorded: the file as the body, `utterances=true` for segments, `smart_format` for punctuation."""
    query: list[tuple[str, str]] = [
        ("model", settings.deepgram_batch_model),
        ("smart_format", "true"),
        ("punctuate", "true"),
        ("utterances", "true"),
    ]
    if language:
        query.append(("language", language))
    query += [("keyterm", t) for t in keyterms]
    file.seek(0)
    body = await _post(
        "Deepgram",
        settings.deepgram_batch_url,
        settings.secrets,
        params=query,
        headers={"Authorization": f"Token {settings.deepgram_api_key}", "Content-Type": content_type},
        content=file.read(),
    )
    results = _dict(body.get("results"))
    channel = _first(results.get("channels"))
    alt = _first(channel.get("alternatives"))
    text = _str(alt.get("transcript"))
    meta = _dict(body.get("metadata"))
    dur = _num(meta.get("duration"), duration or 0.0)
    word_list = _words(alt.get("words"), "punctuated_word")
    segments = [
        Segment(
            _num(u.get("start")), _num(u.get("end")), u["transcript"].strip(), _words(u.get("words"), "punctuated_word")
        )
        for u in _list(results.get("utterances"))
        if isinstance(u, dict) and isinstance(u.get("transcript"), str) and u["transcript"].strip()
    ] or _segments_from_words(word_list, dur, text)
    return Transcript(segments, dur, _str(channel.get("detected_language"), language or "en"), text)
