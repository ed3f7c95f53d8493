"""The stable beginning of a turn still being spoken, from its interim updates (pure). A word is stable once the
last two interims agree on it (same place, same word up to case and punctuation) and it has kept that place for
STABLE_AGE seconds; the stable beginning is the run of stable words from the turn's start. Outputs send it
early (at most every EARLY_EVERY seconds) so a long turn never waits for its final, and only the rest later."""

from __future__ import annotations

import re

STABLE_AGE = 1.0  # seconds a word must have kept its place before it is sent early
EARLY_EVERY = 1.0  # seconds between two early posts of one turn (each is one caption post at the receiver)
_PUNCT = re.compile(r"[^\w']+")


def norm(word: str) -> str:
    """A word as compared between interims and the final: the recognizer may add punctuation or a capital later."""
    return _PUNCT.sub("", word).lower()


def remainder(final: str, early: str) -> str | None:
    """The final's words after the ones already sent early, or None if the final does not begin with them
    (the recognizer changed its mind: the whole final goes out)."""
    sent, words = early.split(), final.split()
    if len(sent) > len(words) or [norm(w) for w in words[: len(sent)]] != [norm(w) for w in sent]:
        return None
    return " ".join(words[len(sent) :])


class StablePrefix:
    """One turn's interims, in order."""

    __slots__ = ("seen", "since", "turn", "words")

    def __init__(self, turn: int | None):
        self.turn = turn
        self.words: list[str] = []
        self.since: list[float] = []  # when each word took its current value at its place
        self.seen: list[int] = []  # how many interims in a row have it there

    def update(self, text: str, now: float) -> None:
        words = text.split()
        keep = 0
        for old, new in zip(self.words, words, strict=False):
            if norm(old) != norm(new):
                break
            keep += 1
        self.since = self.since[:keep] + [now] * (len(words) - keep)
        self.seen = [n + 1 for n in self.seen[:keep]] + [1] * (len(words) - keep)
        self.words = words

    def stable(self, now: float) -> int:
        """How many words from the start are stable now."""
        n = 0
        for since, seen in zip(self.since, self.seen, strict=True):
            if seen < 2 or now - since < STABLE_AGE:
                break
            n += 1
        return n
