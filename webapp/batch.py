"""`POST /v1/audio/transcriptions`, OpenAI-compatible batch transcription: the multipart upload read within
MAX_UPLOAD_MB, its fields checked, the file probed (PyAV), the minute quotas applied, the job run on the configured
backend (webapp/upstreams/batch.py) and the answer rendered as json, text, srt, vtt or verbose_json, or streamed as
server-sent events (`transcript.text.delta`, `transcript.text.done`). Each result is recorded as a session (the
Recorder, as live captions are): listed in /sessions for the uploading browser, with a share link and exports.

Errors are in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from . import exports, media, metrics
from .apikeys import ApiAuthError, ApiClient, ApiKeys, error_response, openai_error
from .config import Settings
from .logs import fields
from .protocol import StreamParams
from .quotas import Lease, QuotaError, Quotas
from .security import Login, origin_allowed
from .share_pages import SharePages
from .store import STORE_ERRORS
from .upstreams.batch import (
    BatchError,
    Segment,
    Transcript,
    transcribe_aigateway,
    transcribe_deepgram,
    transcribe_local,
)
from .usage import ApiQuotaError, Usage

log = logging.getLogger(__name__)

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
TEXT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
FIELD_BYTES = 64 * 1024  # a form field other than the file (a prompt is at most a few hundred words)
MAX_KEYTERMS = 50
LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})?", re.IGNORECASE)


class Refused(Exception):
    """A request refused before any work: its response."""

    def __init__(self, response: Response):
        self.response = response


class _TooLarge(Exception):
    pass


@dataclass
class Job:
    """One upload's checked fields."""

    file: UploadFile
    model: str
    response_format: str
    language: str | None
    words: bool
    segments: bool
    prompt: str
    stream: bool
    progress: bool  # our page asked for progress and session events (never sent to other clients)


class _Upload:
    """What the Recorder reads of a session (relay.RelaySession's attributes it uses), for an uploaded file."""

    resumed = False
    out = None  # no page socket to tell about store outages: the response says what was stored

    def __init__(self, settings: Settings):
        self.id = secrets.token_urlsafe(9)
        self.settings = settings
        self.params = StreamParams(sample_rate=media.RATE)
        self.audio_seconds = 0.0


