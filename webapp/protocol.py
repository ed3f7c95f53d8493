"""The browser-facing protocol: stream parameters from the query string and the normalized events.

Query parameters are checked against a whitelist and turned into a typed StreamParams; upstream modules
re-encode those values themselves, so nothing the browser sends is ever pasted into an upstream URL.
Events are plain dicts (JSON-ready) built by the helpers below; `docs/protocol.md` documents them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from math import floor
from typing import Any

import orjson

SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
ENCODINGS = ("linear16",)
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 100
MAX_AUDIO_FRAME = 64 * 1024  # bytes; larger binary frames are refused
# A language tag as a client writes it (ISO 639-1 "es", a locale "en-GB"), or "multi" (detect among several)
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8}){0,2}|multi", re.ASCII)
# Text-direction overrides and isolates: in a name they reorder what the session list shows around it.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAX_NAME_CHARS = 80  # a session's name (the `name` parameter, the owner API, the /sessions form)


class ParamError(ValueError):
    """A query parameter is invalid; str() is the message shown to the user."""


@dataclass(frozen=True)
class StreamParams:
    sample_rate: int = 16000
    encoding: str = "linear16"
    keyterms: tuple[str, ...] = ()
    eot_threshold: float | None = None
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int | None = None
    interim_words: bool = False  # interim transcripts carry their words too (finals always do)
    language: str = ""  # "" = the recognizer's default (English); a base code ("es") or "multi"
    name: str | None = None  # the session's name, for its owner's list

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * 2


# ASCII only: str.isdigit() takes "²" (which int() then refuses) and int()/float() take "١٢" or "1_0"
_WHOLE = re.compile(r"[0-9]{1,12}", re.ASCII)
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12}", re.ASCII)


def whole_number(raw: str) -> int | None:
    """The value of a plain ASCII whole number ("250"), else None."""
    return int(raw) if _WHOLE.fullmatch(raw) else None


def decimal_number(raw: str) -> float | None:
    """The value of a plain ASCII decimal ("0.7", "1", ".5"), else None (no signs, exponents, nan or inf)."""
    return float(raw) if _DECIMAL.fullmatch(raw) else None


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    value = decimal_number(raw)
    if value is None:
        raise ParamError(f"{name} must be a number between {lo} and {hi}")
    if not lo <= value <= hi:
        raise ParamError(f"{name} must be between {lo} and {hi}")
    return value


def parse_language(raw: str) -> str:
    """A client's `language` (batch or realtime) as its base code ("en-GB" -> "en"), or "multi"; ParamError
    otherwise. Whether the recognizer speaks it is the upstream's to say (upstreams.language_problem)."""
    value = raw.strip().lower().replace("_", "-")
    if not _LANGUAGE.fullmatch(value):
        raise ParamError("language must be a language code such as en, es or fr (ISO 639-1), or multi")
    return value.split("-")[0]


def parse_params(items: Iterable[tuple[str, str]]) -> StreamParams:
    """Validate the query items of /ws/listen. Raises ParamError with a user-facing message."""
    single: dict[str, str] = {}
    keyterms: list[str] = []
    allowed = {
        "sample_rate",
        "encoding",
        "keyterm",
        "eot_threshold",
        "eager_eot_threshold",
        "eot_timeout_ms",
        "interim_words",
        "language",
        "name",
        "resume",
        "key",
    }  # resume/key are read by later layers; accepted here so they are not "unknown"
    for name, value in items:
        if name not in allowed:
            raise ParamError(f"unknown parameter {name!r}; allowed: {', '.join(sorted(allowed - {'resume', 'key'}))}")
        if name == "keyterm":
            term = value.strip()
            if not term or len(term) > MAX_KEYTERM_CHARS or any(ord(c) < 32 for c in term):
                raise ParamError(f"each keyterm must be 1 to {MAX_KEYTERM_CHARS} printable characters")
            keyterms.append(term)
            if len(keyterms) > MAX_KEYTERMS:
                raise ParamError(f"at most {MAX_KEYTERMS} keyterms")
        elif name in single:
            raise ParamError(f"parameter {name!r} given twice")
        else:
            single[name] = value

    sample_rate = 16000
    if "sample_rate" in single:
        if single["sample_rate"] not in {str(r) for r in SAMPLE_RATES}:
            raise ParamError(f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}")
        sample_rate = int(single["sample_rate"])
    encoding = single.get("encoding", "linear16")
    if encoding not in ENCODINGS:
        raise ParamError("encoding must be linear16 (16-bit little-endian PCM, mono)")
    eot = _float("eot_threshold", single["eot_threshold"], 0.5, 1.0) if "eot_threshold" in single else None
    eager = (
        _float("eager_eot_threshold", single["eager_eot_threshold"], 0.3, 0.9)
        if "eager_eot_threshold" in single
        else None
    )
    if eager is not None and eager > (eot if eot is not None else 0.7):
        raise ParamError("eager_eot_threshold must not exceed eot_threshold (default 0.7)")
    timeout = None
    if "eot_timeout_ms" in single:
        timeout = whole_number(single["eot_timeout_ms"])
        if timeout is None or not 500 <= timeout <= 60000:
            raise ParamError("eot_timeout_ms must be a whole number from 500 to 60000")
    interim_words = single.get("interim_words", "false")
    if interim_words not in ("true", "false"):
        raise ParamError("interim_words must be true or false")
    language = parse_language(single["language"]) if "language" in single else ""
    named = session_name(single["name"]) if "name" in single else None
    return StreamParams(
        sample_rate, encoding, tuple(keyterms), eot, eager, timeout, interim_words == "true", language, named
    )


