"""`/v1/realtime`: the seed's (AIgateway's) realtime socket on the relay, as a translation layer.

A client written for `wss://api.aigateway.sh/v1/realtime?model=deepgram/flux&encoding=linear16&sample_rate=16000
&interim_results=true` points at the relay instead. Audio frames and the commands `KeepAlive`, `Finalize`,
`CloseStream` are the relay's own (docs/protocol.md), so they pass as they are; what changes is what comes back:
the relay's browser events become Deepgram-v1-style messages (docs/api.md, "Realtime"):
`transcript` -> `Results`, `closed` -> `Metadata` (then the close), `error` -> `Error`; `ready`, `turn`,
`status`, `gap` and `notice` have no v1 counterpart and are not sent.

Three parts: `parse` (the query string, checked against a whitelist like /ws/listen's), the pure mapping
(`Translator`, tables in tests/test_realtime_messages.py) and `SeedSocket`, the BrowserSocket adapter the
RelaySession writes through, so the session, its Outbox, reconnects, quotas and recording are /ws/listen's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from .audiosocket import Listener
from .browsersocket import BrowserSocket
from .exports import clean, timed_words
from .protocol import ParamError, StreamParams, parse_params, seconds

# The seed's realtime model names: the relay's own recognizer (STT_BACKEND, STT_MODEL) answers for either.
MODELS = ("deepgram/flux", "deepgram/nova-3")
# Deepgram v1 formatting switches: Flux and the embedded recognizer always punctuate, so they change nothing.
FORMATTING = ("punctuate", "smart_format")
# Query parameters handed on to protocol.parse_params as they are (the stream's own settings).
STREAM = ("encoding", "sample_rate", "keyterm", "language", "eot_threshold", "eager_eot_threshold", "eot_timeout_ms")
ALLOWED = frozenset((*STREAM, "model", "interim_results", "channels", "api_key", *FORMATTING))

# Our error codes -> the seed's error `type` (its SDK reads {"error": {"message", "type"}}; documented types:
# invalid_key 401, scope_exceeded 403, rate_limited 429; api_error otherwise; invalid_request_error as OpenAI's).
ERROR_TYPES = {
    "unauthorized": "invalid_key",
    "login_throttled": "rate_limited",
    "too_many_streams": "rate_limited",
    "rate_limited": "rate_limited",
    "capacity": "rate_limited",
    "quota_exceeded": "scope_exceeded",
    "session_limit": "scope_exceeded",
    "bad_request": "invalid_request_error",
    "unsupported_language": "invalid_request_error",
    "frame_too_large": "invalid_request_error",
    "bad_audio": "invalid_request_error",
    "bad_message": "invalid_request_error",
    "unknown_message": "invalid_request_error",
    "buffer_full": "invalid_request_error",
}


@dataclass(frozen=True)
class Options:
    """What the seed's query string asks of the messages (the stream's own settings are StreamParams)."""

    interim_results: bool = False  # Deepgram v1's default: finals only


def _flag(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise ParamError(f"{name} must be true or false")
    return value == "true"


def parse(items: Iterable[tuple[str, str]]) -> tuple[StreamParams, Options]:
    """The query items of /v1/realtime; ParamError with a message naming the parameter and what it accepts."""
    stream: list[tuple[str, str]] = []
    seen: set[str] = set()
    interim = False
    for name, value in items:
        if name not in ALLOWED:
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise ParamError(f"unknown parameter {shown!r}; allowed: {', '.join(sorted(ALLOWED - {'api_key'}))}")
        if name != "keyterm":
            if name in seen:
                raise ParamError(f"parameter {name!r} given twice")
            seen.add(name)
        if name in STREAM:
            stream.append((name, value))
        elif name == "model" and value not in MODELS:
            raise ParamError(f"model must be one of {', '.join(MODELS)} (this relay's recognizer answers both)")
        elif name == "interim_results":
            interim = _flag(name, value)
        elif name == "channels" and value != "1":
            raise ParamError("channels must be 1: send mono audio")
        elif name in FORMATTING:
            _flag(name, value)
    if "encoding" in seen and dict(stream)["encoding"] != "linear16":
        raise ParamError("encoding must be linear16 (16-bit little-endian PCM, mono); no other is supported")
    params = parse_params(stream)
    # Interim Results carry their words, as Deepgram's do (the relay sends /ws/listen's interims without them).
    return StreamParams(**{**params.__dict__, "interim_words": interim}), Options(interim_results=interim)


# ---- the mapping (pure) ----------------------------------------------------------------------------


def results_words(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A transcript's words in v1's shape: `word` lower-case without punctuation, `punctuated_word` as written,
    start/end always (times the recognizer left out are spread across the turn, as the exports do)."""
    # the words timed_words keeps, in its order: their confidences line up with its result
    given = [w for w in event.get("words") or [] if isinstance(w, dict) and clean(w.get("word", ""))]
    out = []
    for i, w in enumerate(timed_words(event, float(event.get("start") or 0.0))):
        confidence = given[i].get("confidence") if i < len(given) else None
        out.append(
            {
                "word": w.text.lower().strip(".,!?;:\"'()") or w.text,
                "start": seconds(w.start),
                "end": seconds(w.end),
                "confidence": confidence if type(confidence) in (int, float) else 1.0,
                "punctuated_word": w.text,
            }
        )
    return out


