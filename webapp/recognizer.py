"""The embedded recognizer: Moonshine tiny-en (moonshine-voice 0.1.0, weights inside the wheel) in worker processes.

Layout (measured in docs/embedded-stt.md §8): one worker process per core, each with one Transcriber and several
streams on threads; the web process never runs add_audio. Moonshine only ends a line ~0.6-0.7 s after speech, so
each stream runs its own energy endpointer on the PCM: after 0.04 s of silence it submits the line (plus a
synthetic noise tail: without trailing audio tiny-en repeats or drops the last words, §6.3) to the worker's
final-decoder thread, and once the silence reaches 0.2 s it commits that text as the final one. Final decodes run
the same weights in onnxruntime (webapp/onnxdecoder.py): a turn that follows the previous one within CONTEXT_PAUSE
is decoded after it, with that turn's tokens read back as the prefix (left context), and the interim text is its
draft (checked in one decoder pass instead of decoded token by token: webapp/onnxdecoder.py). The decode is
speculative and runs beside the stream's thread, so it overlaps the silence window; if speech goes on, its text is
sent as an interim instead, or stopped between decoder steps when it cannot serve as a cut. Finals come first in a
worker: while one is queued or running, the worker's streams skip their interim re-decodes (which re-decode the
whole turn), a stream in a pause skips them too, and the streams' threads run at nice LOCAL_STREAM_NICE.
Interims are the onnx decoder's too (on the stream's thread, the last interim as the draft), once the stream's own
voice detector (webapp/vad.py: libmoonshine's Silero model with a state per stream) is sure the turn holds speech.
Moonshine's streaming lines only serve turns longer than MODEL_END_SECONDS, which its line end may end (a noisy
room the endpointer takes for speech); its lines inside shorter turns are not finals (they split on short pauses
and were decoded without a tail), and lines it makes up on noise (no speech heard by the endpointer) are never
shown. LOCAL_ONNX_INTERIMS=0 gives the interims back to moonshine's streaming lines.

API (asyncio side):
    pool = await get_pool(settings)          # starts and warms the workers once
    stream = pool.open_stream(on_event)      # CapacityError when all slots are busy
    stream.feed(pcm)                          # s16le mono at the rate given to open_stream
    await stream.finalize()                   # end the current turn now; returns False if none was open
    await stream.close()                      # finalize, flush, deliver the remaining events
    stream.abort()
on_event(kind, data) runs on the event loop that opened the stream: kind "update" {text, start, end},
"final" {text, start, end, trigger: model|manual|close} or "error" {message}. Times are seconds from the stream start.

Nothing here downloads anything: only get_model_path("tiny-en") (a path inside the package) is used.
"""
from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import local_tuning
from .onnxdecoder import OnnxDecoder
from .vad import CHUNK as VAD_CHUNK, StreamVad, load_session

log = logging.getLogger(__name__)

RATE = 16000
FRAME = 320  # 20 ms endpointer frames
# Default slots per core. With onnx interims, 6 streams on 2 cores met every target in every run, also beside
# a core's worth of other load, and 8 streams held too (docs/benchmarks.md, "Embedded recognizer"). On a host whose
# other load took half the CPU (earlier sessions), 6 streams let interims fall behind in some runs; 3 per core
# leaves that margin. LOCAL_MAX_STREAMS=4 is the setting for a busy host.
STREAMS_PER_CORE = 3


# Tuning knobs, read in the worker processes too (they inherit the environment). config.load() has refused bad
# values at start-up; a worker started with one anyway fails at import, naming the variable.
_TUNING = local_tuning(os.environ)


def _env_float(name: str, default: float) -> float:
    """A tuning knob's value (its default is config.LOCAL_TUNING's, which `default` documents here)."""
    return _TUNING[name]


UPDATE_INTERVAL = 0.32  # seconds of audio between interim re-decodes
FORCE_INTERVAL = 0.24  # until the turn has text: forced re-decodes, so the first interim comes early
SPEC_SILENCE = _env_float("LOCAL_SPEC_SILENCE", 0.04)  # silence after speech that starts the speculative final decode
END_SILENCE = _env_float("LOCAL_END_SILENCE", 0.2)  # silence after speech that ends the turn
PAD_SECONDS = _env_float("LOCAL_PAD_SECONDS", 0.5)  # tail added to final decodes (avoids "five, five, five")
MODEL_END_SECONDS = 8.0  # turns at least this long also end where moonshine's own VAD ends a line
INTERIM_SHARE = _env_float("LOCAL_INTERIM_SHARE", 2.0)  # interval >= last re-decode time x (this + worker's streams)
MAX_INTERIM_GAP = 1.0  # seconds of audio: other streams' finals defer our interim re-decodes at most this long
QUIET_SILENCE = _env_float("LOCAL_QUIET_SILENCE", 0.02)  # silence in an open turn that stops interim re-decodes
# Soft tails (weak frames right after the speech): wait until the tail has been over for TAIL_QUIET seconds before
# the speculative decode, and decode again (at most SPEC_REDOS times) if the tail goes on after it. Both off: they
# cost ~0.05-0.08 s of EndOfTurn p50 and changed no word in the benchmark (docs/benchmarks.md).
TAIL_QUIET = _env_float("LOCAL_TAIL_QUIET", 0.0)
SPEC_REDOS = int(_env_float("LOCAL_SPEC_REDOS", 0))
# A speculative decode made at a pause that speech then went on from (a pause at least CUT_PAUSE long, so between
# words) is kept as a cut: a later decode of the turn may start there and append its text, if both parts are at
# least CUT_MIN_SECONDS long (tiny-en decodes short fragments badly: "Made. Still more respect."). Without cuts,
# every pause re-decodes the turn from its start, and at 6 streams half the final decoder's time went to decodes
# that speech overtook (docs/benchmarks.md). LOCAL_CUT_PAUSE=0 turns it off.
CUT_PAUSE = _env_float("LOCAL_CUT_PAUSE", 0.12)
CUT_MIN_SECONDS = _env_float("LOCAL_CUT_MIN_SECONDS", 2.0)
# Only turns at least this long are decoded from a cut: a shorter one decodes whole fast enough (~0.05 s per second
# of speech), and the whole turn's context gets its words right more often than two parts do.
CUT_FROM_SECONDS = _env_float("LOCAL_CUT_FROM_SECONDS", 6.0)
LOOK_BEHIND = 0.3  # audio kept before the detected speech onset
MAX_LINE_SECONDS = 30.0
READY_TIMEOUT = 60.0
# Final decodes in onnxruntime (webapp/onnxdecoder.py) with this many beams; 0 = libmoonshine's decode, no context.
# With left context, 2 beams changed little (6 streams: 3.1 % WER against 3.5 %) and cost the latency targets at
# 6 streams (p95 0.73 against 0.52 s, one stream's interims 1.56 s behind): docs/benchmarks.md.
BEAMS = int(_env_float("LOCAL_BEAMS", 1))
VERIFY_SECONDS = 2.0  # turns up to this long are decoded by libmoonshine first, to check that they hold speech
# Left context: a turn that starts at most CONTEXT_PAUSE after the previous one is decoded together with it, the
# decoder reading the previous turn's tokens instead of guessing them (webapp/onnxdecoder.py). Decoded alone, turns
# cut at comma pauses lose words ("Ensure" for "in short", "a season", "For good or evil"): at 6 streams the
# benchmark's WER went from 6.4-7.4 % to 3.5-5.5 % (docs/benchmarks.md). LOCAL_CONTEXT_SECONDS=0 turns it off.
CONTEXT_SECONDS = _env_float("LOCAL_CONTEXT_SECONDS", 8.0)  # longest previous turn used as context
CONTEXT_PAUSE = _env_float("LOCAL_CONTEXT_PAUSE", 1.2)  # longest pause between the two turns' speech
CONTEXT_MAX_SECONDS = 16.0  # longest audio decoded with a context (previous turn, pause, this turn)
# A speculative decode that speech overtook (and that cannot become a cut) stops between decoder steps: at 6
# streams, 63 % of the final decoder's time went to such decodes (30.5 of 48.8 s per worker; 21 s with stopping).
STOP_OVERTAKEN = bool(int(_env_float("LOCAL_STOP_OVERTAKEN", 1)))
# Nice value of the streams' threads (endpointer, interims): the final-decoder thread, at 0, gets the core first.
# 5, not 10: at 10 the interims starved (one stream 4.8-5.0 s behind at 6 streams); at 5, 6 streams kept up in both
# rounds, with EndOfTurn p95 0.75-0.89 s (docs/benchmarks.md).
STREAM_NICE = int(_env_float("LOCAL_STREAM_NICE", 5))
# Interims come from the onnx decoder: the turn's audio so far, the last interim's words as the draft (checked in
# one decoder pass, so the words are the decoder's own, not read back), once the stream's own voice detector
# (webapp/vad.py) has heard VOICE_CHUNKS chunks of speech in the turn (tiny-en makes up "You" on a breath).
# libmoonshine's interims re-decode its whole line token by token, report a line that ends 0.3-1 s before the audio
# it has, and start by its VAD, whose state is shared by every stream of the process. Turns longer than
# MODEL_END_SECONDS go back to libmoonshine's interims: its line end is what ends them. LOCAL_ONNX_INTERIMS=0: off.
ONNX_INTERIMS = bool(int(_env_float("LOCAL_ONNX_INTERIMS", 1)))
VOICE_CHUNKS = 3  # 32 ms chunks of confident speech (webapp/vad.py): a breath at the end of the reading had none
VOICE_WAIT = 1.0  # seconds of an open turn without them, after which libmoonshine's interims take over (a quiet voice)
TRACE = bool(_TUNING["LOCAL_TRACE"])  # one timing line per turn end on the workers' stderr


