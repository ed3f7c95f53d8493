"""Estimated word times for the embedded recognizer's finals (tiny-en gives none): the final's words spread over
the speech its stream's voice detector heard between the final's start and end, never over a long silence.

    segs = speech_segments(*vad.probs_between(a, b), a / RATE, b / RATE)   # voiced stretches, seconds
    segs = without(segs, quiet_gaps(audio_a_to_b, a))                      # minus the pauses in the audio
    words = estimate(text, segs, start, end)                              # [{"word", "start", "end", …}]

How: the voiced stretches (chunks with speech probability >= SPEECH, gaps under BRIDGE joined) with the pauses of
the audio's energy envelope cut out (Silero stays high across 0.2 s pauses in fluent reading) are the speech
segments; each word weighs its characters; a dynamic program gives each segment a run of
whole words whose weight best matches its length at the turn's own speaking rate, preferring segments that end
after a sentence or clause end (readers pause there; exports.ends_sentence and ends_clause, the project's one rule);
inside a segment the words follow each other by weight.
Every word is marked `"estimated": true`. Measured against the LibriVox sentences' known starts: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exports import ends_clause, ends_sentence
from .vad import CHUNK

RATE = 16000
SPEECH = 0.8  # under the turn detector's (vad.THRESHOLD): word ends fade; 0.5 (Silero's default) ran over pauses
BRIDGE = 0.1  # seconds: shorter gaps (stop closures, a quick breath) are inside one segment
MIN_SEGMENT = 0.064  # seconds: shorter voiced blips (a click) are not speech
SENTENCE_BONUS = 0.6  # cost units (squared seconds) a segment boundary right after a sentence end is worth
CLAUSE_BONUS = 0.25  # and after a clause mark
QUIET_DB = 10.0  # a 20 ms frame this much over the turn's quietest tenth (or under its loudest) is speech
QUIET_GAP = 0.16  # seconds: quieter stretches at least this long are pauses (shorter: inside words too)
_MARKS = ".,;:!?\"'()[]-…–—«»“”‘’"  # noqa: RUF001 (punctuation is not said: no weight)


def speech_segments(
    first: int, probs: Sequence[float], start: float, end: float, threshold: float = SPEECH
) -> list[tuple[float, float]]:
    """The voiced stretches in [start, end] (seconds) from per-chunk probabilities (`first`: the first chunk's
    start sample)."""
    segs: list[list[float]] = []
    for k, p in enumerate(probs):
        if p < threshold:
            continue
        a = (first + k * CHUNK) / RATE
        b = a + CHUNK / RATE
        if segs and a - segs[-1][1] < BRIDGE:
            segs[-1][1] = b
        else:
            segs.append([a, b])
    out = []
    for a, b in segs:
        a, b = max(a, start), min(b, end)
        if b - a >= MIN_SEGMENT:
            out.append((a, b))
    return out


def quiet_gaps(audio, first: int, min_gap: float = QUIET_GAP) -> list[tuple[float, float]]:
    """Pauses in the audio (float32 16 kHz from sample `first`): runs of at least `min_gap` seconds of 20 ms
    frames under the quiet level (the 10th percentile frame plus QUIET_DB, at most QUIET_DB under the loudest).
    Silero's probability stays high across the short pauses between sentences of fluent reading; the energy
    envelope does not."""
    n = int(0.02 * RATE)
    frames = len(audio) // n
    if frames < 3:
        return []
    x = np.asarray(audio[: frames * n], np.float64).reshape(frames, n)
    db = 10 * np.log10(np.mean(x * x, axis=1) + 1e-10)
    level = min(float(np.percentile(db, 10)) + QUIET_DB, float(db.max()) - QUIET_DB)
    gaps, run = [], 0
    for k, quiet in enumerate(list(db < level) + [False]):
        if quiet:
            run += 1
            continue
        if run * 0.02 >= min_gap:
            gaps.append(((first + (k - run) * n) / RATE, (first + k * n) / RATE))
        run = 0
    return gaps


def without(segs: list[tuple[float, float]], gaps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The segments with the gaps cut out of them (pieces shorter than MIN_SEGMENT dropped)."""
    out = []
    for a, b in segs:
        pieces = [(a, b)]
        for g0, g1 in gaps:
            nxt = []
            for p0, p1 in pieces:
                if g1 <= p0 or g0 >= p1:
                    nxt.append((p0, p1))
                    continue
                nxt += [(p0, g0)] if g0 > p0 else []
                nxt += [(g1, p1)] if g1 < p1 else []
            pieces = nxt
        out += [(p0, p1) for p0, p1 in pieces if p1 - p0 >= MIN_SEGMENT]
    return out


