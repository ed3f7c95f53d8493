"""Transcript exports: plain text, SubRip (.srt), WebVTT (.vtt) and JSON. Pure functions of a session's
metadata and its stored final turns, so they work the same mid-session and after it.

A turn is {"turn", "text", "start", "end", "words": [{"word", "start", "end", "confidence"}]}; times are
seconds from the start of the stream and any of them may be None.

Caption cues follow common practice (BBC/Netflix style guides): at most 2 lines of at most 42 characters,
at most 6 s on screen, at least 1 s where the next cue leaves room, never overlapping. Cues follow sentences, not
turns (a recognizer ends a turn at a short pause, often mid-sentence): a turn that did not end a sentence runs on
into the next one that starts within JOIN_GAP, and a run is split where its sentences and clauses end (then at
pauses) rather than wherever the lines are full. Splits fall at word boundaries using word times (the embedded
recognizer's are estimated: "estimated": true); words without times get times interpolated across their turn.
The .txt export is one line per such run of turns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from . import protocol

LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECONDS = 6.0
MIN_CUE_SECONDS = 1.0
JOIN_GAP = 1.5  # seconds: a turn that did not end a sentence runs on into the next one that starts this soon
SENTENCE_MARKS = (".", "?", "!", "…")
CLAUSE_MARKS = (",", ";", ":", "-", "–", "—")  # noqa: RUF001 (dashes, as typed)
CLOSERS = "\"')]»”’"  # closing quotes and brackets: a mark before them still ends the sentence or clause
# The price of a split (_split): per cue break by what ends the cue, plus per cue, plus per cue's empty room.
CLAUSE_BREAK = 0.4
PAUSE_BREAK = 0.5  # after a word followed by at least BREAK_PAUSE seconds of silence
BREAK_PAUSE = 0.3
MID_BREAK = 1.0
CUE_COST = 0.3
ROOM_COST = 0.3
INNER_SENTENCE = 1.0  # per sentence end inside a cue: a new sentence starts a new cue where it can


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


# A capitalised word of 2-3 letters without a vowel and a full stop is a title's abbreviation ("Mr.", "Mrs.", "Dr.",
# "St."), not the end of a sentence: "And Mr." is no cue of its own ("Yes." and "No." are sentences).
_TITLE = re.compile(r"(?:^|\s)[B-DF-HJ-NP-TV-XZ][b-df-hj-np-tv-xz]{1,2}\.$")


def ends_sentence(text: str) -> bool:
    """The text ends a sentence: its last mark (closing quotes and brackets aside) is . ? ! or …"""
    text = text.rstrip().rstrip(CLOSERS)
    return text.endswith(SENTENCE_MARKS) and not _TITLE.search(text)


def ends_clause(text: str) -> bool:
    """The text ends a clause: its last mark (closing quotes and brackets aside) is , ; : or a dash."""
    return text.rstrip().rstrip(CLOSERS).endswith(CLAUSE_MARKS)


def _runs(turns: Iterable[dict[str, Any]]) -> list[tuple[list[Word], set[int]]]:
    """The turns' timed words, in runs that cues may cross: a turn that did not end a sentence runs on into the
    next one if that starts within JOIN_GAP (the recognizer ends a turn at a short pause, often mid-sentence).
    With each run, the indexes of its words that ended a turn (a pause the recognizer heard)."""
    runs: list[tuple[list[Word], set[int]]] = []
    last_end = 0.0
    open_run = False
    for turn in turns:
        words = timed_words(turn, last_end)
        if not words:
            continue
        if open_run and runs and words[0].start - runs[-1][0][-1].end < JOIN_GAP:
            runs[-1][0].extend(words)
        else:
            runs.append((list(words), set()))
        runs[-1][1].add(len(runs[-1][0]) - 1)
        open_run = not ends_sentence(words[-1].text)
        last_end = words[-1].end
    return runs


def _break_cost(word: Word, nxt: Word, turn_end: bool) -> float:
    """What ending a cue after `word` (with `nxt` the next one) costs: nothing at a sentence end, a little at a
    clause mark or a pause (one of BREAK_PAUSE, or where the recognizer ended a turn), most inside a clause."""
    if ends_sentence(word.text):  # the one rule ("Mr." is no sentence end), as the runs and the .txt lines use it
        return 0.0
    cost = CLAUSE_BREAK if ends_clause(word.text) else MID_BREAK
    return min(cost, PAUSE_BREAK) if turn_end or nxt.start - word.end >= BREAK_PAUSE else cost


def _fits(lengths: list[int], i: int, j: int) -> bool:
    """Words i..j-1 (their character counts) fit in MAX_LINES lines of LINE_CHARS."""
    total = sum(lengths[i:j]) + (j - i - 1)
    if total <= LINE_CHARS:
        return True
    if MAX_LINES < 2 or total > MAX_LINES * LINE_CHARS + 1:
        return False
    top = -1
    for m in range(i, j - 1):
        top += lengths[m] + 1
        if top <= LINE_CHARS and total - top - 1 <= LINE_CHARS:
            return True
    return False


def _split(run: list[Word], turn_ends: Container[int] = ()) -> list[list[Word]]:
    """A run's words as cues: every cue fits 2 lines and 6 s; among the ways to split, the one whose breaks cost
    least (sentence ends first, then clause marks and pauses) with a small price per cue, for empty room and for a
    sentence that ends inside a cue, so cues break where the sentence does rather than wherever the lines are full."""
    n = len(run)
    lengths = [len(w.text) for w in run]
    ends = [0]  # ends[k]: sentence ends among words 0..k-1
    for w in run:
        ends.append(ends[-1] + ends_sentence(w.text))
    best = [0.0] + [math.inf] * n  # best[j]: the cheapest split of words 0..j-1
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        end_cost = 0.0 if j == n else _break_cost(run[j - 1], run[j], j - 1 in turn_ends)
        for i in range(j - 1, -1, -1):
            single = i == j - 1
            if not single and (run[j - 1].end - run[i].start > MAX_CUE_SECONDS or not _fits(lengths, i, j)):
                break  # more words only make it longer
            chars = sum(lengths[i:j]) + (j - i - 1)
            room = max(0.0, 1.0 - chars / (MAX_LINES * LINE_CHARS))
            inner = ends[j - 1] - ends[i]  # sentence ends before the cue's last word
            cost = best[i] + end_cost + CUE_COST + ROOM_COST * room + INNER_SENTENCE * inner
            if cost < best[j]:
                best[j], back[j] = cost, i
    groups = []
    j = n
    while j > 0:
        groups.append(run[back[j] : j])
        j = back[j]
    return groups[::-1]


def cues(turns: Iterable[dict[str, Any]]) -> list[Cue]:
    """Cues by sentence: they run across turns (_runs) and break where the sentence does (_split)."""
    out = [_cue(group) for run, turn_ends in _runs(turns) for group in _split(run, turn_ends)]
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
    """One line per sentence run, as people read a transcript: a turn that did not end a sentence goes on in
    the same line with the next one, if that starts within JOIN_GAP (times unknown: it goes on)."""
    lines: list[str] = []
    prev_end: float | None = None
    open_line = False
    for t in turns:
        text = clean(t.get("text") or "")
        if not text:
            continue
        start = _num(t.get("start"))
        near = prev_end is None or start is None or start - prev_end < JOIN_GAP
        if open_line and lines and near:
            lines[-1] += " " + text
        else:
            lines.append(text)
        open_line = not ends_sentence(text)
        prev_end = _num(t.get("end"))
    return "".join(line + "\n" for line in lines)


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