def confidence(words: list[dict[str, Any]]) -> float:
    """The transcript's confidence: its words' mean; 1.0 when the recognizer reports none (the embedded one)."""
    return round(sum(w["confidence"] for w in words) / len(words), 4) if words else 1.0


def error_message(code: str, message: str, retry_after: float | None = None) -> dict[str, Any]:
    """An error in a shape both kinds of seed client read: Deepgram's `Error` (type, code, description) and the
    gateway SDK's envelope (error.message, error.type)."""
    msg: dict[str, Any] = {
        "type": "Error",
        "code": code,
        "description": message,
        "retryable": retry_after is not None or code in ("capacity", "upstream_unavailable", "upstream_error"),
        "error": {"message": message, "type": ERROR_TYPES.get(code, "api_error"), "code": code, "param": None},
    }
    if retry_after is not None:
        msg["retry_after"] = retry_after
    return msg


class Translator:
    """The relay's browser events (docs/protocol.md) -> the seed's messages, one event at a time (at most one
    message each). Keeps what the later messages need: the request id (the session id), the share link, whether
    the open turn's final answers a Finalize."""

    def __init__(self, options: Options, model: str):
        self.interim_results = options.interim_results
        self.model = model
        self.request_id = ""
        self.share_url: str | None = None
        self.open = False  # a turn has interims and no final yet
        self.finalizing = False  # the client asked to finalize the open turn (Finalize, CloseStream)
        self.created = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def finalize_requested(self) -> None:
        if self.open:
            self.finalizing = True

    def message(self, event: dict[str, Any], duration: float = 0.0) -> dict[str, Any] | None:
        kind = event["type"]
        if kind == "transcript":
            final = bool(event["final"])
            if not final:
                self.open = True
                if not self.interim_results:
                    return None
            forced = final and self.finalizing
            if final:
                self.open = self.finalizing = False
            return self.results(event, final, forced)
        if kind == "error":
            return error_message(event["code"], event["message"], event.get("retry_after"))
        if kind == "closed":  # a stream that never started (refused upstream) ends with its Error alone
            return self.metadata(event.get("reason", ""), duration) if self.request_id else None
        if kind == "ready":
            self.request_id = event.get("session_id", "")
            self.share_url = event.get("share_url")
        return None  # turn, status, gap, notice: no v1 counterpart

    def results(self, event: dict[str, Any], final: bool, forced: bool) -> dict[str, Any]:
        words = results_words(event)
        start = event["start"]
        alternative: dict[str, Any] = {"transcript": event["text"], "confidence": confidence(words), "words": words}
        if event.get("languages"):
            alternative["languages"] = event["languages"]
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": seconds(max(event["end"] - start, 0.0)),
            "start": start,
            "is_final": final,
            "speech_final": final and not forced,  # an endpoint; a Finalize's flush says from_finalize instead
            "from_finalize": forced,
            "channel": {"alternatives": [alternative]},
            "metadata": {"request_id": self.request_id, "model_info": {"name": self.model}},
        }

    def metadata(self, reason: str, duration: float) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "created": self.created,
            "duration": round(duration, 3),
            "channels": 1,
            "models": [self.model],
            "model_info": {"name": self.model},
            "close_reason": reason,  # the relay's: client_closed after CloseStream (docs/protocol.md, `closed`)
        }
        if self.share_url:
            msg["share_url"] = self.share_url  # the recorded transcript's link (relative to this server)
        return msg


