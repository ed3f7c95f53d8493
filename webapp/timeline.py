"""A session's timeline across upstream connections: pure bookkeeping, no I/O (tests/test_timeline.py).

Each upstream connection counts times from its own zero and numbers its turns from 0. The relay reconnects
and replays the audio after the last final, so a new connection's times are shifted by where its audio starts
on the session's timeline, its turn numbers continue after the finals delivered, and what the replay
recognizes again (a final already delivered, a StartOfTurn the page already saw) is dropped. Finalize
requests made while no connection is live are kept as session offsets, and applied at that point of the replay.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .protocol import seconds


def shift_word(w: dict[str, Any], shift: float) -> dict[str, Any]:
    start, end = w.get("start"), w.get("end")
    return {
        **w,
        "start": None if start is None else seconds(start + shift),
        "end": None if end is None else seconds(end + shift),
    }


class Timeline:
    def __init__(self, bytes_per_second: int, finals: int = 0):
        """`finals`: what a resumed session already has (its turn numbers continue after them)."""
        self.bps = bytes_per_second
        self.shift = 0.0  # seconds where the current connection's audio starts
        self.turn_base = finals  # finals delivered before the current connection
        self.finals = finals
        self.last_final: tuple[str, float] | None = None  # (text, end) of the last final delivered
        self.announced = finals - 1  # highest turn whose StartOfTurn was delivered
        self.skip_end_of = -1  # turn whose duplicate final was dropped: drop its EndOfTurn too
        self.marks: deque[int] = deque()  # Finalize requests (session offsets) waiting for a connection

    def connected(self, offset: int) -> None:
        """A new connection whose audio starts at session offset `offset` (bytes)."""
        self.shift = offset / self.bps
        self.turn_base = self.finals
        self.due(offset)  # marks before it are covered by a final already

    def finalize_at(self, offset: int) -> None:
        """A Finalize while no connection is live: applied once the replay has sent audio up to `offset`."""
        self.marks.append(offset)

    def due(self, sent_to: int) -> int:
        """How many Finalize requests are due once the connection has had audio up to `sent_to` (they are spent)."""
        marks = self.marks
        n = 0
        while marks and marks[0] <= sent_to:
            marks.popleft()
            n += 1
        return n

    def place(self, event: dict[str, Any]) -> bool:
        """Put one event of the current connection on the session's timeline and numbering, in place.
        False: a replay's repeat, not to be delivered."""
        kind = event["type"]
        if kind == "transcript":
            event["turn"] += self.turn_base
            shift = self.shift
            if shift:
                event["start"] = seconds(event["start"] + shift)
                event["end"] = seconds(event["end"] + shift)
                # New word objects: the upstream's turn keeps its own, and may send them again in the final.
                event["words"] = [shift_word(w, shift) for w in event["words"]]
            if event["final"]:
                last = self.last_final
                if last and event["text"] == last[0] and event["start"] < last[1]:
                    self.skip_end_of = event["turn"]
                    return False  # the replay re-recognized a turn already final
                self.last_final = (event["text"], event["end"])
                self.finals += 1
        elif kind == "turn":
            turn = event["turn"] = event["turn"] + self.turn_base
            if event["event"] == "StartOfTurn":
                if turn <= self.announced:
                    return False  # the replay reopened a turn the browser already saw start
                self.announced = turn
            elif event["event"] == "EndOfTurn" and turn == self.skip_end_of:
                return False
        return True
