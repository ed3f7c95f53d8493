"""Deepgram Flux's TurnInfo messages -> Turns (Deepgram's own stream and the gateway's Flux-shaped passthrough).

The wire (picows, callbacks, keep-alive) is wsclient.py's; this module only reads what a message means.
"""
from __future__ import annotations

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


_decode_update = msgspec.json.Decoder(FluxUpdate).decode
UPDATES = frozenset(("Update", "StartOfTurn"))


def decode_update(raw: bytes) -> FluxUpdate | None:
    """The typed fast path: a TurnInfo Update or StartOfTurn, or None for anything else (the general path decides)."""
    try:
        update = _decode_update(raw)
    except msgspec.DecodeError:  # not this shape (or a field of another type)
        return None
    return update if update.type == "TurnInfo" and update.event in UPDATES else None


def apply_update(turns: Turns, update: FluxUpdate) -> None:
    """A decoded Update or StartOfTurn (what apply_turninfo does with the same message)."""
    turns.update(update.transcript, update.words, update.audio_window_start, update.audio_window_end)


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
        turns.end_turn(text, words, end)
    # Unknown events are tolerated: Flux documents `event` as an open enum.
