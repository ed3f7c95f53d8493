"""The session's timeline across upstream connections (webapp/timeline.py), in-process and table-driven: each case
is a script of connections (where their audio starts) and the events each one sends, and what is delivered."""
from __future__ import annotations

import pytest

from webapp.protocol import transcript, turn_event
from webapp.timeline import Timeline

BPS = 32000  # 16 kHz, 16-bit mono


def start(turn):
    return turn_event(turn, "StartOfTurn")


def end(turn):
    return turn_event(turn, "EndOfTurn")


def interim(turn, text, t0, t1, words=None):
    return transcript(turn, text, False, t0, t1, words)


def final(turn, text, t0, t1, words=None):
    return transcript(turn, text, True, t0, t1, words or [])


def shown(event):
    """What the page sees of an event: kind, turn, text and times."""
    if event["type"] == "turn":
        return (event["event"], event["turn"])
    return ("final" if event["final"] else "interim", event["turn"], event["text"], event["start"], event["end"])


# (name, finals a resumed session has, [(connection's audio start in seconds, [its events])], delivered)
CASES = [
    ("one connection: as it came",
     0, [(0.0, [start(0), interim(0, "Hello", 0.1, 0.5), final(0, "Hello.", 0.1, 0.9), end(0)])],
     [("StartOfTurn", 0), ("interim", 0, "Hello", 0.1, 0.5), ("final", 0, "Hello.", 0.1, 0.9), ("EndOfTurn", 0)]),
    ("a reconnect shifts times by where its audio starts and continues the turn numbers",
     0, [(0.0, [start(0), final(0, "One.", 0.2, 1.0), end(0)]),
         (1.0, [start(0), final(0, "Two.", 0.5, 1.5), end(0)])],
     [("StartOfTurn", 0), ("final", 0, "One.", 0.2, 1.0), ("EndOfTurn", 0),
      ("StartOfTurn", 1), ("final", 1, "Two.", 1.5, 2.5), ("EndOfTurn", 1)]),
    # The replay starts at the frame the final ended in (the log keeps a frame that straddles a final's end).
    ("a replay that re-recognizes a delivered final drops it and its EndOfTurn",
     0, [(0.0, [start(0), final(0, "One.", 0.2, 1.0), end(0)]),
         (0.92, [start(0), final(0, "One.", 0.0, 0.08), end(0), start(1), final(1, "Two.", 0.3, 0.8), end(1)])],
     [("StartOfTurn", 0), ("final", 0, "One.", 0.2, 1.0), ("EndOfTurn", 0),
      ("StartOfTurn", 1), ("StartOfTurn", 2), ("final", 2, "Two.", 1.22, 1.72), ("EndOfTurn", 2)]),
    ("the same text later is a new final, not a repeat",
     0, [(0.0, [start(0), final(0, "Yes.", 0.0, 0.5), end(0), start(1), final(1, "Yes.", 0.6, 1.0), end(1)])],
     [("StartOfTurn", 0), ("final", 0, "Yes.", 0.0, 0.5), ("EndOfTurn", 0),
      ("StartOfTurn", 1), ("final", 1, "Yes.", 0.6, 1.0), ("EndOfTurn", 1)]),
    ("a turn reopened by the replay is not announced twice",
     0, [(0.0, [start(0), interim(0, "Hel", 0.1, 0.3)]),
         (0.0, [start(0), interim(0, "Hello", 0.1, 0.5), final(0, "Hello.", 0.1, 0.9), end(0)])],
     [("StartOfTurn", 0), ("interim", 0, "Hel", 0.1, 0.3),
      ("interim", 0, "Hello", 0.1, 0.5), ("final", 0, "Hello.", 0.1, 0.9), ("EndOfTurn", 0)]),
    ("a resumed session numbers after its finals",
     3, [(12.0, [start(0), final(0, "Back.", 0.1, 0.6), end(0)])],
     [("StartOfTurn", 3), ("final", 3, "Back.", 12.1, 12.6), ("EndOfTurn", 3)]),
]


@pytest.mark.parametrize("name, finals, connections, delivered", CASES, ids=[c[0] for c in CASES])
def test_events_on_the_session_timeline(name, finals, connections, delivered):
    timeline = Timeline(BPS, finals)
    out = []
    for offset_s, events in connections:
        timeline.connected(int(offset_s * BPS))
        out += [shown(e) for e in events if timeline.place(e)]
    assert out == delivered
    assert timeline.finals == finals + sum(1 for e in delivered if e[0] == "final")


def test_shifted_words_are_new_objects():
    words = [{"word": "Hi", "start": 0.1, "end": 0.4, "confidence": 0.9}, {"word": "x", "start": None, "end": None}]
    timeline = Timeline(BPS)
    timeline.connected(2 * BPS)
    event = final(0, "Hi x", 0.1, 0.4, words)
    assert timeline.place(event)
    assert event["words"] == [{"word": "Hi", "start": 2.1, "end": 2.4, "confidence": 0.9},
                              {"word": "x", "start": None, "end": None}]
    assert words[0]["start"] == 0.1  # the upstream's turn keeps its own (it may send them again)


# (name, Finalize requests at these seconds, new connection's audio start, then the replay's progress points:
#  [(sent up to, Finalize requests due then)])
MARKS = [
    ("due as the replay passes them", [1.0, 2.0], 0.0, [(0.5, 0), (1.0, 1), (1.5, 0), (3.0, 1), (4.0, 0)]),
    ("two at the same point are both due", [1.0, 1.0], 0.0, [(1.0, 2)]),
    ("covered by a final already: spent on connecting", [1.0, 2.0], 1.5, [(1.5, 0), (2.0, 1)]),
    ("none", [], 0.0, [(5.0, 0)]),
]


@pytest.mark.parametrize("name, marks, offset_s, progress", MARKS, ids=[m[0] for m in MARKS])
def test_finalize_requests_wait_for_their_point_of_the_replay(name, marks, offset_s, progress):
    timeline = Timeline(BPS)
    for at in marks:
        timeline.finalize_at(int(at * BPS))
    timeline.connected(int(offset_s * BPS))
    assert [(sent, timeline.due(int(sent * BPS))) for sent, _ in progress] == progress
