"""Provider messages -> the app's normalized events, table-driven, through the real upstream classes.

Interim updates in Flux's TurnInfo shape take a typed fast path (webapp/upstreams/flux.py, FluxUpdate); every
other message, and any update the typed decoder refuses, the general one. Both must give the same events, keep
anything provider-specific out, and skip what is malformed without ending the stream.
"""
from __future__ import annotations

import json

import pytest

from webapp import config
from webapp.protocol import StreamParams
from webapp.upstreams.aigateway import AIGatewayUpstream
from webapp.upstreams.deepgram import DeepgramUpstream

W1 = {"word": "Hello", "confidence": 0.9, "start": 0.1, "end": 0.4}
W2 = {"word": "world.", "confidence": 0.8, "start": 0.4, "end": 0.9}


def turninfo(event: str, transcript: str, words=None, start=0.0, end=1.0, **extra) -> dict:
    msg = {"type": "TurnInfo", "request_id": "r", "sequence_id": 1, "event": event, "turn_index": 0,
           "audio_window_start": start, "audio_window_end": end, "transcript": transcript,
           "words": [] if words is None else words, "end_of_turn_confidence": 0.5}
    msg.update(extra)
    return msg


class Listener:
    """The upstream's listener (webapp.upstreams.base.UpstreamListener), keeping the events."""

    def __init__(self):
        self.events: list[dict] = []
        self.on_event = self.events.append

    def on_silence(self, pcm): pass
    def on_pressure(self, full): pass
    def on_batch(self, start): pass


def run(cls, messages: list, interim_words: bool = False) -> list[dict]:
    settings = config.load({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k", "AIGATEWAY_API_KEY": "k",
                            "DATA_DIR": "/tmp/unused-caption-relay"})
    events = (listener := Listener()).events
    up = cls(settings, StreamParams(interim_words=interim_words), listener)
    for m in messages:
        up._on_message(m if isinstance(m, bytes) else json.dumps(m).encode())
    return events


def kinds(events):
    return [(e["type"], e.get("event") or ("final" if e.get("final") else "interim"), e.get("text")) for e in events]


