"""The turn planner of one stream: its audio, the open turn, speculative finals, cuts, left context and drafts.

Pure state and rules, no threads, no model: the stream thread (stream.py) feeds it audio and acts on what it says
(submit a decode, show an interim, commit a final). Sample positions are absolute 16 kHz sample indexes of the stream.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import NamedTuple

import numpy as np

from .signal import RATE, Endpointer
from .tuning import Tuning
from .vad import CHUNK as VAD_CHUNK

UPDATE_INTERVAL = 0.32  # seconds of audio between interim re-decodes
FORCE_INTERVAL = 0.24  # until the turn has text: forced re-decodes, so the first interim comes early
MODEL_END_SECONDS = 8.0  # turns at least this long also end where moonshine's own VAD ends a line, or at a cut
FINAL_CUT_PAUSE = 0.16  # seconds: the pause at a cut that a long turn ends at (stream.Stream._cut_final)
MAX_TURN_SECONDS = 14.0  # from this long on, a turn ends at any cut
MODEL_END_FALLBACK = 20.0  # with onnx interims: a turn without a cut this long ends at moonshine's line end
MAX_INTERIM_GAP = 1.0  # seconds of audio: other streams' finals defer our interim re-decodes at most this long
LOOK_BEHIND = 0.3  # audio kept before the detected speech onset
MAX_LINE_SECONDS = 30.0
CONTEXT_MAX_SECONDS = 16.0  # longest audio decoded with a context (previous turn, pause, this turn)
VOICE_CHUNKS = 3  # 32 ms chunks of confident speech (vad.py): a breath at the end of the reading had none
VOICE_WAIT = 1.0  # seconds of an open turn without them, after which libmoonshine's interims take over (a quiet voice)


class Cut(NamedTuple):
    """The turn's audio up to sample `at` decodes as `text`; `pause`: samples of silence after it (at least);
    `ending`: the decoder's log-probabilities after its last word (onnxdecoder.Endings), if it judged them."""

    text: str
    at: int
    pause: int = 0
    ending: np.ndarray | None = None
    # (sample its decode's audio started at, prefix ids, the decode's word ids) while the end its decode gave it (a
    # sentence mark, a comma or nothing) waits to be judged again with the speech that followed (Stream._settle_cut)
    heard: tuple | None = None


class Context(NamedTuple):
    """A finished turn that the next one may be decoded after: its audio start, end of speech and token ids."""

    start: int
    speech_end: int
    ids: tuple[int, ...]


class Spec(NamedTuple):
    """A speculative final: its text, the audio it saw (up to `cutoff`), the cut it was decoded from (or None) and
    the whole turn's ids (None when decoded from a cut)."""

    text: str
    cutoff: int
    start: int | None
    ids: tuple[int, ...] | None
    ending: np.ndarray | None = None  # as Cut.ending
    heard: tuple | None = None  # as Cut.heard


class Job(NamedTuple):
    """One final decode (worker.FinalDecoder.decode): audio[own:] is the turn with its tail, audio[:own] the
    previous turn, already decoded as `prefix`; `draft`, the interim's words to check."""

    audio: np.ndarray
    words: bool  # a voice detector heard speech in the turn
    checked: bool  # a decode of the turn found words already
    prefix: tuple[int, ...] = ()
    own: int = 0
    draft: str = ""


class Tag(NamedTuple):
    """Which decode a result belongs to: the generation and turn it was made for, and the cut it started at."""

    gen: int
    turn_no: int
    base: str  # the text of that cut ("" if none)
    start: int | None


class Done(NamedTuple):
    """A speculative decode's result, back on the stream's thread."""

    tag: Tag
    text: str
    ids: tuple[int, ...] | None
    cutoff: int
    seconds: float  # decode time
    length: float  # seconds of audio decoded
    waited: float  # seconds queued before the decode started
    ending: np.ndarray | None = None  # as Cut.ending
    job: Job | None = None  # what was decoded (the sentence end is judged on the stream's thread: Stream._judged)
    heard: tuple | None = None  # as Cut.heard, if the decode ended in a sentence mark (FinalDecoder.judge)


def join(head: str, tail: str) -> str:
    return " ".join(filter(None, (head.strip(), tail.strip())))


def norm_words(words: list[str]) -> list[str]:
    """Words compared as spoken: lower case, letters and digits only."""
    return ["".join(ch for ch in w.lower() if ch.isalnum()) for w in words]


