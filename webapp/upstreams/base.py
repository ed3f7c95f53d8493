"""The one small interface every recognizer implements, and the turn bookkeeping they share.

Lifecycle, driven by webapp.relay (the session is the UpstreamListener below):
    up = make_upstream(settings, params, listener)
    await up.connect()              # raises UpstreamError; returns once audio can be sent
    async for ev in up.events():    # ends after close(); the events themselves go to listener.on_event
        ...
    up.send_audio(pcm)              # 16-bit LE mono PCM at params.sample_rate; never waits
    up.configure(keyterms)          # new key terms on the live connection; False: not supported
    await up.finalize()             # end the open turn now
    await up.close()                # finalize the open turn, flush, end the event stream
    await up.abort()                # drop everything now (browser gone, server stopping)

A fatal upstream problem ends events() by raising UpstreamError. Nothing provider-specific
leaves an upstream module: the relay only sees the events built in webapp.protocol.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .. import protocol
from ..config import Settings
from ..protocol import StreamParams


class UpstreamError(Exception):
    """A failure with a browser-facing code (see docs/protocol.md)."""

    def __init__(self, code: str, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retryable, self.retry_after = code, message, retryable, retry_after

    def event(self) -> dict[str, Any]:
        return protocol.error(self.code, self.message, self.retryable, self.retry_after)


# HTTP status of a refused handshake -> (code, retryable)
_STATUS_CODES = {
    401: "upstream_auth",
    403: "upstream_auth",
    402: "upstream_payment",
    404: "upstream_not_found",
    429: "rate_limited",
    400: "upstream_bad_request",
}


def handshake_error(status: int, retry_after: str | None, provider: str) -> UpstreamError:
    """Map a refused upgrade to the app's error codes; messages say what the operator should do."""
    # delay-seconds only (an HTTP date gets no number); ASCII digits: "²" passes isdigit() but not float()
    whole = protocol.whole_number(retry_after.strip()) if retry_after else None
    seconds = float(whole) if whole is not None else None
    code = _STATUS_CODES.get(status, "upstream_unavailable" if status >= 500 else "upstream_error")
    messages = {
        "upstream_auth": f"{provider} refused the server's API key (HTTP {status}). The operator must check the key.",
        "upstream_payment": f"{provider} says the account has no credit left (HTTP 402). The operator must top it up.",
        "upstream_not_found": f"{provider} does not know this endpoint or model (HTTP 404). Check the URL and STT_MODEL.",
        "rate_limited": f"{provider} is rate limiting this server (HTTP 429). Try again"
        + (f" in {int(seconds)} s." if seconds is not None else " shortly."),
        "upstream_bad_request": f"{provider} rejected the stream settings (HTTP 400).",
        "upstream_unavailable": f"{provider} is unavailable (HTTP {status}). Try again shortly.",
    }
    message = messages.get(code, f"{provider} refused the connection (HTTP {status}).")
    return UpstreamError(code, message, retryable=code in ("rate_limited", "upstream_unavailable"), retry_after=seconds)


# An upstream `Error` message, classified by its code (or, without a known code, its text): first match wins.
# (class, retryable, needles in the code, phrases in the text)
_ERROR_CLASSES = (
    (
        "upstream_auth",
        False,
        ("AUTH", "CREDENTIAL", "FORBIDDEN", "PERMISSION", "API_KEY", "INVALID_KEY", "TOKEN"),
        ("credential", "api key", "unauthori", "forbidden", "authenticat", "permission"),
    ),
    (
        "upstream_payment",
        False,
        ("PAYMENT", "CREDIT", "BALANCE", "BILLING", "QUOTA", "INSUFFICIENT"),
        ("payment", "credit", "balance", "billing", "quota"),
    ),
    ("rate_limited", True, ("TOO_MANY", "RATE_LIMIT", "THROTTL"), ("rate limit", "too many", "throttl")),
    (
        "upstream_bad_request",
        False,
        ("INVALID", "BAD_REQUEST", "UNSUPPORTED", "UNKNOWN_MESSAGE", "MALFORMED"),
        ("invalid", "unsupported", "malformed", "bad request"),
    ),
)
_PROVIDER_MESSAGES = {
    "upstream_auth": "{} refused the server's credentials. The operator must check the API key.",
    "upstream_payment": "{} says the account is out of credit or quota. The operator must top it up.",
    "rate_limited": "{} is rate limiting this server. Try again shortly.",
    "upstream_bad_request": "{} rejected what the server sent. The operator should check the server's log.",
    "upstream_error": "{} reported an error in the stream. Try again shortly.",
}


def provider_error(provider: str, code: str, text: str) -> UpstreamError:
    """An error the provider reported mid-stream, as our code and our own message: never the provider's text."""
    code, text = code.upper(), text.lower()
    mapped, retryable = "upstream_error", True
    for where in ("code", "text"):
        for name, again, needles, phrases in _ERROR_CLASSES:
            if any(n in code for n in needles) if where == "code" else any(p in text for p in phrases):
                mapped, retryable = name, again
                break
        else:
            continue
        break
    return UpstreamError(mapped, _PROVIDER_MESSAGES[mapped].format(provider), retryable=retryable)