CASES = [
    ("update then end",
     [turninfo("StartOfTurn", "Hello", [W1]), turninfo("Update", "Hello world.", [W1, W2]),
      turninfo("EndOfTurn", "Hello world.", [W1, W2], end=1.2)],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello"), ("transcript", "interim", "Hello world."),
      ("transcript", "final", "Hello world."), ("turn", "EndOfTurn", None)]),
    ("same text again: no new interim",
     [turninfo("Update", "Hello", [W1]), turninfo("Update", "Hello ", [W1], end=1.5)],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello")]),
    ("unknown fields and events are tolerated",
     [turninfo("Update", "Hello", [W1], new_field={"x": 1}), turninfo("SomethingNew", "ignored")],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello")]),
    ("a transcript that is not text is skipped",
     [turninfo("Update", 42), turninfo("Update", "Hello", [W1])],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello")]),
    ("null times count as 0",
     [turninfo("Update", "Hello", [W1], start=None, end=None)],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello")]),
    ("not JSON, not an object",
     [b"{not json", b"[1, 2]", turninfo("Update", "Hello", [W1])],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello")]),
]


@pytest.mark.parametrize("cls", [DeepgramUpstream, AIGatewayUpstream])
@pytest.mark.parametrize("label, messages, expected", CASES, ids=[c[0] for c in CASES])
def test_flux_messages_become_normalized_events(cls, label, messages, expected):
    assert kinds(run(cls, messages)) == expected


@pytest.mark.parametrize("cls", [DeepgramUpstream, AIGatewayUpstream])
def test_words_in_finals_always_in_interims_when_asked(cls):
    msgs = [turninfo("Update", "Hello world.", [W1, dict(W2, speaker=3)]), turninfo("EndOfTurn", "Hello world.", [W1, W2])]
    plain = run(cls, msgs)
    assert [e["words"] for e in plain if e["type"] == "transcript"] == [[], [W1, W2]]
    asked = run(cls, msgs, interim_words=True)
    interim = next(e for e in asked if e["type"] == "transcript" and not e["final"])
    # normalized: our four keys only (the provider's `speaker` does not leak), in our order
    assert interim["words"] == [W1, {"word": "world.", "start": 0.4, "end": 0.9, "confidence": 0.8}]
    assert list(interim["words"][1]) == ["word", "start", "end", "confidence"]


@pytest.mark.parametrize("cls", [DeepgramUpstream, AIGatewayUpstream])
def test_a_final_without_words_keeps_the_last_updates_words(cls):
    events = run(cls, [turninfo("Update", "Hello world.", [W1, W2]), turninfo("EndOfTurn", "Hello world.", None)])
    final = next(e for e in events if e["type"] == "transcript" and e["final"])
    assert final["words"] == []  # the provider said the final has no words: it has none
    events = run(cls, [turninfo("Update", "Hello world.", [W1, W2]),
                       {k: v for k, v in turninfo("EndOfTurn", "Hello world.").items() if k != "words"}])
    final = next(e for e in events if e["type"] == "transcript" and e["final"])
    assert final["words"] == [W1, W2]  # no `words` field at all: the last update's words


def test_the_gateway_knows_it_speaks_flux_from_the_first_update():
    settings = config.load({"STT_BACKEND": "aigateway", "AIGATEWAY_API_KEY": "k", "DATA_DIR": "/tmp/unused-caption-relay"})
    up = AIGatewayUpstream(settings, StreamParams(), Listener())
    assert up.keepalive_every is not None  # v1 until shown otherwise
    up._on_message(json.dumps(turninfo("Update", "Hello", [W1])).encode())
    assert up.flux and up.keepalive_every is None  # KeepAlive would end a Flux stream


# ---- non-finite numbers (NaN, Infinity) make a message malformed: skipped, the turn is not poisoned ----------
# orjson and msgspec refuse the NaN/Infinity literals and 1e999 (the message is not JSON to them), but a provider
# may send the times as strings, which float() turns into nan/inf.

def results(text: str, start, duration, is_final=False, speech_final=False) -> dict:
    return {"type": "Results", "start": start, "duration": duration, "is_final": is_final, "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": text, "words": []}]}}


NON_FINITE = [
    ("Flux: an Infinity end", DeepgramUpstream,
     [turninfo("Update", "Hello", [W1], end="Infinity"), turninfo("Update", "Hello", [W1]),
      turninfo("EndOfTurn", "Hello world.", [W1, W2], end=1.2)],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello"), ("transcript", "final", "Hello world."),
      ("turn", "EndOfTurn", None)]),
    ("Flux: a NaN start opening the turn", DeepgramUpstream,
     [turninfo("StartOfTurn", "Hello", [W1], start="NaN"), turninfo("Update", "Hello", [W1]),
      turninfo("EndOfTurn", "Hello world.", [W1, W2], end=1.2)],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello"), ("transcript", "final", "Hello world."),
      ("turn", "EndOfTurn", None)]),
    ("gateway v1: a NaN start, then good results", AIGatewayUpstream,
     [results("Hello", "NaN", 0.5), results("Hello", 0.0, 0.5), results("Hello world.", 0.0, "-Infinity", True, True),
      results("Hello world.", 0.0, 1.0, True, True)],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello"), ("transcript", "interim", "Hello world."),
      ("transcript", "final", "Hello world."), ("turn", "EndOfTurn", None)]),
    ("literals and 1e999 are not JSON to the parsers", DeepgramUpstream,
     [b'{"type":"TurnInfo","event":"Update","transcript":"Hi","audio_window_start":0,"audio_window_end":NaN}',
      b'{"type":"TurnInfo","event":"Update","transcript":"Hi","audio_window_start":0,"audio_window_end":1e999}',
      turninfo("Update", "Hello", [W1])],
     [("turn", "StartOfTurn", None), ("transcript", "interim", "Hello")]),
]