def weight(word: str) -> float:
    """How long a word takes to say, roughly: its characters, punctuation aside, plus one (measured against a
    vowel-group syllable count, characters placed the LibriVox sentence starts closer: docs/benchmarks.md)."""
    return len(word.strip(_MARKS)) + 1.0


def _bonus(word: str) -> float:
    """What a segment boundary right after the word is worth: readers pause at sentence and clause ends, by the
    exports' one rule (… and closing quotes count; "Mr." ends no sentence)."""
    if ends_sentence(word):
        return SENTENCE_BONUS
    return CLAUSE_BONUS if ends_clause(word) else 0.0


def _assign(weights: list[float], bonus: list[float], segs: list[tuple[float, float]]) -> list[int] | None:
    """The first word of each segment (a run of whole words per segment, possibly none), by dynamic program;
    None if no run fits (many words in little speech)."""
    n, m = len(weights), len(segs)
    durs = [b - a for a, b in segs]
    rate = sum(durs) / sum(weights)  # seconds per weight unit, over the turn
    cum = [0.0]
    for w in weights:
        cum.append(cum[-1] + w)
    inf = float("inf")
    # best[k][i]: segments 0..k-1 hold words 0..i-1; back[k][i]: where segment k-1's words began
    best = [[inf] * (n + 1) for _ in range(m + 1)]
    back = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0.0
    for k in range(1, m + 1):
        d = durs[k - 1]
        last = k == m
        prev_row, row, brow = best[k - 1], best[k], back[k]
        for j in range(n + 1):
            if last and j != n:
                continue
            reward = bonus[j - 1] if 0 < j < n else 0.0
            for i in range(j, -1, -1):
                said = rate * (cum[j] - cum[i])
                if said > 3 * d + 1.0:
                    break  # far more words than this segment can hold
                if prev_row[i] == inf:
                    continue
                cost = prev_row[i] + (d - said) ** 2 - (reward if i < j else 0.0)
                if cost < row[j]:
                    row[j], brow[j] = cost, i
    if best[m][n] == inf:
        return None
    firsts = [0] * m
    j = n
    for k in range(m, 0, -1):
        i = back[k][j]
        firsts[k - 1] = i
        j = i
    return firsts


def estimate(text: str, segs: list[tuple[float, float]], start: float, end: float) -> list[dict[str, Any]]:
    """The text's words with estimated times inside [start, end], over the speech segments `segs` (none: the
    whole span)."""
    texts = text.split()
    if not texts:
        return []
    end = max(end, start)
    segs = [(max(a, start), min(b, end)) for a, b in segs if min(b, end) > max(a, start)] or [(start, end)]
    weights = [weight(t) for t in texts]
    bonus = [_bonus(t) for t in texts]
    firsts = _assign(weights, bonus, segs)
    if firsts is None:
        segs, firsts = [(segs[0][0], segs[-1][1])], [0]
    firsts.append(len(texts))
    times: list[tuple[float, float]] = [(start, start)] * len(texts)
    for k, (a, b) in enumerate(segs):
        i, j = firsts[k], firsts[k + 1]
        total = sum(weights[i:j])
        t = a
        for w in range(i, j):
            u = t + (b - a) * weights[w] / total
            times[w] = (t, u)
            t = u
    return [
        {"word": w, "start": round(s, 3), "end": round(e, 3), "confidence": None, "estimated": True}
        for w, (s, e) in zip(texts, times, strict=True)
    ]