def session_name(raw: Any) -> str | None:
    """A session's name as given (spaces trimmed and runs of them made one; "" = no name), else ParamError."""
    if not isinstance(raw, str):
        raise ParamError("name must be text")
    name = " ".join(raw.split())
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in BIDI_CONTROLS for c in name):
        raise ParamError(
            f"name must be at most {MAX_NAME_CHARS} printable characters (no control or text-direction characters)"
        )
    return name or None


# ---- normalized events -------------------------------------------------------------------------

_NUMBERS = frozenset((int, float, type(None)))


def number(value: Any) -> float | int | None:
    """A provider's number as it is, or None when it is not a finite number (a string, NaN, Infinity)."""
    if type(value) in (int, float) and value - value == 0:  # inf - inf and nan - nan are nan
        return value
    return None


def finite(value: Any) -> float:
    """A provider's time: a number (or a numeric string, or null = 0). NaN and Infinity raise ValueError, so
    the message is skipped as malformed instead of poisoning the turn's times."""
    t = float(value or 0.0)
    if t - t != 0.0:
        raise ValueError("not a finite number")
    return t


def word(text: str, start: float | None, end: float | None, confidence: float | None) -> dict[str, Any]:
    return {"word": text, "start": number(start), "end": number(end), "confidence": number(confidence)}


def words(raw: Any) -> list[dict[str, Any]]:
    """A provider's word list (or its JSON text, not parsed yet) as word objects; entries that are not objects are
    skipped. An entry that already has exactly our four keys and a string word is kept as it is."""
    if type(raw) is not list:
        if raw is None:
            return []
        try:
            raw = orjson.loads(memoryview(raw))
        except (TypeError, ValueError):
            return []
        if type(raw) is not list:
            return []
    out = []
    for w in raw:
        if type(w) is dict:
            if (
                len(w) == 4
                and type(w.get("word")) is str
                and type(w.get("start")) in _NUMBERS
                and type(w.get("end")) in _NUMBERS
                and type(w.get("confidence")) in _NUMBERS
            ):
                out.append(w)
            else:
                get = w.get
                norm = word(str(get("word", "")), get("start"), get("end"), get("confidence"))
                if get("estimated") is True:  # times guessed, not measured (the embedded recognizer's)
                    norm["estimated"] = True
                out.append(norm)
    return out


def languages(raw: Any) -> list[str] | None:
    """A recognizer's detected languages (Flux multi: by word count, most first) as short codes; None when it
    reported none or something else than a list of codes."""
    if type(raw) is not list or not raw:
        return None
    out = [v for v in raw[:10] if type(v) is str and 0 < len(v) <= 16]
    return out or None


def seconds(t: float) -> float:
    """A time rounded to the millisecond, as round(t, 3) would do it for times >= 0 (which goes through a
    decimal string and costs ten times more: every transcript event has two of them)."""
    return floor(t * 1000.0 + 0.5) / 1000.0


def transcript(
    turn: int, text: str, final: bool, start: float, end: float, words: list[dict] | None = None
) -> dict[str, Any]:
    # seconds(), inline: this runs for every interim of every stream
    return {
        "type": "transcript",
        "turn": turn,
        "text": text,
        "final": final,
        "start": floor(start * 1000.0 + 0.5) / 1000.0,
        "end": floor(end * 1000.0 + 0.5) / 1000.0,
        "words": words or [],
    }


def turn_event(turn: int, event: str) -> dict[str, Any]:
    return {"type": "turn", "turn": turn, "event": event}


def error(code: str, message: str, retryable: bool = False, retry_after: float | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "error", "code": code, "message": message, "retryable": retryable}
    if retry_after is not None:
        ev["retry_after"] = retry_after
    return ev