class Batch:
    def __init__(
        self, settings: Settings, quotas: Quotas, login: Login, shares: SharePages, api_keys: ApiKeys, usage: Usage
    ):
        self.settings, self.quotas, self.login, self.shares = settings, quotas, login, shares
        self.api_keys, self.usage = api_keys, usage
        self.max_bytes = settings.max_upload_mb * 1024 * 1024
        self.max_seconds = settings.max_upload_minutes * 60.0

    async def authenticate(self, request: Request) -> ApiClient:
        """Who may upload (webapp/apikeys.py): a relay API key or the access token (`Authorization: Bearer`), the
        page's login cookie, or anyone while no key exists and no token is set. Without ACCESS_TOKEN the page is
        open, so an upload from the page itself (our own Origin, a same-origin fetch) is let in as the page is."""
        try:
            return await self.api_keys.authenticate(request)
        except ApiAuthError as exc:
            same_page = request.headers.get("origin") and request.headers.get("sec-fetch-site") == "same-origin"
            if exc.status == 401 and not self.login.required and same_page:
                return ApiClient("", "page", self.quotas.client_ip(request))
            raise

    async def transcriptions(self, request: Request) -> Response:
        try:
            if not origin_allowed(request, self.settings):  # a browser page of another site: never with our cookies
                raise Refused(openai_error(403, "Uploads from another site's page are not accepted.", code="origin"))
            try:
                client = await self.authenticate(request)
                self.usage.check(client)  # the key's minutes for today
            except (ApiAuthError, ApiQuotaError) as exc:
                raise Refused(error_response(exc)) from None
            principal = client.name
            job = await self._read(request)
        except Refused as refused:
            return refused.response
        try:
            duration = await asyncio.to_thread(self._probe, job.file)
            if duration is not None:
                try:
                    self.usage.check(client, duration)
                except ApiQuotaError as exc:
                    raise Refused(error_response(exc)) from None
            lease = self._admit(request)
        except Refused as refused:
            await job.file.close()  # its spooled temporary file goes now, not at garbage collection
            return refused.response
        log.info(
            "batch_started",
            extra=fields(
                backend=self.settings.backend,
                format=job.response_format,
                stream=job.stream,
                bytes=job.file.size,
                duration=duration,
                principal=principal,
            ),
        )
        runner = Runner(self, request, job, lease, duration, client)
        if job.stream:
            return StreamingResponse(
                runner.events(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        try:
            transcript = await runner.run()
        except BatchError as exc:
            return _batch_error(exc)
        except Exception:
            log.exception("batch_failed")
            return openai_error(500, "The transcription failed; the operator should check the server's log.")
        return runner.render(transcript)

    # ---- checks ---------------------------------------------------------------------------------------

    async def _read(self, request: Request) -> Job:
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise Refused(openai_error(400, "Send the audio as multipart/form-data with a `file` field.", "file"))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes + FIELD_BYTES:
            raise Refused(self._too_big())
        form = await self._form(request)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise Refused(openai_error(400, "The `file` field is missing: attach the audio file as `file`.", "file"))
        if file.size is not None and file.size > self.max_bytes:
            raise Refused(self._too_big())
        if file.size == 0:
            raise Refused(openai_error(400, "The uploaded file is empty.", "file"))

        def text(name: str) -> str:
            value = form.get(name)
            if isinstance(value, UploadFile):
                raise Refused(openai_error(400, f"`{name}` must be a text field, not a file.", name))
            return (value or "").strip()

        model = text("model")
        if not model:
            raise Refused(
                openai_error(400, "The `model` field is missing (e.g. whisper-1; any name is accepted).", "model")
            )
        fmt = text("response_format") or "json"
        if fmt not in FORMATS:
            raise Refused(
                openai_error(
                    400, f"`response_format` must be one of {', '.join(FORMATS)}; got {fmt[:40]!r}.", "response_format"
                )
            )
        language = text("language").lower() or None
        if language is not None and not LANGUAGE.fullmatch(language):
            raise Refused(
                openai_error(
                    400, f"`language` must be an ISO-639-1 code such as en; got {language[:40]!r}.", "language"
                )
            )
        if language is not None and self.settings.backend == "local" and language.split("-")[0] != "en":
            raise Refused(
                openai_error(
                    400,
                    f"The embedded recognizer transcribes English only; `language` {language!r} is not available "
                    "(send en, leave it out, or ask the operator for a cloud backend).",
                    "language",
                    "unsupported_language",
                )
            )
        grains = [
            g.strip() for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
        ]
        bad = [g for g in grains if not isinstance(g, str) or g not in GRANULARITIES]
        if bad:
            raise Refused(
                openai_error(
                    400, "`timestamp_granularities[]` values must be segment or word.", "timestamp_granularities[]"
                )
            )
        stream = text("stream").lower()
        if stream not in ("", "true", "false"):
            raise Refused(openai_error(400, "`stream` must be true or false.", "stream"))
        return Job(
            file=file,
            model=model,
            response_format=fmt,
            language=language,
            words="word" in grains,
            segments="segment" in grains or not grains,
            prompt=text("prompt"),
            stream=stream == "true",
            progress=text("relay_progress") == "true",
        )

    async def _form(self, request: Request):
        """The multipart form, read at most max_bytes (+ its fields) from the socket, whatever Content-Length said."""
        limit, seen = self.max_bytes + FIELD_BYTES, 0
        receive = request.receive

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        limited = Request(request.scope, counted)
        try:
            return await limited.form(max_files=1, max_fields=16, max_part_size=FIELD_BYTES)
        except _TooLarge:
            raise Refused(self._too_big()) from None
        except Exception as exc:  # python-multipart's parse errors, Starlette's limits (HTTPException 400)
            detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or type(exc).__name__
            raise Refused(
                openai_error(400, f"The multipart body could not be read: {str(detail)[:200]}.", "file")
            ) from None

    def _too_big(self) -> JSONResponse:
        return openai_error(
            413,
            f"The file is larger than this server's limit of {self.settings.max_upload_mb} MB; "
            "split it or compress it (e.g. to Opus or MP3).",
            "file",
            "file_too_large",
        )

    def _probe(self, file: UploadFile) -> float | None:
        try:
            duration = media.probe(file.file)
        except media.MediaError as exc:
            raise Refused(
                openai_error(
                    415,
                    f"{exc} Send WAV, FLAC, MP3, M4A/AAC, OGG/Opus or WebM audio.",
                    "file",
                    "unsupported_file",
                )
            ) from None
        if duration is not None and duration > self.max_seconds:
            raise Refused(self._too_long())
        return duration

    def _too_long(self) -> JSONResponse:
        return openai_error(
            413,
            f"The audio is longer than this server's limit of {self.settings.max_upload_minutes} minutes; split it.",
            "file",
            "audio_too_long",
        )

    def _admit(self, request: Request) -> Lease:
        try:
            return self.quotas.admit(self.quotas.client_ip(request))
        except QuotaError as exc:
            raise Refused(openai_error(429, exc.message, code=exc.code, retry_after=exc.retry_after or None)) from None


def _batch_error(exc: BatchError) -> JSONResponse:
    return openai_error(exc.status, exc.message, code=exc.code, retry_after=exc.retry_after or None)


class Runner:
    """One job: runs the backend, records the session, and renders or streams the answer."""

    def __init__(
        self, batch: Batch, request: Request, job: Job, lease: Lease, duration: float | None, client: ApiClient
    ):
        self.batch, self.job, self.lease, self.duration = batch, job, lease, duration
        self.client = client  # who authenticate() let in: whose usage this job is
        self.principal = client.name
        self.settings = batch.settings
        self.recorder = batch.shares.sink(request)
        self.upload = _Upload(self.settings)
        self.share_url: str | None = None
        self.turns = 0
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # events for a streamed answer

    async def run(self) -> Transcript:
        job, settings = self.job, self.settings
        started = time.monotonic()
        reason = "error"
        try:
            opened = await self.recorder.opened(self.upload)
            self.share_url = opened.get("share_url") if isinstance(opened, dict) else None
            if self.share_url and job.progress:
                self.queue.put_nowait({"type": "caption_relay.session", "share_url": self.share_url})
            transcript = await self._transcribe()
            if settings.backend != "local":  # the local backend emits its segments as they are decoded
                for seg in transcript.segments:
                    self._segment(seg)
            reason = "upload"
            return transcript
        finally:
            self.lease.release()
            log.info(  # before the record's close, which a client that left may cut short
                "batch_finished",
                extra=fields(
                    session=self.upload.id,
                    principal=self.principal,
                    reason=reason,
                    audio_s=round(self.upload.audio_seconds, 3),
                    turns=self.turns,
                    wall_s=round(time.monotonic() - started, 3),
                ),
            )
            metrics.BATCH_JOBS.labels(settings.backend, "ok" if reason == "upload" else "error").inc()
            if self.upload.audio_seconds:
                with contextlib.suppress(*STORE_ERRORS):  # usage is kept in memory and written by the next flush
                    await self.batch.usage.charge(self.client, self.upload.audio_seconds, check=False)
            await self.job.file.close()
            await self.recorder.closed(self.upload, reason)

    async def _transcribe(self) -> Transcript:
        job, settings = self.job, self.settings
        if settings.backend == "local":
            transcript = await transcribe_local(
                settings,
                media.pcm_chunks(job.file.file, self.batch.max_seconds),
                self._segment,
                self._progress,
                self._charge,
            )
        else:
            if self.duration is not None:
                self._charge(self.duration)  # a remote job bills its whole length: charged before it is sent
            filename, ctype = job.file.filename or "audio", job.file.content_type or "application/octet-stream"
            if settings.backend == "aigateway":
                transcript = await transcribe_aigateway(
                    settings, job.file.file, filename, ctype, job.language, job.prompt, job.words, self.duration
                )
            else:
                transcript = await transcribe_deepgram(
                    settings, job.file.file, ctype, job.language, _keyterms(job.prompt), self.duration
                )
            if self.duration is None:
                self.lease.charge(transcript.duration)  # its length was only known from the answer
        self.upload.audio_seconds = transcript.duration
        return transcript

    def _charge(self, seconds: float) -> None:
        if not self.lease.charge(seconds):
            message, retry = self.batch.quotas.limit_message(self.lease)
            raise BatchError(429, message, self.lease.limit_code, str(int(retry)) if retry else None)
        self.upload.audio_seconds += seconds if self.settings.backend == "local" else 0.0

    def _segment(self, seg: Segment) -> None:
        self.recorder.event(
            {
                "final": True,
                "turn": self.turns,
                "text": seg.text,
                "start": seg.start,
                "end": seg.end,
                "words": seg.words,
            }
        )
        self.turns += 1
        self.queue.put_nowait({"type": "transcript.text.delta", "delta": (" " if self.turns > 1 else "") + seg.text})

    def _progress(self, seconds: float) -> None:
        if self.job.progress:
            total = self.duration
            self.queue.put_nowait(
                {
                    "type": "caption_relay.progress",
                    "seconds": round(seconds, 2),
                    "duration": round(total, 2) if total else None,
                }
            )

    # ---- answers --------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"X-Session-Url": self.share_url} if self.share_url else {}

    def render(self, t: Transcript) -> Response:
        fmt = self.job.response_format
        if fmt == "json":
            return JSONResponse({"text": t.full_text}, headers=self._headers())
        if fmt == "verbose_json":
            return JSONResponse(self.verbose(t), headers=self._headers())
        turns = _turns(t)
        body = {"text": t.full_text + "\n", "srt": exports.to_srt(turns), "vtt": exports.to_vtt(turns)}[fmt]
        return PlainTextResponse(body, media_type=TEXT_TYPES[fmt], headers=self._headers())

    def verbose(self, t: Transcript) -> dict[str, Any]:
        out: dict[str, Any] = {"task": "transcribe", "language": t.language, "duration": round(t.duration, 3)}
        out["text"] = t.full_text
        if self.job.segments:
            out["segments"] = [
                {
                    "id": i,
                    "seek": 0,
                    "start": round(s.start, 3),
                    "end": round(s.end, 3),
                    "text": s.text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": 0.0,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.0,
                }
                for i, s in enumerate(t.segments)
            ]
        if self.job.words:
            out["words"] = [
                {"word": w["word"], "start": round(w["start"], 3), "end": round(w["end"], 3)} for w in _words(t)
            ]
        out["usage"] = {"type": "duration", "seconds": math.ceil(t.duration)}
        return out

    async def events(self) -> AsyncIterator[str]:
        """The streamed answer: a delta per segment as it is decoded, then done (or an error event)."""
        task = asyncio.create_task(self.run())
        getter: asyncio.Task | None = None
        try:
            while True:
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield _sse(getter.result())
                    continue
                getter.cancel()
                while not self.queue.empty():
                    yield _sse(self.queue.get_nowait())
                break
            try:
                transcript = task.result()
            except BatchError as exc:
                yield _sse({"error": {"message": exc.message, "type": "server_error", "param": None, "code": exc.code}})
                return
            except Exception:
                log.exception("batch_failed")
                yield _sse(
                    {
                        "error": {
                            "message": "The transcription failed.",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                return
            done: dict[str, Any] = {"type": "transcript.text.done", "text": transcript.full_text}
            done["usage"] = {"type": "duration", "seconds": math.ceil(transcript.duration)}
            yield _sse(done)
        finally:
            if getter is not None:
                getter.cancel()
            if not task.done():  # the client left: the job stops (its session is recorded as far as it got)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _turns(t: Transcript) -> list[dict[str, Any]]:
    return [{"text": s.text, "start": s.start, "end": s.end, "words": s.words} for s in t.segments]


def _words(t: Transcript) -> list[dict[str, Any]]:
    """The words with times: the provider's, else spread over each segment by length (exports.timed_words)."""
    out = []
    for turn in _turns(t):
        if turn["words"]:
            out += turn["words"]
        else:
            out += [{"word": w.text, "start": w.start, "end": w.end} for w in exports.timed_words(turn)]
    return out


def _keyterms(prompt: str) -> tuple[str, ...]:
    """A prompt as Deepgram key terms: its comma- or line-separated phrases (a plain sentence is one term)."""
    terms = [t.strip() for t in re.split(r"[,\n;]", prompt) if t.strip()]
    return tuple(t[:100] for t in terms[:MAX_KEYTERMS])