@pytest.mark.parametrize("label, cls, messages, expected", NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_times_make_a_message_malformed(label, cls, messages, expected):
    events = run(cls, messages)
    assert kinds(events) == expected
    assert all(e["start"] - e["start"] == 0 and e["end"] - e["end"] == 0 for e in events if e["type"] == "transcript")


@pytest.mark.parametrize("cls", [DeepgramUpstream, AIGatewayUpstream])
def test_word_times_that_are_not_finite_numbers_become_null(cls):
    bad = {"word": "Hello", "confidence": "0.9", "start": "NaN", "end": "Infinity"}
    events = run(cls, [turninfo("EndOfTurn", "Hello", [bad, dict(W2, start=True)])])
    final = next(e for e in events if e["type"] == "transcript" and e["final"])
    assert final["words"] == [{"word": "Hello", "start": None, "end": None, "confidence": None},
                              {"word": "world.", "start": None, "end": 0.9, "confidence": 0.8}]


# ---- provider `Error` messages: our code and our message per class, never the provider's text ----------------

PROVIDER_ERRORS = [
    ("INVALID_AUTH", "Invalid credentials for key dg-SECRET", "upstream_auth", False),
    ("", "Forbidden: API key Bearer sk-SECRET not allowed", "upstream_auth", False),
    ("INSUFFICIENT_CREDITS", "Your balance is 0", "upstream_payment", False),
    ("", "Project quota exceeded", "upstream_payment", False),
    ("TOO_MANY_REQUESTS", "slow down", "rate_limited", True),
    ("INVALID_PARAMETER", "sample_rate 12345 not supported", "upstream_bad_request", False),
    ("INTERNAL_SERVER_ERROR", "worker 7 crashed at /srv/dg", "upstream_error", True),
    ("", "", "upstream_error", True),
]


@pytest.mark.parametrize("cls", [DeepgramUpstream, AIGatewayUpstream])
@pytest.mark.parametrize("code, description, mapped, retryable", PROVIDER_ERRORS)
def test_provider_errors_get_our_message_per_class(cls, code, description, mapped, retryable):
    settings = config.load({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k", "AIGATEWAY_API_KEY": "k",
                            "DATA_DIR": "/tmp/unused-caption-relay"})
    up = cls(settings, StreamParams(), Listener())
    up._on_message(json.dumps({"type": "Error", "code": code, "description": description}).encode())
    error = up._queue.get_nowait()
    assert (error.code, error.retryable) == (mapped, retryable)
    event = error.event()
    shown = json.dumps(event)
    assert "SECRET" not in shown and (not description or description not in shown)
    assert not code or code not in event["message"]
    assert up.provider in event["message"]


# ---- stable_chars: the prefix of an interim the previous one agreed on (issue 22, local agreement) -------------

STABLE = [
    ("first interim: nothing agreed yet", ["Hello"], [0]),
    ("the next words extend it", ["Hello", "Hello world", "Hello world, how are"], [0, 5, 12]),
    ("case and punctuation aside", ["I let us", "I let us do it."], [0, 8]),
    ("a rewrite of the first word", ["Hello.", "I'll let's do it.", "I'd less to be wrapped."], [0, 0, 0]),
    ("agreement stops at the first changed word", ["we had every", "we had everything before"], [0, 6]),
]


@pytest.mark.parametrize("cls", [DeepgramUpstream, AIGatewayUpstream])
@pytest.mark.parametrize("label, texts, stable", STABLE, ids=[c[0] for c in STABLE])
def test_flux_updates_carry_the_prefix_two_hypotheses_agree_on(cls, label, texts, stable):
    events = run(cls, [turninfo("Update", t, []) for t in texts] + [turninfo("EndOfTurn", texts[-1], [])])
    interims = [e for e in events if e["type"] == "transcript" and not e["final"]]
    assert [e["stable_chars"] for e in interims] == stable
    assert all(e["text"][: e["stable_chars"]] == t[: s] for e, t, s in zip(interims, texts, stable))
    assert "stable_chars" not in next(e for e in events if e["type"] == "transcript" and e["final"])