class CapacityError(Exception):
    """All recognizer slots are in use."""

    def __init__(self, limit: int):
        super().__init__(f"all {limit} embedded recognizer slots are busy")
        self.limit = limit


def default_max_streams() -> int:
    return STREAMS_PER_CORE * _cores()


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# ================================================================================================
# Worker process side
# ================================================================================================

class Resampler:
    """Cheap streaming resampler to 16 kHz: windowed-sinc low-pass (when downsampling) + linear interpolation."""

    def __init__(self, rate: int):
        self.step = rate / RATE
        self.pos = 0.0
        self.buf = np.zeros(0, np.float32)
        self.taps = None
        if rate > RATE:
            n = 31
            cutoff = 0.45 / self.step  # cycles per input sample
            k = np.arange(n) - (n - 1) / 2
            taps = 2 * cutoff * np.sinc(2 * cutoff * k) * np.hamming(n)
            self.taps = (taps / taps.sum()).astype(np.float32)
            self.hist = np.zeros(n - 1, np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.taps is not None:
            xx = np.concatenate([self.hist, x])
            self.hist = xx[-(len(self.taps) - 1):]
            x = np.convolve(xx, self.taps, mode="valid").astype(np.float32)
        buf = np.concatenate([self.buf, x])
        if len(buf) < 2:
            self.buf = buf
            return np.zeros(0, np.float32)
        count = int(np.floor((len(buf) - 1 - self.pos) / self.step)) + 1
        if count <= 0:
            self.buf = buf
            return np.zeros(0, np.float32)
        where = self.pos + np.arange(count) * self.step
        out = np.interp(where, np.arange(len(buf)), buf).astype(np.float32)
        nxt = self.pos + count * self.step
        drop = min(int(nxt), len(buf) - 1)
        self.buf, self.pos = buf[drop:], nxt - drop
        return out


class Endpointer:
    """Energy endpointer on 20 ms frames. The noise floor is a low percentile of the last 3 s of frame energies
    (an instant-fall floor would jump up to the level of short pauses inside speech); onset/hold hysteresis."""

    ONSET_DB = 15.0  # above the floor: a speech frame that can open a turn
    HOLD_DB = 10.0  # above the floor: still speech inside a turn
    MIN_DB = -60.0  # dBFS: never speech below this
    PEAK_DB = 20.0
    WEAK_DB = 6.0  # above the floor: maybe a soft word end ("-self", "them"); see LOCAL_TAIL_QUIET
    TAIL_GAP = 2  # frames: weak frames this close to the speech (or to each other) extend its soft tail
    HISTORY = 150  # frames (3 s) for the floor: a longer one lags behind a louder background
    # The background can rise within a session (another room, a fan, a new microphone): the percentile floor takes
    # seconds to follow, and meanwhile the new noise counts as speech, so the turn does not end. Steady sound
    # (STEADY frames within STEADY_DB of each other) far below the turn's loudest frame is taken as the new floor.
    BLIP = True  # a single loud frame inside a pause does not end the pause...
    BLIP_WAIT = 6  # ... but the turn does not end in the next frames (speech may go on: "four (k)queen")
    STEADY = 15  # frames (0.3 s)
    STEADY_DB = 6.0
    STEADY_BELOW_PEAK = 20.0

    def __init__(self):
        self.hist = np.full(self.HISTORY, np.nan)
        self.n = 0
        self.rest = np.zeros(0, np.float32)
        self.pos = 0  # samples consumed
        self.speech_frames = 0  # onset frames since reset
        self.silence = 0  # samples of silence since the last speech frame
        self.onset: int | None = None  # sample index of the first speech frame since reset
        self.last_speech = 0  # sample index just after the last speech frame
        self.last_loud = 0  # sample index just after the last frame at the onset level
        self.last_weak = 0  # sample index just after the last frame above the weak threshold
        self.tail_end = 0  # sample index just after the speech plus its soft tail (weak frames that follow it)
        self.peak = -200.0  # loudest frame since reset, dB over the floor
        self.peak_abs = -200.0  # loudest frame since reset, dBFS
        self.recent: list[float] = []  # the last STEADY frame energies
        self.blip = False  # the last frame was a lone loud frame after a pause
        self.last_blip = -RATE

    def reset(self) -> None:
        self.speech_frames, self.onset, self.peak, self.peak_abs = 0, None, -200.0, -200.0

    @property
    def in_turn(self) -> bool:
        # 100 ms of speech, and a peak 20 dB over the floor: breaths and room sound after a sentence are not a turn
        return self.speech_frames >= 5 and self.peak >= self.PEAK_DB

    def ended(self, seconds: float) -> bool:
        """At least `seconds` of silence after the speech, and no lone loud frame just now."""
        return self.silence >= seconds * RATE and self.pos - self.last_blip >= self.BLIP_WAIT * FRAME

    def process(self, x: np.ndarray) -> bool:
        """Consume samples; returns True if a speech frame was seen."""
        x = np.concatenate([self.rest, x]) if len(self.rest) else x
        n = len(x) // FRAME
        self.rest = x[n * FRAME:].copy()
        if n == 0:
            return False
        db = 10 * np.log10(np.mean(x[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1) + 1e-10)
        for v in db:
            self.hist[self.n % self.HISTORY] = v
            self.n += 1
        floor = max(float(np.nanpercentile(self.hist, 3)), -80.0)
        spoke = False
        for v in db:
            self.recent.append(float(v))
            del self.recent[:-self.STEADY]
            if self.in_turn and self.silence == 0 and len(self.recent) == self.STEADY:
                lo, hi = min(self.recent), max(self.recent)
                if hi - lo < self.STEADY_DB and hi < self.peak_abs - self.STEADY_BELOW_PEAK and lo > floor + self.HOLD_DB:
                    # the noise floor went up: this steady sound is the background, and speech ended before it
                    floor = lo
                    self.hist[:] = np.nan
                    self.hist[: self.STEADY] = self.recent
                    self.n = self.STEADY
                    self.silence = (self.STEADY - 1) * FRAME
                    self.last_speech = self.tail_end = self.last_loud = self.pos - (self.STEADY - 1) * FRAME
            onset = v > max(floor + self.ONSET_DB, self.MIN_DB)
            hold = self.in_turn and v > max(floor + self.HOLD_DB, self.MIN_DB)
            self.pos += FRAME
            if v > max(floor + self.WEAK_DB, self.MIN_DB):
                self.last_weak = self.pos
                if self.pos - FRAME - self.tail_end <= self.TAIL_GAP * FRAME:
                    self.tail_end = self.pos
            if onset:
                self.last_loud = self.pos
                self.speech_frames += 1
                self.peak = max(self.peak, v - floor)
                self.peak_abs = max(self.peak_abs, float(v))
                if self.onset is None:
                    self.onset = self.pos - FRAME
            if (onset or hold) and self.in_turn and self.silence > 0 and not self.blip and self.BLIP:
                # one loud frame in a pause (a click, a breath): speech only if the next one is loud too
                self.blip, self.last_blip = True, self.pos
                self.silence += FRAME
            elif onset or hold:
                self.blip = False
                self.silence, self.last_speech, spoke = 0, self.pos, True
                self.tail_end = self.pos
            else:
                self.blip = False
                self.silence += FRAME
                if not self.in_turn and self.silence >= 0.3 * RATE:
                    self.reset()  # a click or a breath, not the start of a turn
        return spoke


def _join(head: str, tail: str) -> str:
    return " ".join(filter(None, (head.strip(), tail.strip())))


def _norm_words(words: list[str]) -> list[str]:
    """Words compared as spoken: lower case, letters and digits only."""
    return ["".join(ch for ch in w.lower() if ch.isalnum()) for w in words]


def collapse_repeats(text: str) -> str:
    """tiny-en sometimes repeats a whole short line ("Seven of clubs, seven of clubs."): keep one copy when the
    text is a phrase of 2+ words said 2+ times back to back. Single-word repeats ("no, no") are left alone."""
    words = text.split()
    norm = _norm_words(words)
    n = len(norm)
    for size in range(2, n // 2 + 1):
        if n % size == 0 and norm == norm[:size] * (n // size):
            return " ".join(words[:size]).rstrip(",;") + ("." if text.rstrip()[-1:] == "." else "")
    return text


def ends_repeated(text: str) -> bool:
    """The text's last phrase (2+ words, between punctuation marks) is the one before it again."""
    phrases = [[w for w in _norm_words(part.split()) if w] for part in re.split(r"[.,;:!?]", text)]
    phrases = [p for p in phrases if p]
    return len(phrases) >= 2 and len(phrases[-1]) >= 2 and phrases[-1] == phrases[-2]


class _Session:
    """One client stream inside a worker; runs on its own thread."""

    def __init__(self, sid: int, rate: int, transcriber, send: Callable[[tuple], None], decoder: "_FinalDecoder"):
        from moonshine_voice.transcriber import MOONSHINE_FLAG_FORCE_UPDATE
        self.force_flag = MOONSHINE_FLAG_FORCE_UPDATE
        self.sid, self.tr, self.send, self.decoder = sid, transcriber, send, decoder
        self.gen = 0  # bumped whenever a speculative decode in flight becomes stale
        self.keep_gen = -1  # a stale decode of this generation still runs to its end (it may become a cut)
        self.turn_no = 0  # bumped when a turn ends
        self.interim_upto = 0  # audio (samples) the last interim covered
        self.inflight: int | None = None  # cutoff (total) of the speculative decode in flight
        self.redos = 0
        self.interim_cost = 0.0  # seconds the last interim re-decode took
        self.t_queued = 0.0
        self.t_decode = (0.0, 0.0)
        self.t_waited = 0.0
        self.resampler = Resampler(rate) if rate != RATE else None
        self.ep = Endpointer()
        self.vad = StreamVad(decoder.vad) if decoder.vad is not None else None
        self.total = 0  # 16 kHz samples received
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # absolute sample index of buf[0]
        self.floor = 0  # audio before this belongs to finished turns
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.aborted = False
        self.stream = None
        self.completed: set[int] = set()
        self.sent_update = False
        self.heard = False  # our endpointer saw speech since the last turn ended
        self.rng = np.random.default_rng(sid)
        self.context: tuple[int, int, tuple[int, ...]] | None = None  # previous turn: start, end of speech, ids
        self._new_stream()
        self.thread = threading.Thread(target=self._run, name=f"stt-{sid}", daemon=True)
        self.thread.start()

    # -- moonshine stream --
    def _new_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()  # no stop(): that would decode the line once more
        self.stream = self.tr.create_stream(update_interval=1e9)
        self.stream.add_listener(self._on_line)
        self.stream.start()
        self.base = self.total  # moonshine times are relative to this sample
        self.fed = 0
        self.last_update = 0
        self._new_turn()

    def _new_turn(self) -> None:
        """Forget the finished turn's lines and speculative decodes."""
        self.line_id = None
        self.line_text = ""
        self.line_start = None  # start of the turn's first moonshine line (seconds)
        self.cur_start = None
        self.prefix = ""  # text of moonshine lines that ended inside the open turn
        # speculative final: (text, total-at-decode, cut it was decoded from or None, the whole turn's ids or None)
        self.spec = None
        self.gen += 1
        self.turn_no += 1
        self.inflight = None
        self.redos = 0
        self.cuts: list[tuple[str, int]] = []  # (text, sample): the turn's audio up to sample decodes as text
        self.cut_ok: int | None = None  # cutoff of an overtaken decode, still running, that may become a cut
        self.checked = False  # a decode of this turn found words (the voice check need not run again)
        self.forced = False  # the turn's first interim decode ran

    def _on_line(self, ev) -> None:
        kind = type(ev).__name__
        line = getattr(ev, "line", None)
        if line is None:
            if kind == "Error":
                log.warning("moonshine listener error: %s", ev.error)
            return
        if line.line_id in self.completed:
            return  # moonshine re-reports completed lines; one final per line
        start = (self.base + line.start_time * RATE) / RATE
        end = start + line.duration
        if self.line_id != line.line_id:
            self.line_id, self.cur_start = line.line_id, start
        if self.heard and self.line_start is None:
            self.line_start = self.cur_start  # the turn's first line (lines before it were noise)
        if kind == "LineCompleted":
            self.completed.add(line.line_id)
            if not self.heard:
                return  # a line moonshine made up from noise or breath; never shown
            if TRACE:
                log.info(f"trace sid={self.sid} modelend silence={self.ep.silence / RATE:.3f} text={line.text!r}")
            # (by the line's own end: with onnx interims, the lines that ended earlier in the turn are reported
            # only once libmoonshine's updates resume at MODEL_END_SECONDS, all at once)
            if end - self._turn_start() / RATE >= MODEL_END_SECONDS:
                # a long turn that our endpointer does not end (noisy room, no pauses): moonshine's line end ends it
                self._final(" ".join(filter(None, (self.prefix, line.text.strip()))), self.line_start, end, "model",
                            restart=False)
            else:
                # moonshine's VAD split a line inside our turn (its lines end on short pauses, and its text was
                # decoded without a tail: "Eight of spades, eight of spades"). Our endpointer ends the turn and
                # decodes all of it; the line's text stays in the interims.
                self.prefix = " ".join(filter(None, (self.prefix, line.text.strip())))
        elif kind in ("LineStarted", "LineTextChanged") and line.text.strip() and self.heard:
            # only once our endpointer heard speech: tiny-en makes up words ("You") on steady noise
            self._send_update(" ".join(filter(None, (self.prefix, line.text.strip()))), self.total, end)

    def _send_update(self, text: str, upto: int, end: float | None = None) -> None:
        self.line_text = text
        self.sent_update = True
        self.interim_upto = upto
        start = self.line_start if self.line_start is not None else self._turn_start() / RATE
        end = upto / RATE if end is None else end
        if TRACE:
            log.info(f"trace sid={self.sid} update behind={self.total / RATE - end:.3f} "
                     f"qwait={time.monotonic() - self.t_queued:.3f} q={self.q.qsize()} cost={self.interim_cost:.3f} "
                     f"end={end:.2f} text={text[-40:]!r}")
        self.send(("ev", self.sid, "update", {"text": text, "start": start, "end": end}))

    def _turn_start(self) -> int:
        return self.ep.onset if self.ep.onset is not None else int((self.line_start or 0) * RATE)

    # -- audio --
    def _audio(self, pcm: bytes, queued: float = 0.0) -> None:
        self.t_queued = queued
        x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        if self.resampler is not None:
            x = self.resampler.process(x)
        if not len(x):
            return
        self.total += len(x)
        self.buf = np.concatenate([self.buf, x])
        _add_audio(self.tr, self.stream, x)
        if self.vad is not None:
            self.vad.process(x)
        self.fed += len(x)
        speech_end = self.ep.last_speech
        spoke = self.ep.process(x)
        self.heard = self.heard or self.ep.in_turn
        if spoke:
            self._drop_spec(self.total - len(x) - speech_end)
        if self._turn_open() and self._spec_due():
            self._speculate()  # first: an interim re-decode of a long line would hold this thread for ~0.3 s
        young = self.ep.in_turn and not self.line_text
        interval = FORCE_INTERVAL if young else self._interim_interval()
        # the turn's first interim decode as soon as it can run, not at the interval's phase (that came 0-0.24 s
        # later, by when the previous turn's commit happened to fall)
        due = self.fed - self.last_update >= interval * RATE or (young and not self.forced)
        if due and not self._waiting_for_voice() and not self._quiet(young):
            self.forced = self.forced or young
            self.last_update = self.fed
            t = time.monotonic()
            if self._onnx_interims():
                self._onnx_interim()
            else:
                self.stream.update_transcription(self.force_flag if young else 0)
            self.interim_cost = time.monotonic() - t
            if TRACE:
                self.decoder.interims += self.interim_cost
        if self._turn_open():
            self._maybe_commit()
        self._trim()

    def _onnx_mode(self) -> bool:
        return ONNX_INTERIMS and self.decoder.onnx is not None and self.vad is not None

    def _long_turn(self) -> bool:
        return self.total - self._turn_start() >= MODEL_END_SECONDS * RATE

    def _voiced(self) -> bool:
        """The stream's voice detector heard speech in the open turn."""
        if self.vad is None or self.ep.onset is None:
            return False
        # from the endpointer's onset, not the look-behind: the previous turn's last word may still be in that
        return self.vad.voiced_since(self.ep.onset - VAD_CHUNK + 1) >= VOICE_CHUNKS

    def _waiting_for_voice(self) -> bool:
        """No interim yet: the turn is open, but its voice detector has not heard speech (for VOICE_WAIT at most)."""
        return (self._onnx_mode() and self._turn_open() and not self._voiced()
                and self.total - self._turn_start() < VOICE_WAIT * RATE)

    def _onnx_interims(self) -> bool:
        """Only in an open turn with voice in it (tiny-en makes up "You" on noise and breaths)."""
        return self._onnx_mode() and self._turn_open() and not self._long_turn() and self._voiced()

    def _onnx_interim(self) -> None:
        """The turn so far (from its latest cut, if any), decoded on this thread with the last interim as draft."""
        base, start = self._cut_for(self.total)
        upto = self.total
        onnx = self.decoder.onnx
        ids = onnx.decode_ids(self._region_audio(start), (), None, onnx.tokenize(self._draft(base)))
        text = _join(base, onnx.text(ids or ()))
        if text and not ends_repeated(text):  # tiny-en repeats a phrase at a cut-off word end: keep the last one
            self._send_update(text, upto)

    # -- speculative final decodes (on the worker's final-decoder thread) --
    def _drop_spec(self, pause: int) -> None:
        """Speech went on (after `pause` samples of silence, at least)."""
        between_words = CUT_PAUSE > 0 and pause >= CUT_PAUSE * RATE
        if self.spec is not None and between_words:
            self._add_cut(*self.spec[:3])  # its text covers the turn up to a point inside this pause
        if self.inflight is not None:
            self.cut_ok = self.inflight if between_words else None
            if (between_words and self._long_head(self.inflight)) or not STOP_OVERTAKEN:
                self.keep_gen = self.gen  # its text may become a cut (_add_cut): let it finish
        if self.spec is not None or self.inflight is not None:
            self.spec, self.inflight = None, None
            self.gen += 1
        self.redos = 0

    def _spec_due(self) -> bool:
        """Silence after the speech, and its soft tail (if any) has ended too."""
        return (self.ep.silence >= SPEC_SILENCE * RATE
                and self.total - self.ep.tail_end >= min(SPEC_SILENCE, TAIL_QUIET) * RATE)

    def _spec_stale(self) -> bool:
        """Soft sound arrived after the audio the speculative decode saw."""
        return self.spec is not None and self.ep.tail_end > self.spec[1]

    def _speculate(self) -> None:
        if self.inflight is not None:
            return  # one in flight per stream; its completion re-checks
        if self.spec is not None and not (self._spec_stale() and self.redos < SPEC_REDOS):
            return
        if self.spec is not None:
            self.redos += 1
        self.inflight = self.total
        base, start, job = self._job()
        self.decoder.submit(self, (self.gen, self.turn_no, base, start), job, self.total)

    def _job(self) -> tuple[str, int | None, tuple]:
        """What to decode now: the text before the cut the decode starts at, that cut, and the decoder's job."""
        base, start = self._cut_for(self.total)
        ctx = self._context() if start is None else None
        audio_from, prefix = (start, ()) if ctx is None else (ctx[0], ctx[2])
        own = 0 if ctx is None else self._region_start() - ctx[0]
        draft = self._draft(base)
        # a turn the stream's voice detector is sure of needs no check by libmoonshine's decode (whose VAD state
        # comes from the other streams: it could return nothing and wipe the interims the turn showed)
        checked = self.checked or (self._onnx_mode() and self._voiced())
        return base, start, (self._region_audio(audio_from), self._has_words(), checked, prefix, own, draft)

    def _draft(self, base: str) -> str:
        """The interim's words after `base` (the text of the cut a decode starts at), as the decoder's draft
        (webapp/onnxdecoder.py: fewer decoder passes)."""
        return " ".join(self.line_text.split()[len(base.split()):])

    def _context(self) -> tuple[int, int, tuple[int, ...]] | None:
        """The previous turn, if this one follows it closely enough to be decoded with it."""
        ctx = self.context
        if ctx is None or self.ep.onset is None or self.ep.onset - ctx[1] > CONTEXT_PAUSE * RATE:
            return None
        if ctx[0] < self.buf_start or self.total - ctx[0] > CONTEXT_MAX_SECONDS * RATE:
            return None  # tiny-en decodes up to ~30 s; longer decodes also cost more than they bring
        return ctx

    def _has_words(self) -> bool:
        """A voice detector heard speech in the open turn: the stream's own (webapp/vad.py), or moonshine's (its
        interims showed text)."""
        return self._voiced() if self._onnx_mode() else bool(self.line_text.strip())

    def _spec_done(self, tag: tuple, text: str, ids: tuple[int, ...] | None, cutoff: int, seconds: float,
                   length: float, waited: float) -> None:
        gen, turn_no, base, start = tag
        if not self._turn_open() or turn_no != self.turn_no:
            return  # the turn ended while it was decoding
        self.checked = self.checked or bool(text.strip())
        text = _join(base, text)
        if gen != self.gen:
            if cutoff == self.cut_ok:
                self._add_cut(text, cutoff, start)
            # speech went on while it was decoding: not the final, but a good interim (the line so far, decoded
            # with a tail), which saves the next interim re-decode
            if text.strip() and cutoff > self.interim_upto:
                self._send_update(text.strip(), cutoff)
                self.last_update = self.fed
            return
        self.inflight = None
        self.spec = (text, cutoff, start, ids if start is None else None)  # a cut's ids are not the whole turn's
        self.t_decode = (seconds, length)
        self.t_waited = waited
        if self._spec_due():
            self._speculate()  # the soft tail went on meanwhile: once more
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if not self.ep.ended(END_SILENCE) or self.spec is None or self.inflight is not None:
            return
        if self._spec_stale() and self.redos < SPEC_REDOS:
            return  # a re-decode will come
        if TRACE:
            now = time.monotonic()
            log.info(f"trace sid={self.sid} commit silence={self.ep.silence / RATE:.3f} "
                     f"since_speech={(self.total - self.ep.last_speech) / RATE:.3f} "
                     f"weak_gap={(self.total - self.ep.last_weak) / RATE:.3f} "
                     f"qwait={now - self.t_queued:.3f} decode={self.t_decode[0]:.3f} len={self.t_decode[1]:.2f} "
                     f"spec_age={(self.total - self.spec[1]) / RATE:.3f} q={self.q.qsize()} fwait={self.t_waited:.3f} "
                     f"redos={self.redos} pending={self.decoder.pending} "
                     f"dec_spent={self.decoder.spent:.2f} dec_stale={self.decoder.stale:.2f} "
                     f"interims={self.decoder.interims:.2f}")
        self._commit(self.spec[0], "model", self.spec[3], upto=self.spec[1])

    def _quiet(self, young: bool) -> bool:
        """No interim re-decode now: a final is due (ours or, in this worker, another stream's), or we are behind."""
        if self._turn_open() and (self.ep.silence >= QUIET_SILENCE * RATE or self.inflight is not None):
            return True
        if young or self.fed - self.last_update >= MAX_INTERIM_GAP * RATE:
            return False  # other streams' finals must not starve our interims
        return self.decoder.pending > 0 or self.q.qsize() >= 2

    def _interim_interval(self) -> float:
        """Re-decoding a long line costs more: keep the interims' share of the worker bounded under load."""
        return max(UPDATE_INTERVAL, self.interim_cost * (INTERIM_SHARE + self.decoder.sessions))

    def _turn_open(self) -> bool:
        return self.heard

    def _trim(self) -> None:
        """Keep only the audio a final decode may need."""
        keep_from = self.total - int(LOOK_BEHIND * RATE)
        if self._turn_open():
            keep_from = min(keep_from, self._region_start())
            keep_from = max(keep_from, self.total - int(MAX_LINE_SECONDS * RATE))
        ctx = self.context
        if ctx is not None:
            heard_at = self.total if self.ep.onset is None else self.ep.onset
            if heard_at - ctx[1] > CONTEXT_PAUSE * RATE:
                self.context = None  # the pause went on too long: the next turn is decoded alone
            else:
                keep_from = min(keep_from, ctx[0])
        keep_from = max(keep_from, self.buf_start)
        if keep_from > self.buf_start:
            self.buf = self.buf[keep_from - self.buf_start:]
            self.buf_start = keep_from

    def _region_start(self) -> int:
        starts = [s for s in (self.ep.onset, None if self.line_start is None else int(self.line_start * RATE)) if s is not None]
        start = (min(starts) if starts else self.total) - int(LOOK_BEHIND * RATE)
        return max(start, self.floor, self.buf_start)

    def _long_head(self, at: int, start: int | None = None) -> bool:
        """A decode up to `at` (from the cut `start`, or the turn's start) covers enough to be a cut."""
        return at - (self._region_start() if start is None else start) >= CUT_MIN_SECONDS * RATE

    def _add_cut(self, text: str, at: int, start: int | None) -> None:
        """Keep a decoded head of the turn if its own part (from the cut it started at) is long enough."""
        if ends_repeated(text):
            return  # tiny-en said its last phrase twice ("a season of light. It was a season of light."): not a base
        if (not self.cuts or at > self.cuts[-1][1]) and self._long_head(at, start):
            self.cuts.append((text, at))

    def _cut_for(self, end: int) -> tuple[str, int | None]:
        """The latest cut that leaves at least CUT_MIN_SECONDS to decode: (its text, its sample), or ("", None)."""
        if end - self._region_start() < CUT_FROM_SECONDS * RATE:
            return "", None
        for text, at in reversed(self.cuts):
            if end - at >= CUT_MIN_SECONDS * RATE:
                return text, at
        return "", None

    def _region_audio(self, start: int | None = None) -> np.ndarray:
        """The current line (from `start`, a cut, if given), with a synthetic noise tail."""
        start = self._region_start() if start is None else max(start, self.buf_start)
        a = self.buf[start - self.buf_start:]
        pad = (self.rng.normal(0.0, 20.0, int(PAD_SECONDS * RATE)) / 32768.0).astype(np.float32)
        return np.ascontiguousarray(np.concatenate([a, pad]), dtype=np.float32)

    def _decode(self) -> tuple[str, tuple[int, ...] | None]:
        """Decode the open turn now, on this thread: (text, ids if the whole turn went through the onnx decoder)."""
        t = time.monotonic()
        base, start, job = self._job()
        text, ids = self.decoder.decode(*job)
        self.t_decode = (time.monotonic() - t, len(job[0]) / RATE)
        return _join(base, text), ids if start is None else None

    def _commit(self, text: str, trigger: str, ids: tuple[int, ...] | None = None, upto: int | None = None) -> None:
        """End the turn with this text, decoded from its audio up to sample `upto` (default: all so far); `ids`,
        the whole turn's tokens, make it the next turn's left context."""
        region = self._region_start()
        start = self.line_start if self.line_start is not None else (region + int(LOOK_BEHIND * RATE)) / RATE
        end = max(self.ep.last_speech, int(start * RATE)) / RATE
        speech_end = self.ep.last_speech
        self._final(text, start, end, trigger, restart=True, upto=upto)
        if ids and CONTEXT_SECONDS > 0 and speech_end - region <= CONTEXT_SECONDS * RATE:
            self.context = (region, speech_end, ids)

    def _final(self, text: str, start: float, end: float, trigger: str, restart: bool, upto: int | None = None
               ) -> None:
        text = collapse_repeats(text.strip())
        if text or self.sent_update:  # an empty final still commits the interim text the client has
            self.sent_update = False
            self.send(("ev", self.sid, "final", {"text": text, "start": start, "end": end, "trigger": trigger}))
        # The next turn's look-behind may reach back to the end of the audio this final was decoded from, not just
        # to now: a late commit (a slow decode) must not cut the soft start of a word said right after it. (It did:
        # "We had everything" lost its "We" in the next turn's context, and that turn came out "We all go and direct".)
        self.floor = self.total if upto is None else upto
        self.heard = False
        self.context = None
        self.ep.reset()
        if restart:
            self._new_stream()
        else:
            self._new_turn()

    def _finalize(self, trigger: str) -> bool:
        if not self._turn_open():
            return False
        spec = self.spec
        if spec is not None and spec[1] == self.total:
            text, ids = spec[0], spec[3]
        else:
            text, ids = self._decode()
        had_text = bool(text.strip())
        self._commit(text, trigger, ids)
        return had_text

    def _run(self) -> None:
        if STREAM_NICE:
            # Linux: a thread id takes a nice value of its own. The streams' threads (interims) yield the core to
            # the worker's final-decoder thread, whose decodes the speakers are waiting for.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), STREAM_NICE)
            except OSError as exc:  # a host that refuses it: same priority as the final decodes, still correct
                log.warning("could not set the stream thread's nice value: %s", exc)
        while True:
            item = self.q.get()
            op = item[0]
            try:
                if self.aborted and op != "abort":
                    continue
                if op == "audio":
                    self._audio(item[1], item[2])
                elif op == "spec":
                    self._spec_done(*item[1:])
                elif op == "error":
                    raise item[1]
                elif op == "finalize":
                    ended = self._finalize("manual")
                    self.send(("done", self.sid, item[1], ended))
                elif op in ("close", "abort"):
                    if op == "close":
                        if self.resampler is not None:  # flush the resampler's last samples
                            self._audio(b"\0\0" * 64)
                        self._finalize("close")
                    self.stream.close()
                    self.send(("closed", self.sid))
                    return
            except Exception as exc:  # one broken stream must not take the worker down
                log.exception("stream %s failed", self.sid)
                self.send(("ev", self.sid, "error", {"message": f"recognizer failure: {exc}"}))
                try:
                    self.stream.close()
                finally:
                    self.send(("closed", self.sid))
                return


def decode_once(tr, audio: np.ndarray, force_flag: int) -> str:
    """Decode one buffer to text; thread-safe on a shared Transcriber."""
    # A scratch stream, not transcribe_without_streaming: that returns a buffer owned by the Transcriber,
    # which another stream's thread overwrites (garbage text seen with 2 streams per worker).
    scratch = tr.create_stream(update_interval=1e9)
    try:
        scratch.start()
        _add_audio(tr, scratch, audio)
        transcript = scratch.update_transcription(force_flag)  # stop() alone would return empty lines
    finally:
        scratch.close()
    lines = transcript.lines if transcript is not None else []
    return " ".join(line.text.strip() for line in lines if line.text.strip())


def _add_audio(tr, stream, x: np.ndarray) -> None:
    err = tr._lib.moonshine_transcribe_add_audio_to_stream(
        tr._handle, stream._handle, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(x), RATE, 0)
    if err < 0:
        from moonshine_voice.errors import check_error
        check_error(err)


class _FinalDecoder:
    """One thread per worker that runs the streams' speculative final decodes, first come first served. While
    one is queued or running, the worker's streams skip their interim re-decodes, so finals do not wait behind
    them. Results go back through each stream's own queue (its thread owns all of its state)."""

    def __init__(self, tr, force_flag: int, onnx=None, vad=None):
        self.tr, self.force_flag, self.onnx, self.vad = tr, force_flag, onnx, vad  # vad: the Silero session
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0  # queued + running
        self.sessions = 0  # streams open in this worker
        self.spent = self.stale = self.interims = 0.0  # LOCAL_TRACE only (interims: the streams' re-decodes)
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="stt-final", daemon=True).start()

    def submit(self, session: "_Session", gen: tuple, job: tuple, cutoff: int) -> None:
        with self.lock:
            self.pending += 1
        self.q.put((session, gen, job, cutoff, time.monotonic()))

    def decode(self, audio: np.ndarray, words: bool, checked: bool, prefix: tuple[int, ...] = (), own: int = 0,
               draft: str = "", stop: Callable[[], bool] | None = None) -> tuple[str | None, tuple[int, ...] | None]:
        """Text and (from the onnx decoder) token ids of audio[own:], the turn, with its tail; audio[:own] is the
        previous turn (and the pause after it), already decoded as `prefix`.

        libmoonshine's decode has a voice detector: it finds no speech in a breath or a click, where tiny-en
        makes up "You" or "Mm-h". So a turn goes to the onnx decoder only once that decode found words in it
        (once per turn: `checked`), or, if it is longer than VERIFY_SECONDS, once it has shown words (interims).
        `draft`: what the interims said the turn is (the onnx decoder checks it instead of stepping token by token).
        Text None: `stop()` turned true during the onnx decode."""
        if self.onnx is None:
            return decode_once(self.tr, audio[own:], self.force_flag), None
        short = len(audio) - own <= (VERIFY_SECONDS + PAD_SECONDS) * RATE
        if not checked and (short or not words):
            text = decode_once(self.tr, audio[own:], self.force_flag)
            if not text:
                return text, None
        found = self.onnx.decode_ids(audio, prefix, stop, self.onnx.tokenize(draft))
        if found is None:
            return None, None
        ids = tuple(found)
        return self.onnx.text(ids), ids

    def _run(self) -> None:
        while True:
            session, gen, job, cutoff, queued = self.q.get()
            t = time.monotonic()
            try:
                g = gen[0]
                if session.aborted or g != session.gen:
                    text = None  # stale already: skip the work
                else:
                    # speech overtook it (and it cannot become a cut): stop between decoder steps
                    stale = lambda: session.aborted or (session.gen != g and session.keep_gen != g)  # noqa: E731
                    text, ids = self.decode(*job, stop=stale)
                    if TRACE:  # decoder seconds, and those spent on decodes that speech overtook meanwhile
                        spent = time.monotonic() - t
                        self.spent += spent
                        if gen[0] != session.gen:
                            self.stale += spent
            except Exception as exc:
                log.exception("final decode failed")
                text = None
                session.q.put(("error", exc))
            finally:
                with self.lock:
                    self.pending -= 1
            if text is not None:
                session.q.put(("spec", gen, text, ids, cutoff, time.monotonic() - t, len(job[0]) / RATE, t - queued))


def _load_transcriber():
    os.environ["MOONSHINE_ORT_SINGLE_THREAD"] = "1"  # must be set before the Transcriber exists (§8.4)
    from moonshine_voice import ModelArch, get_model_path
    from moonshine_voice.transcriber import Transcriber
    path = get_model_path("tiny-en")  # inside the wheel; never get_model_for_language (it downloads)
    tr = Transcriber(model_path=str(path), model_arch=ModelArch.TINY)  # default arch is BASE: wrong for tiny-en
    # GIL: libmoonshine is loaded with ctypes.CDLL (not PyDLL), and ctypes releases the GIL around CDLL calls,
    # so decoding on one stream's thread does not stall the others in the same process.
    assert isinstance(tr._lib, ctypes.CDLL) and not isinstance(tr._lib, ctypes.PyDLL)
    return tr


def _worker_main(fd: int) -> None:
    logging.basicConfig(level="INFO" if TRACE else os.environ.get("RECOGNIZER_LOG_LEVEL", "WARNING"),
                        format="recognizer-worker %(process)d %(levelname)s %(message)s")
    conn = Connection(fd)
    lock = threading.Lock()

    def send(msg: tuple) -> None:
        with lock:
            conn.send(msg)

    t0 = time.monotonic()
    tr = _load_transcriber()
    # warm-up: the first decode is slower (allocations); do it now, not in the first session
    # (twice at once: finals are decoded on their own thread beside the streams' interim re-decodes)
    from moonshine_voice.transcriber import MOONSHINE_FLAG_FORCE_UPDATE
    x = (np.random.default_rng(0).normal(0, 300, RATE) / 32768.0).astype(np.float32)
    other = threading.Thread(target=decode_once, args=(tr, x, MOONSHINE_FLAG_FORCE_UPDATE))
    other.start()
    warm = tr.create_stream(update_interval=1e9)
    warm.start()
    warm.add_audio(x.tolist(), RATE)
    warm.stop()
    warm.close()
    other.join()
    onnx = None
    if BEAMS > 0:
        from moonshine_voice import get_model_path
        onnx = OnnxDecoder(Path(get_model_path("tiny-en")), BEAMS)
        onnx.decode(x)  # warm-up
    vad = None
    if onnx is not None and ONNX_INTERIMS:
        try:
            vad = load_session(tr._lib)
            StreamVad(vad).process(x[:2048])  # warm-up, and a check of the model's inputs
        except Exception:  # another libmoonshine build: libmoonshine's interims, as with LOCAL_ONNX_INTERIMS=0
            log.exception("no voice detector per stream; interims come from moonshine's streaming lines")
            vad = None
    send(("ready", {"pid": os.getpid(), "load_seconds": time.monotonic() - t0}))
    decoder = _FinalDecoder(tr, MOONSHINE_FLAG_FORCE_UPDATE, onnx, vad)
    sessions: dict[int, _Session] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        op = msg[0]
        if op == "quit":
            break
        sid = msg[1]
        if op == "open":
            sessions[sid] = _Session(sid, msg[2], tr, send, decoder)
            decoder.sessions = len(sessions)
            continue
        s = sessions.get(sid)
        if s is None:
            continue
        if op == "audio":
            s.q.put(("audio", msg[2], time.monotonic()))
        elif op == "finalize":
            s.q.put(("finalize", msg[2]))
        elif op == "close":
            s.q.put(("close",))
            sessions.pop(sid, None)
            decoder.sessions = len(sessions)
        elif op == "abort":
            s.aborted = True
            s.q.put(("abort",))
            sessions.pop(sid, None)
            decoder.sessions = len(sessions)
    for s in sessions.values():
        s.aborted = True
        s.q.put(("abort",))
    os._exit(0)  # skip interpreter teardown (ORT threads); nothing to flush


# ================================================================================================
# Web process side
# ================================================================================================

class _Worker:
    """One worker process, talked to over a socketpair; a reader thread and a writer thread."""

    def __init__(self, pool: "Pool", index: int):
        self.pool, self.index = pool, index
        self.streams: dict[int, RecognizerStream] = {}
        self.ready = threading.Event()
        self.dead = False
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        parent, child = socket.socketpair()
        env = dict(os.environ, MOONSHINE_ORT_SINGLE_THREAD="1")
        env.setdefault("MALLOC_ARENA_MAX", "2")  # per-thread malloc arenas: 628 MB instead of 559 MB at 6 streams
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "webapp.recognizer", str(child.fileno())],
                                     pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, cwd=root)
        child.close()
        self.conn = Connection(parent.detach())
        threading.Thread(target=self._read, name=f"stt-read-{index}", daemon=True).start()
        threading.Thread(target=self._write, name=f"stt-write-{index}", daemon=True).start()

    def send(self, msg: tuple) -> None:
        if not self.dead:
            self.out.put(msg)

    def _write(self) -> None:
        while True:
            msg = self.out.get()
            if msg is None:
                return
            try:
                self.conn.send(msg)
            except OSError:
                return

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            op = msg[0]
            if op == "ready":
                log.info("recognizer worker %d ready (pid %s, %.1f s)", self.index, msg[1]["pid"], msg[1]["load_seconds"])
                self.ready.set()
                continue
            stream = self.streams.get(msg[1])
            if stream is not None:
                stream._deliver(msg)
        self.dead = True
        self.ready.set()
        self.out.put(None)
        if not self.pool.closing:
            log.error("recognizer worker %d exited (code %s)", self.index, self.proc.poll())
        for stream in list(self.streams.values()):
            stream._deliver(("ev", stream.sid, "error", {"message": "the recognizer process stopped"}))
            stream._deliver(("closed", stream.sid))

    def stop(self, timeout: float = 5.0) -> None:
        self.out.put(("quit",))
        self.out.put(None)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        try:
            self.conn.close()
        except OSError:
            pass


class RecognizerStream:
    def __init__(self, pool: "Pool", worker: _Worker, sid: int, rate: int, on_event, loop: asyncio.AbstractEventLoop):
        self.pool, self.worker, self.sid, self.on_event, self.loop = pool, worker, sid, on_event, loop
        self._tokens = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._closed_fut: asyncio.Future = loop.create_future()
        self._released = False
        worker.streams[sid] = self
        worker.send(("open", sid, rate))

    # called from the worker's reader thread
    def _deliver(self, msg: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self._handle, msg)
        except RuntimeError:  # loop closed
            self._release()

    def _handle(self, msg: tuple) -> None:
        op = msg[0]
        if op == "ev":
            if not self._closed_fut.done():
                try:
                    self.on_event(msg[2], msg[3])
                except Exception:
                    log.exception("recognizer event handler failed")
        elif op == "done":
            fut = self._pending.pop(msg[2], None)
            if fut is not None and not fut.done():
                fut.set_result(bool(msg[3]))
        elif op == "closed":
            self._release()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result(False)
            self._pending.clear()
            if not self._closed_fut.done():
                self._closed_fut.set_result(None)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.streams.pop(self.sid, None)
            self.pool._release(self)

    @property
    def closed(self) -> bool:
        return self._closed_fut.done() or self._released

    def feed(self, pcm: bytes) -> None:
        if pcm and not self._released:
            self.worker.send(("audio", self.sid, bytes(pcm)))

    async def finalize(self, timeout: float = 10.0) -> bool:
        """End the open turn now (its final arrives through on_event first). False if no turn was open."""
        if self._released:
            return False
        token = next(self._tokens)
        fut = self.loop.create_future()
        self._pending[token] = fut
        self.worker.send(("finalize", self.sid, token))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            log.warning("recognizer finalize timed out")
            return False

    async def close(self, timeout: float = 15.0) -> None:
        """Finalize, flush and deliver the remaining events, then free the slot."""
        if not self._released:
            self.worker.send(("close", self.sid))
        try:
            await asyncio.wait_for(asyncio.shield(self._closed_fut), timeout)
        except asyncio.TimeoutError:
            log.warning("recognizer close timed out; aborting the stream")
            self.abort()

    def abort(self) -> None:
        if not self._released:
            self.worker.send(("abort", self.sid))
            self._release()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)