def _word_key(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def stable_chars(previous: str, text: str) -> int:
    """How many leading characters of `text` the previous hypothesis agreed on: its first words that both say
    (as spoken: case and punctuation aside), local agreement as in WhisperLiveKit's online_asr.py. The page
    shows the rest as the unstable tail."""
    agreed, pos = 0, 0
    old = previous.split()
    for i, m in enumerate(re.finditer(r"\S+", text)):
        if i >= len(old) or _word_key(old[i]) != _word_key(m.group()):
            break
        agreed, pos = i + 1, m.end()
    return pos if agreed else 0


class Turns:
    """Turns the provider's view of "the current turn's text" into StartOfTurn / interim / final / EndOfTurn.

    Indices are ours and only increase, whatever the provider numbers its turns. `words` are the provider's word
    list as it came (normalized by protocol.words when sent): finals carry them, interims only when the stream
    asked for it (`interim_words`). Providers repeat the whole turn's words in every update, and no page of ours
    reads them before the final: normalizing and sending them was the largest cost of an interim.
    """

    def __init__(self, emit, interim_words: bool = False):
        self._emit = emit
        self.interim_words = interim_words
        self.index = 0
        self.open = False
        self.text = ""
        self.words: Any = []
        self.start = 0.0
        self.end = 0.0

    def update(self, text: str, words: Any, start: float, end: float) -> None:
        text = text.strip()
        if not self.open:
            if not text:
                return  # silence before a turn: nothing to say
            self.open, self.start = True, start
            self._emit(protocol.turn_event(self.index, "StartOfTurn"))
        elif text == self.text:
            self.end = max(self.end, end)
            return
        stable = stable_chars(self.text, text)
        self.text, self.words, self.end = text, words, max(end, self.start)
        event = protocol.transcript(
            self.index, text, False, self.start, self.end, protocol.words(words) if self.interim_words else None
        )
        event["stable_chars"] = stable
        self._emit(event)

    def marker(self, event: str) -> None:
        """EagerEndOfTurn / TurnResumed, passed on only inside an open turn."""
        if self.open:
            self._emit(protocol.turn_event(self.index, event))

    def end_turn(
        self, text: str | None = None, words: Any = None, end: float | None = None, languages: Any = None
    ) -> None:
        """Commit the open turn (with the provider's final text when it has one, and the languages it detected)."""
        if text is not None and text.strip():
            if not self.open:
                self.update(text, words or [], self.end if end is None else end, end or self.end)
            self.text, self.words = text.strip(), words if words is not None else self.words
        if end is not None:
            self.end = max(self.end, end)
        if not self.open:
            return
        final = protocol.transcript(self.index, self.text, True, self.start, self.end, protocol.words(self.words))
        if (detected := protocol.languages(languages)) is not None:
            final["languages"] = detected
        self._emit(final)
        self._emit(protocol.turn_event(self.index, "EndOfTurn"))
        self.index += 1
        self.open, self.text, self.words = False, "", []


_END = object()


class UpstreamListener(Protocol):
    """What an upstream reports to (the relay session), given at construction; every call comes on the event loop."""

    def on_event(self, event: dict[str, Any]) -> None:
        """A normalized event (webapp.protocol), at once: no queue hop or task switch on the relay's hot path."""

    def on_silence(self, pcm: bytes) -> None:
        """The upstream sent this silence on its own to bridge a microphone pause: the session's timeline counts it."""

    def on_pressure(self, full: bool) -> None:
        """True: the upstream cannot take audio as fast as it comes (its send buffer is full); False: it can again."""

    def on_batch(self, start: bool) -> None:
        """True before the events of one provider message, False after them: they can leave in one browser write."""


class Upstream(abc.ABC):
    """Base class: turn bookkeeping, the end of the stream, and the lifecycle above. Without a listener (tests,
    bench/recognizer.py) the events come through events() too."""

    name = "base"

    def __init__(self, settings: Settings, params: StreamParams, listener: UpstreamListener | None = None):
        self.settings = settings
        self.params = params
        self.listener = listener
        self._queue: asyncio.Queue = asyncio.Queue()
        self._deliver = listener.on_event if listener is not None else self._queue.put_nowait
        self.turns = Turns(self._emit, params.interim_words)
        self._ended = False

    # -- for subclasses --
    def _emit(self, event: dict[str, Any]) -> None:
        if not self._ended:
            self._deliver(event)

    def _finish(self, error: UpstreamError | None = None) -> None:
        """End the event stream, cleanly or with a fatal error."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(error if error is not None else _END)

    # -- for the relay --
    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events until the stream ends (raises UpstreamError on a failure). With a listener, only the end or
        the failure comes through here."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, UpstreamError):
                raise item
            yield item

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    def send_audio(self, pcm: bytes) -> None:
        """Queue audio for the recognizer now (the relay's hot path: no awaiting, no copies)."""

    def configure(self, keyterms: tuple[str, ...]) -> bool:
        """Replace the recognizer's key terms on the live connection, without reconnecting; its answer comes as
        a `notice` event (keyterms_applied / keyterms_refused). False: this recognizer takes no key terms
        mid-stream (the relay's next connection carries them in its parameters)."""
        return False

    @abc.abstractmethod
    async def finalize(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def abort(self) -> None: ...
