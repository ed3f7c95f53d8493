"""Transcript exports: plain text, SubRip (.srt), WebVTT (.vtt) and JSON. Pure functions of a session's
metadata and its stored final turns, so they work the same mid-session and after it.

A turn is {"turn", "text", "start", "end", "words": [{"word", "start", "end", "confidence"}]}; times are
seconds from the start of the stream and any of them may be None.

Caption cues follow common practice (BBC/Netflix style guides): at most 2 lines of at most 42 characters,
at most 6 s on screen, at least 1 s where the next cue leaves room, never overlapping. Long turns are split
at word boundaries using word times; words without times get times interpolated across their turn.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import protocol

LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECONDS = 6.0
MIN_CUE_SECONDS = 1.0


# Recognizers and stored sessions may hand us any string. A line break inside a word or a text would start a new
# caption line (a blank one: a new SRT cue) or a new .txt line, and control characters reach players and editors:
# line-breaking controls become a space, the other C0/C1 controls (and lone surrogates, which no UTF-8 file can
# hold) go. Format characters (Cf: joiners, direction marks) are kept: scripts need them.
_BREAKS = re.compile("[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff]")
_SPACES = re.compile(" {2,}")


def clean(text: Any) -> str:
    """`text` as one line of printable text: breaks are spaces, controls removed, runs of spaces one space."""
    text = _CONTROLS.sub("", _BREAKS.sub(" ", str(text)))
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]


def _num(value: Any) -> float | None:
    number = protocol.number(value)  # the one "finite number, not bool" rule, shared with the upstreams
    return None if number is None else float(number)


def timed_words(turn: dict[str, Any], fallback_start: float = 0.0) -> list[Word]:
    """The turn's words, each with a start and end. Missing times are interpolated across the turn,
    weighting each word by its length (a fair proxy for how long it takes to say)."""
    raw = [w for w in (turn.get("words") or []) if isinstance(w, dict) and clean(w.get("word", ""))]
    if not raw:  # no word list: the text's words, untimed
        raw = [{"word": t} for t in clean(turn.get("text") or "").split()]
    if not raw:
        return []
    texts = [clean(w["word"]) for w in raw]
    starts = [_num(w.get("start")) for w in raw]
    ends = [_num(w.get("end")) for w in raw]
    t0 = _num(turn.get("start"))
    t1 = _num(turn.get("end"))
    known = [t for t in starts + ends if t is not None]
    if t0 is None:
        t0 = min(known) if known else fallback_start
    if t1 is None or t1 < t0:
        t1 = max(known) if known else t0 + 0.3 * len(texts)  # ~200 words a minute when nothing is timed
    # Boundary i (0 < i < n) is where word i starts; boundary 0 the first word's start, boundary n the
    # last word's end. Known word times pin boundaries; the rest are filled in linearly by character weight.
    n = len(texts)
    bounds: list[float | None] = [None] * (n + 1)
    for i in range(1, n):
        bounds[i] = starts[i] if starts[i] is not None else ends[i - 1]
    bounds[0] = starts[0] if starts[0] is not None else t0
    bounds[n] = ends[n - 1] if ends[n - 1] is not None else max(t1, max(known, default=t1))
    weights = [len(t) + 1 for t in texts]
    i = 0
    while i < n:
        j = i + 1
        while bounds[j] is None:
            j += 1
        a, b = bounds[i], bounds[j]
        assert a is not None and b is not None  # bounds 0 and n are set, and each gap is filled left to right
        total = sum(weights[i:j])
        acc = 0
        for k in range(i + 1, j):
            acc += weights[k - 1]
            bounds[k] = a + (b - a) * acc / total
        i = j
    times = [t for t in bounds if t is not None]  # all n + 1 are set by now
    words, floor = [], times[0]
    for i, (text, said_end) in enumerate(zip(texts, ends, strict=True)):
        start = max(times[i], floor)  # recognizer times out of order: keep cues monotonic
        end = max(start, said_end if said_end is not None else times[i + 1])
        words.append(Word(text, start, end))
        floor = start
    return words


def wrap(words: list[str], width: int = LINE_CHARS, max_lines: int = MAX_LINES) -> tuple[str, ...] | None:
    """Lay the words out in at most `max_lines` lines of at most `width` characters, as evenly as
    possible (a bottom-heavy pyramid on ties). None if they do not fit. A single word longer than
    `width` is allowed on its own line: it cannot be split."""
    text = " ".join(words)
    if len(text) <= width:
        return (text,)
    if max_lines < 2 or len(words) < 2:
        return None
    best = None
    for i in range(1, len(words)):
        top, bottom = " ".join(words[:i]), " ".join(words[i:])
        if len(top) > width or len(bottom) > width:
            continue
        key = (max(len(top), len(bottom)), len(top) > len(bottom))
        if best is None or key < best[0]:
            best = (key, (top, bottom))
    return best[1] if best else None


def cues(turns: Iterable[dict[str, Any]]) -> list[Cue]:
    """Greedy: a cue takes words of one turn while they still fit in 2 lines and 6 s."""
    out: list[Cue] = []
    last_end = 0.0
    for turn in turns:
        words = timed_words(turn, last_end)
        group: list[Word] = []
        for w in words:
            if group:
                fits = wrap([g.text for g in group] + [w.text]) is not None
                if not fits or w.end - group[0].start > MAX_CUE_SECONDS:
                    out.append(_cue(group))
                    group = []
            group.append(w)
        if group:
            out.append(_cue(group))
        if words:
            last_end = words[-1].end
    # Timing fixes that need the neighbour: no overlap, a minimum display time where there is room.
    fixed: list[Cue] = []
    for i, c in enumerate(out):
        nxt = out[i + 1].start if i + 1 < len(out) else math.inf
        end = max(c.end, min(c.start + MIN_CUE_SECONDS, nxt))
        end = min(end, nxt) if nxt > c.start else end
        fixed.append(Cue(c.start, max(end, c.start + 0.001), c.lines))
    return fixed


def _cue(group: list[Word]) -> Cue:
    lines = wrap([g.text for g in group])
    if lines is None:  # one over-long word: shown alone
        lines = (" ".join(g.text for g in group),)
    return Cue(group[0].start, group[-1].end, lines)


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(turns: Iterable[dict[str, Any]]) -> str:
    blocks = [
        f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(c.lines)
        for i, c in enumerate(cues(turns), 1)
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _vtt_text(line: str) -> str:
    # WebVTT cue text: & and < are markup; "-->" may not appear.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(turns: Iterable[dict[str, Any]]) -> str:
    blocks = ["WEBVTT"]
    for i, c in enumerate(cues(turns), 1):
        blocks.append(
            f"{i}\n{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n" + "\n".join(_vtt_text(line) for line in c.lines)
        )
    return "\n\n".join(blocks) + "\n"


def to_txt(turns: Iterable[dict[str, Any]]) -> str:
    """One line per turn, as people read a transcript."""
    lines = [clean(t.get("text") or "") for t in turns]
    return "".join(line + "\n" for line in lines if line)


def _keep_type(value: Any) -> Any:
    return clean(value) if isinstance(value, str) else value  # JSON: a null stays null


def _clean_word(w: Any) -> Any:
    return {**w, "word": clean(w["word"])} if isinstance(w, dict) and isinstance(w.get("word"), str) else w


def to_json(meta: dict[str, Any], turns: Iterable[dict[str, Any]]) -> str:
    doc = {
        "session": meta,
        "turns": [
            {
                "turn": t.get("turn"),
                "text": _keep_type(t.get("text", "")),
                "start": t.get("start"),
                "end": t.get("end"),
                "words": [_clean_word(w) for w in t.get("words") or []],
                # detected languages (a multilingual recognizer), only where it reported them
                **({"languages": [clean(v) for v in t["languages"]]} if t.get("languages") else {}),
            }
            for t in turns
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