# ---- the adapter -----------------------------------------------------------------------------------


class _Session(Listener, Protocol):
    """What the adapter reads of the RelaySession it is attached to."""

    audio_seconds: float

    def touch(self) -> None: ...


class _Commands:
    """The session's listener as the adapter hands it to the socket: text commands are looked at on the way
    (Finalize / CloseStream mark the open turn's final as theirs; KeepAlive holds an idle socket open, as it
    does on Deepgram v1), everything else goes straight on."""

    __slots__ = ("session", "translator")

    def __init__(self, session: _Session, translator: Translator):
        self.session, self.translator = session, translator

    def on_bytes(self, data: bytes) -> None:
        self.session.on_bytes(data)

    def on_text(self, text: str) -> None:
        if len(text) <= 4096:
            try:
                kind = json.loads(text).get("type")
            except (ValueError, AttributeError, RecursionError):
                kind = None  # the session answers it (bad_message, unknown_message)
            if kind in ("Finalize", "CloseStream"):
                self.translator.finalize_requested()
            elif kind == "KeepAlive":
                self.session.touch()
        self.session.on_text(text)

    def on_disconnect(self) -> None:
        self.session.on_disconnect()

    def on_writable(self) -> None:
        self.session.on_writable()


class SeedSocket:
    """A BrowserSocket that speaks the seed's messages: it wraps the real one (the direct socket, or ASGI) and
    translates each event the session's Outbox sends. Flow control, holds and closes are the real socket's."""

    def __init__(self, inner: BrowserSocket, translator: Translator):
        self.inner = inner
        self.translator = translator
        self.session: _Session | None = None

    # The real socket's flow control (only the socket itself sets it: the setters are the protocol's shape)
    @property
    def writable(self) -> bool:
        return self.inner.writable

    @writable.setter
    def writable(self, value: bool) -> None:
        self.inner.writable = value

    @property
    def sending(self) -> bool:
        return self.inner.sending

    @sending.setter
    def sending(self, value: bool) -> None:
        self.inner.sending = value

    def attach(self, listener: Listener) -> None:
        self.session = cast(_Session, listener)  # a RelaySession: it has audio_seconds and touch()
        self.inner.attach(_Commands(self.session, self.translator))

    def _duration(self) -> float:
        return self.session.audio_seconds if self.session is not None else 0.0

    def send_event(self, event: dict[str, Any]) -> bool:
        msg = self.translator.message(event, self._duration())
        if msg is None:
            return True  # nothing to say to a seed client; the event counts as sent
        return self.inner.send_event(msg)

    def hold(self, on: bool) -> None:
        self.inner.hold(on)

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    async def drop(self, code: int, reason: str, last: list[dict[str, Any]], grace: float) -> None:
        translated = [m for e in last if (m := self.translator.message(e, self._duration())) is not None]
        await self.inner.drop(code, reason, translated, grace)

    async def close(self, code: int, grace: float) -> None:
        await self.inner.close(code, grace)