class Pool:
    def __init__(self, max_streams: int = 0, workers: int = 0):
        self.max_streams = max_streams or default_max_streams()
        self.n_workers = workers or _cores()
        self.closing = False
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._active: set[RecognizerStream] = set()
        self.workers = [_Worker(self, i) for i in range(self.n_workers)]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if not w.ready.wait(max(0.0, deadline - time.monotonic())) or w.dead:
                raise RuntimeError(f"recognizer worker {w.index} failed to start (exit code {w.proc.poll()})")

    @property
    def in_use(self) -> int:
        return len(self._active)

    def open_stream(self, on_event: Callable[[str, dict[str, Any]], None], sample_rate: int = RATE) -> RecognizerStream:
        """Must be called on the event loop that will receive on_event. Raises CapacityError when full."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.closing:
                raise RuntimeError("the recognizer pool is shut down")
            if len(self._active) >= self.max_streams:
                raise CapacityError(self.max_streams)
            self._revive_locked()
            worker = min((w for w in self.workers if not w.dead), key=lambda w: len(w.streams))
            stream = RecognizerStream(self, worker, next(self._ids), sample_rate, on_event, loop)
            self._active.add(stream)
        return stream

    def revive(self) -> None:
        """Replace the workers that died (killed, crashed): the next sessions get captions again."""
        with self._lock:
            self._revive_locked()

    def _revive_locked(self) -> None:
        for i, w in enumerate(self.workers):
            if (w.dead or w.proc.poll() is not None) and not self.closing:
                log.warning("restarting recognizer worker %d (exit code %s)", i, w.proc.poll())
                w.dead = True  # its reader thread may not have seen the end yet: send nothing more to it
                self.workers[i] = _Worker(self, i)

    def _release(self, stream: RecognizerStream) -> None:
        with self._lock:
            self._active.discard(stream)

    def shutdown(self) -> None:
        self.closing = True
        for w in self.workers:
            w.stop()


_pool: Pool | None = None
_pool_lock = threading.Lock()


async def get_pool(settings=None) -> Pool:
    """The process-wide pool, started (and warmed: the model is loaded and run once) on first use."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.closing:
            max_streams = getattr(settings, "local_max_streams", 0) or 0
            _pool = Pool(max_streams)
        pool = _pool
    pool.revive()  # a worker that died since (killed, crashed) is replaced, or every session would fail
    await asyncio.get_running_loop().run_in_executor(None, pool.wait_ready)
    return pool


def shutdown() -> None:
    """Stop the worker processes (blocking, a few ms; at most ~5 s if a worker hangs)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]))
