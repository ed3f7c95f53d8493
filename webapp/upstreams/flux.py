"""Deepgram Flux's TurnInfo messages -> Turns (Deepgram's own stream and the gateway's Flux-shaped passthrough).

The wire (picows, callbacks, keep-alive) is wsclient.py's; this module only reads what a message means.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..protocol import finite
from .base import Turns


class FluxUpdate(msgspec.Struct):
    """What an interim needs of a Flux TurnInfo: msgspec skips the other fields without building them and keeps the
    words as raw JSON (they are read only if a final comes without its own). Parsing every field of every update
    into dicts was the largest part of relaying it (docs/benchmarks.md, "Relay performance")."""

    type: str = ""
    event: str = ""
    transcript: str = ""
    audio_window_start: float = 0.0
    audio_window_end: float = 0.0
    words: msgspec.Raw = msgspec.Raw(b"[]")


# The typed fast path, for the transport to call inline (a function call per message is measurable at K=1000):
# a TurnInfo whose `type` is "TurnInfo" and `event` in UPDATES goes to Turns.update as is; anything else, or a
# message this decoder refuses (msgspec.DecodeError), takes the general path (apply_turninfo).
decode_update = msgspec.json.Decoder(FluxUpdate).decode
DecodeError = msgspec.DecodeError
UPDATES = frozenset(("Update", "StartOfTurn"))
# flux-general-multi's languages (Deepgram's language-prompting page); flux-general-en knows English only
MULTI_LANGUAGES = ("en", "es", "fr", "de", "hi", "ru", "pt", "ja", "it", "nl")


def model_and_hints(model: str, language: str) -> tuple[str, list[str]]:
    """The Flux model and `language_hint`s for a client's `language`: English (or none) keeps the configured
    model; any other language, or "multi" (detect), needs flux-general-multi, hinted unless "multi"."""
    if not language or language == "en" and not model.endswith("-multi"):
        return model, []
    if model == "flux-general-en":
        model = "flux-general-multi"
    return model, [] if language == "multi" else [language]


def language_problem(language: str) -> str | None:
    if not language or language == "multi" or language in MULTI_LANGUAGES:
        return None
    return (
        f"Deepgram Flux does not transcribe language {language!r}; use one of {', '.join(MULTI_LANGUAGES)}, "
        "or multi to detect among them"
    )


def apply_turninfo(turns: Turns, msg: dict) -> None:
    """A TurnInfo message as a dict -> normalized turn/transcript events."""
    event = msg.get("event")
    text = msg.get("transcript") or ""
    words = msg.get("words")  # as the provider sent them: Turns normalizes what it sends
    start = finite(msg.get("audio_window_start"))  # NaN/Infinity: a malformed message, skipped
    end = finite(msg.get("audio_window_end"))
    if event in UPDATES:
        turns.update(text, words, start, end)
    elif event == "EagerEndOfTurn":
        turns.update(text, words, start, end)
        turns.marker("EagerEndOfTurn")
    elif event == "TurnResumed":
        turns.marker("TurnResumed")
        turns.update(text, words, start, end)
    elif event == "EndOfTurn":
        turns.end_turn(text, words, end, msg.get("languages"))  # `languages`: flux-general-multi only
    # Unknown events are tolerated: Flux documents `event` as an open enum.


# ---- mid-stream Configure (key terms) --------------------------------------------------------------


def configure_message(keyterms: tuple[str, ...]) -> dict[str, Any]:
    """`keyterms` replaces the whole list (`[]` clears it); thresholds and language hints are left as they are."""
    return {"type": "Configure", "keyterms": list(keyterms)}


def configure_result(msg: dict) -> dict[str, Any]:
    """ConfigureSuccess / ConfigureFailure -> the page's `notice`. Our words: a provider's text may echo anything."""
    if msg.get("type") == "ConfigureSuccess":
        terms = msg.get("keyterms")
        terms = [t for t in terms if isinstance(t, str)] if isinstance(terms, list) else []
        return {
            "type": "notice",
            "code": "keyterms_applied",
            "keyterms": terms,
            "message": f"The recognizer now listens for {len(terms)} key term(s)."
            if terms
            else "The recognizer's key terms are cleared.",
        }
    code = "".join(c for c in str(msg.get("code") or "")[:40] if c.isalnum() or c == "_") or "unknown"
    return {
        "type": "notice",
        "code": "keyterms_refused",
        "provider_code": code,
        "message": f"The recognizer refused the new key terms ({code}); it keeps the previous ones. "
        "Check the terms (at most 100, plain words) and save them again.",
    }