def collapse_repeats(text: str) -> str:
    """tiny-en sometimes repeats a whole short line ("Seven of clubs, seven of clubs."): keep one copy when the
    text is a phrase of 2+ words said 2+ times back to back. Single-word repeats ("no, no") are left alone."""
    words = text.split()
    norm = norm_words(words)
    n = len(norm)
    for size in range(2, n // 2 + 1):
        if n % size == 0 and norm == norm[:size] * (n // size):
            return " ".join(words[:size]).rstrip(",;") + ("." if text.rstrip()[-1:] == "." else "")
    return text


def drop_repeat(text: str) -> str:
    """The text without a copy of its last words that repeats the words just before it ("it was it was", "with
    with", "the period with the period with"): tiny-en loops on a word cut off by the end of the audio; an interim
    showing the loop had its words rewritten by the next. Phrases split by punctuation: ends_repeated."""
    words = text.split()
    norm = norm_words(words)
    for size in range(1, len(words) // 2 + 1):
        tail = words[len(words) - 2 * size :]
        if norm[-size:] == norm[-2 * size : -size] and all(w[-1:].isalnum() for w in tail[:-1]):
            return drop_repeat(" ".join(words[:-size]))
    return text


# A full stop after a word of 2+ letters with a vowel (not "Mr." "vs."), then a lower-case word.
_CONTINUED_STOP = re.compile(r"(?<![\w.])([A-Za-z]*[AEIOUYaeiouy][A-Za-z]*[A-Za-z])\. (?=[a-z])")


def continued_stops(text: str) -> str:
    """A full stop the decoder itself went on from in lower case ("the best of times. it was the worst") is no
    sentence end by its own next token: it becomes a comma (tiny-en writes one at some of a reader's commas)."""
    return _CONTINUED_STOP.sub(r"\1, ", text)


def ends_repeated(text: str) -> bool:
    """The text's last phrase (2+ words, between punctuation marks) is the one before it again."""
    phrases = [[w for w in norm_words(part.split()) if w] for part in re.split(r"[.,;:!?]", text)]
    phrases = [p for p in phrases if p]
    return len(phrases) >= 2 and len(phrases[-1]) >= 2 and phrases[-1] == phrases[-2]


class TurnPlanner:
    """`vad`: the stream's voice detector (vad.StreamVad) or None; `onnx`: the worker has the onnx decoder."""

    def __init__(self, tuning: Tuning, vad=None, onnx: bool = False, seed: int = 0):
        self.t = tuning
        self.ep = Endpointer()
        self.vad = vad
        # interims (and the voice check) from the onnx decoder and the stream's own voice detector
        self.onnx_mode = tuning.onnx_interims and onnx and vad is not None
        self.total = 0  # 16 kHz samples received
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # absolute sample index of buf[0]
        self.floor = 0  # audio before this belongs to finished turns
        self.carry: int | None = None  # a turn ended inside speech: the next one's audio starts exactly here
        self.heard = False  # the endpointer saw speech since the last turn ended: a turn is open
        self.rng = np.random.default_rng(seed)
        self.context: Context | None = None  # the previous turn
        # the previous final ended without a sentence mark: the decoder's log-probabilities after its last word, and
        # its end of speech: the next turn's first word takes the case the decoder expects there (stream._join)
        self.after: tuple[np.ndarray, int] | None = None
        self.gen = 0  # bumped whenever a speculative decode in flight becomes stale
        self.keep_gen = -1  # a stale decode of this generation still runs to its end (it may become a cut)
        self.turn_no = 0  # bumped when a turn ends
        self.new_turn()

    def new_turn(self) -> None:
        """Forget the finished turn's text and speculative decodes."""
        self.line_text = ""  # the last interim's text
        self.line_start: float | None = None  # start of the turn's first moonshine line (seconds)
        self.spec: Spec | None = None
        self.inflight: int | None = None  # cutoff of the speculative decode in flight
        self.cuts: list[Cut] = []
        self.cut_ok: int | None = None  # cutoff of an overtaken decode, still running, that may become a cut
        self.cut_pause = 0  # the pause (samples) after cut_ok
        self.checked = False  # a decode of this turn found words (the voice check need not run again)
        self.gen += 1
        self.turn_no += 1

    # -- audio --
    def add(self, x: np.ndarray) -> bool:
        """Take 16 kHz samples (append, then listen); True if the endpointer heard speech in them."""
        self.append(x)
        return self.listen(x)

    def append(self, x: np.ndarray) -> None:
        self.total += len(x)
        self.buf = np.concatenate([self.buf, x])

    def listen(self, x: np.ndarray) -> bool:
        """The appended samples through the voice detector and the endpointer; True if it heard speech."""
        if self.vad is not None:
            self.vad.process(x)
        speech_end = self.ep.last_speech
        spoke = self.ep.process(x)
        self.heard = self.heard or self.ep.in_turn
        if spoke:
            self.drop_spec(self.total - len(x) - speech_end)
        return spoke

    @property
    def turn_open(self) -> bool:
        return self.heard

    def turn_start(self) -> int:
        if self.carry is not None:
            return self.carry
        return self.ep.onset if self.ep.onset is not None else int((self.line_start or 0) * RATE)

    def long_turn(self) -> bool:
        return self.total - self.turn_start() >= MODEL_END_SECONDS * RATE

    def region_start(self) -> int:
        """Where the open turn's audio starts (its onset or first line, minus the look-behind)."""
        if self.carry is not None:
            return max(self.carry, self.buf_start)  # the speech went on where the previous turn was cut
        starts = [
            s
            for s in (self.ep.onset, None if self.line_start is None else int(self.line_start * RATE))
            if s is not None
        ]
        start = (min(starts) if starts else self.total) - int(LOOK_BEHIND * RATE)
        return max(start, self.floor, self.buf_start)

    def region_audio(self, start: int | None = None) -> np.ndarray:
        """The open turn (from `start`, a cut, if given), with a synthetic noise tail."""
        start = self.region_start() if start is None else max(start, self.buf_start)
        a = self.buf[start - self.buf_start :]
        pad = (self.rng.normal(0.0, 20.0, int(self.t.pad_seconds * RATE)) / 32768.0).astype(np.float32)
        return np.ascontiguousarray(np.concatenate([a, pad]), dtype=np.float32)

    def trim(self) -> None:
        """Keep only the audio a final decode may need."""
        keep_from = self.total - int(LOOK_BEHIND * RATE)
        if self.carry is not None and not self.turn_open and self.ep.silence >= self.t.context_pause * RATE:
            self.carry = None  # the speech did not go on after the cut after all: the next turn starts as usual
        if self.carry is not None:
            keep_from = min(keep_from, self.carry)  # a late cut's words after it wait for the turn to open
        if self.turn_open:
            keep_from = min(keep_from, self.region_start())
            keep_from = max(keep_from, self.total - int(MAX_LINE_SECONDS * RATE))
        ctx = self.context
        if ctx is not None:
            heard_at = self.total if self.ep.onset is None else self.ep.onset
            if heard_at - ctx.speech_end > self.t.context_pause * RATE:
                self.context = None  # the pause went on too long: the next turn is decoded alone
            else:
                keep_from = min(keep_from, ctx.start)
        if self.after is not None:
            heard_at = self.total if self.ep.onset is None else self.ep.onset
            if heard_at - self.after[1] > self.t.context_pause * RATE:
                self.after = None  # a long pause: whatever comes next starts a sentence
        keep_from = max(keep_from, self.buf_start)
        if keep_from > self.buf_start:
            self.buf = self.buf[keep_from - self.buf_start :]
            self.buf_start = keep_from

    # -- voice --
    def voiced(self) -> bool:
        """The stream's voice detector heard speech in the open turn."""
        if self.vad is None or self.ep.onset is None:
            return False
        # from the endpointer's onset, not the look-behind: the previous turn's last word may still be in that
        return self.vad.voiced_since(self.ep.onset - VAD_CHUNK + 1) >= VOICE_CHUNKS

    def waiting_for_voice(self) -> bool:
        """No interim yet: the turn is open, but its voice detector has not heard speech (for VOICE_WAIT at most)."""
        return (
            self.onnx_mode
            and self.turn_open
            and not self.voiced()
            and self.total - self.turn_start() < VOICE_WAIT * RATE
        )

    def onnx_interims(self) -> bool:
        """Interims from the onnx decoder: only in an open turn with voice in it (tiny-en makes up "You" on noise);
        in a long turn, only from a cut (long_interims)."""
        if not (self.onnx_mode and self.turn_open and self.voiced()):
            return False
        # a long turn: libmoonshine's line end is what may end it, unless a cut will (long_interims)
        return not self.long_turn() or (self.t.long_interims and self.cut_for(self.total)[1] is not None)

    def has_words(self) -> bool:
        """A voice detector heard speech in the open turn: the stream's own (vad.py), or moonshine's (its interims
        showed text)."""
        return self.voiced() if self.onnx_mode else bool(self.line_text.strip())

    # -- speculation --
    def spec_due(self) -> bool:
        """Silence after the speech: time for the speculative final decode."""
        return self.ep.silence >= self.t.spec_silence * RATE

    def wants_spec(self) -> bool:
        """A speculative decode should start now (one per stream in flight; a result waits for the commit)."""
        return self.turn_open and self.spec_due() and self.inflight is None and self.spec is None

    def drop_spec(self, pause: int) -> None:
        """Speech went on (after `pause` samples of silence, at least)."""
        between_words = self.t.cut_pause > 0 and pause >= self.t.cut_pause * RATE
        if self.spec is not None and between_words:
            # it covers the turn up to this pause
            spec = self.spec
            self.add_cut(spec.text, spec.cutoff, spec.start, pause, spec.ending, spec.heard)
        if self.inflight is not None:
            self.cut_ok = self.inflight if between_words else None
            self.cut_pause = pause
            if (between_words and self.long_head(self.inflight)) or not self.t.stop_overtaken:
                self.keep_gen = self.gen  # its text may become a cut (add_cut): let it finish
        if self.spec is not None or self.inflight is not None:
            self.spec, self.inflight = None, None
            self.gen += 1

    def stale(self, gen: int) -> bool:
        """A decode made for generation `gen` may stop: speech overtook it and it cannot become a cut."""
        return self.gen != gen and self.keep_gen != gen

    def commit_due(self) -> bool:
        return self.ep.ended(self.t.end_silence) and self.spec is not None and self.inflight is None

    # -- cuts --
    def long_head(self, at: int, start: int | None = None) -> bool:
        """A decode up to `at` (from the cut `start`, or the turn's start) covers enough to be a cut."""
        return at - (self.region_start() if start is None else start) >= self.t.cut_min_seconds * RATE

    def add_cut(
        self, text: str, at: int, start: int | None, pause: int = 0, ending: np.ndarray | None = None, heard=None
    ) -> None:
        """Keep a decoded head of the turn if its own part (from the cut it started at) is long enough."""
        if ends_repeated(text):
            return  # tiny-en said its last phrase twice ("a season of light. It was a season of light."): not a base
        if (not self.cuts or at > self.cuts[-1].at) and self.long_head(at, start):
            self.cuts.append(Cut(text, at, pause, ending, heard))

    def audio_between(self, start: int, end: int) -> np.ndarray | None:
        """The stream's audio from sample `start` to `end`, if it is still in the buffer."""
        if start < self.buf_start or end > self.total:
            return None
        return np.ascontiguousarray(self.buf[start - self.buf_start : end - self.buf_start], dtype=np.float32)

    def cut_ending(self, at: int | None) -> np.ndarray | None:
        """The decoder's log-probabilities after the last word of the cut at sample `at`."""
        return next((c.ending for c in self.cuts if c.at == at), None)

    def final_cut(self) -> Cut | None:
        """The cut a long turn ends at now: once the turn is MODEL_END_SECONDS long, its latest cut after a pause
        of at least FINAL_CUT_PAUSE (shorter pauses are also found inside words: "respect|able"); from
        MAX_TURN_SECONDS on, any cut."""
        if not self.cuts:
            return None
        cut = self.cuts[-1]
        length = cut.at - self.turn_start()
        if length >= MAX_TURN_SECONDS * RATE or (
            length >= MODEL_END_SECONDS * RATE and cut.pause >= FINAL_CUT_PAUSE * RATE
        ):
            return cut
        return None

    def cut_for(self, end: int) -> tuple[str, int | None]:
        """The latest cut that leaves at least cut_min_seconds to decode: (its text, its sample), or ("", None)."""
        if end - self.region_start() < self.t.cut_from_seconds * RATE:
            return "", None
        for cut in reversed(self.cuts):
            if end - cut.at >= self.t.cut_min_seconds * RATE:
                return cut.text, cut.at
        return "", None

    # -- context and drafts --
    def context_for_turn(self) -> Context | None:
        """The previous turn, if this one follows it closely enough to be decoded with it."""
        ctx = self.context
        if ctx is None or self.ep.onset is None or self.ep.onset - ctx.speech_end > self.t.context_pause * RATE:
            return None
        if ctx.start < self.buf_start or self.total - ctx.start > CONTEXT_MAX_SECONDS * RATE:
            return None  # tiny-en decodes up to ~30 s; longer decodes also cost more than they bring
        return ctx

    def draft(self, base: str) -> str:
        """The interim's words after `base` (the text of the cut a decode starts at), as the decoder's draft
        (onnxdecoder.py: fewer decoder passes), its first word capitalized as the decoder starts every decode:
        stream._join may have lowered it (after a cut or a final without a sentence mark), and a draft token
        "▁we" where the decoder reads "▁We" failed the calm interims' check and lost the whole draft."""
        words = self.line_text.split()[self.covered(base) :]
        if words:
            words[0] = words[0][:1].upper() + words[0][1:]
        return " ".join(words)

    def covered(self, base: str) -> int:
        """How many of the last interim's words the text of a cut (`base`) stands for: aligned as spoken (the cut's
        decode may read "do forth" as "do for it"), not counted: the draft after it then starts where the cut's
        part ends (a draft one word off lost the calm interims' check at its first token)."""
        line, cut = norm_words(self.line_text.split()), norm_words(base.split())
        blocks = [b for b in SequenceMatcher(None, line, cut, autojunk=False).get_matching_blocks() if b.size]
        if not cut or not blocks:
            return min(len(cut), len(line))
        i, j, size = blocks[-1]
        return min(len(line), i + len(cut) - j)  # the cut's words after its last match: as many of the interim's

    def held(self, base: str) -> str:
        """What an interim decoded from the cut `base` shows for the cut's part: the words shown there already if
        the cut's own decode (a speculative final's, no calm check) reads them otherwise; the cut's text if
        those are open still (interim_open_words) or calm interims are off. The final keeps the cut's text."""
        n = self.covered(base)
        words = self.line_text.split()[:n]
        if (
            self.t.interim_margin > 0
            and words
            and n <= len(self.shown())
            and norm_words(words) != norm_words(base.split())
        ):
            return " ".join(words)
        return base

    def shown(self) -> list[str]:
        """The last interim's words that calm interims hold (all but its last interim_open_words), as spoken."""
        words = norm_words(self.line_text.split())
        return words[: max(0, len(words) - self.t.interim_open_words)]

    def keeps_shown(self, text: str) -> bool:
        """`text` starts with the words shown(), or calm interims are off."""
        shown = self.shown() if self.t.interim_margin > 0 else []
        return norm_words(text.split())[: len(shown)] == shown

    def job(self) -> tuple[str, int | None, Job]:
        """What to decode now: the text before the cut the decode starts at, that cut, and the decoder's job."""
        base, start = self.cut_for(self.total)
        ctx = self.context_for_turn() if start is None else None
        audio_from, prefix = (start, ()) if ctx is None else (ctx.start, ctx.ids)
        own = 0 if ctx is None else self.region_start() - ctx.start
        # a turn the stream's voice detector is sure of needs no check by libmoonshine's decode (whose VAD state
        # comes from the other streams: it could return nothing and wipe the interims the turn showed)
        checked = self.checked or (self.onnx_mode and self.voiced())
        return base, start, Job(self.region_audio(audio_from), self.has_words(), checked, prefix, own, self.draft(base))

    # -- the end of a turn --
    def end_turn(self, upto: int | None = None, carry: bool = False, after: tuple | None = None) -> None:
        """The turn's final is sent. The next turn's look-behind may reach back to the end of the audio that final
        was decoded from (`upto`), not just to now: a late commit (a slow decode) must not cut the soft start of a
        word said right after it. (It did: "We had everything" lost its "We" in the next turn's context.)
        `carry`: the turn was cut inside speech (a long turn at moonshine's line end, reported late): the next
        turn's audio starts at `upto` itself, whenever its onset is heard, so the words after the cut are in it.
        `after`: (log-probabilities, end of speech) if the final ended without a sentence mark (TurnPlanner.after)."""
        self.after = after
        self.floor = self.total if upto is None else upto
        if self.vad is not None:  # the finished turn's speech probabilities (word times) are not needed again
            self.vad.forget(self.floor - int(LOOK_BEHIND * RATE) - VAD_CHUNK)
        self.carry = self.floor if carry and self.floor < self.total else None
        self.heard = False
        self.context = None
        self.ep.reset()

    def remember(self, region: int, speech_end: int, ids: tuple[int, ...] | None) -> None:
        """A committed turn's tokens (the whole turn's) make it the next turn's left context, if it is short enough."""
        if ids and self.t.context_seconds > 0 and speech_end - region <= self.t.context_seconds * RATE:
            self.context = Context(region, speech_end, ids)
