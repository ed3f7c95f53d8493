"""One client stream inside a worker process, on its own thread: it feeds the audio to moonshine's streaming
recognizer and to its TurnPlanner, and acts on the planner's rules (interims, speculative finals, commits).

Everything that touches the stream's state runs on this thread; decodes on the worker's final-decoder thread come
back through the stream's queue.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from . import moonshine
from .planner import (
    FORCE_INTERVAL,
    LOOK_BEHIND,
    MAX_INTERIM_GAP,
    MODEL_END_FALLBACK,
    MODEL_END_SECONDS,
    UPDATE_INTERVAL,
    Done,
    Spec,
    Tag,
    TurnPlanner,
    collapse_repeats,
    continued_stops,
    drop_repeat,
    ends_repeated,
    join,
)
from .signal import RATE, Resampler
from .vad import StreamVad
from .wordtimes import estimate, quiet_gaps, speech_segments, without

if TYPE_CHECKING:
    from moonshine_voice.transcriber import Stream as MoonshineStream

log = logging.getLogger(__name__)

STALE_LINE = 1.0  # seconds: a moonshine line that ended this long before the last interim's audio is not news


def lower_thread_priority(step: int) -> None:
    """Linux: a thread id takes a nice value of its own. The streams' threads (interims) yield the core to the
    worker's final-decoder thread, whose decodes the speakers are waiting for: `step` above the thread's nice now,
    not an absolute value (under a niced service, `Nice=5`, an absolute 5 would yield nothing)."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except OSError as exc:  # a host that refuses it: same priority as the final decodes, still correct
        log.warning("could not set the stream thread's nice value: %s", exc)


class Stream:
    nice_thread = True  # the live streams' threads yield to the final decodes (_run)

    def __init__(self, sid: int, rate: int, transcriber, send: Callable[[tuple], None], decoder):
        self.sid, self.tr, self.send, self.decoder = sid, transcriber, send, decoder
        self.t = decoder.tuning
        self.force_flag = moonshine.force_flag()
        self.p = TurnPlanner(
            self.t, StreamVad(decoder.vad) if decoder.vad is not None else None, onnx=decoder.onnx is not None, seed=sid
        )
        self.resampler = Resampler(rate) if rate != RATE else None
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.aborted = False
        self.completed: set[int] = set()  # moonshine's line ids that ended
        self.sent_update = False  # the client has an interim of the open turn
        self.interim_upto = 0  # audio (samples) the last interim covered
        self.interim_cost = 0.0  # seconds the last interim re-decode took
        self.t_queued = 0.0  # trace: when the audio being handled was queued
        self.t_decode = (0.0, 0.0)  # trace: the final's decode seconds and audio seconds
        self.t_waited = 0.0  # trace: how long the final's decode was queued
        self._open_stream()
        self.thread = threading.Thread(target=self._run, name=f"stt-{sid}", daemon=True)
        self.thread.start()

    # -- moonshine stream --
    def _new_stream(self) -> None:
        self.stream.close()  # no stop(): that would decode the line once more
        self._open_stream()

    def _open_stream(self) -> None:
        self.stream: MoonshineStream = self.tr.create_stream(update_interval=1e9)
        self.stream.add_listener(self._on_line)
        self.stream.start()
        self.base = self.p.total  # moonshine times are relative to this sample
        self.fed = 0
        self.last_update = 0
        self._new_turn()

    def _new_turn(self) -> None:
        self.p.new_turn()
        self.line_id = None
        self.cur_start = None
        self.prefix = ""  # text of moonshine lines that ended inside the open turn
        self.forced = False  # the turn's first interim decode ran

    def _on_line(self, ev) -> None:
        p = self.p
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
        if p.heard and p.line_start is None:
            p.line_start = self.cur_start  # the turn's first line (lines before it were noise)
        if kind == "LineCompleted":
            self.completed.add(line.line_id)
            if not p.heard:
                return  # a line moonshine made up from noise or breath; never shown
            if self.t.trace:
                log.info(f"trace sid={self.sid} modelend silence={p.ep.silence / RATE:.3f} text={line.text!r}")
            # (by the line's own end: with onnx interims, the lines that ended earlier in the turn are reported
            # only once libmoonshine's updates resume at MODEL_END_SECONDS, all at once)
            # With onnx interims, a long turn ends at a cut (_cut_final) as soon as its decode is back; moonshine's
            # line ends are only seen at its next update (seconds late under load), so they end a turn only when
            # no cut came (MODEL_END_FALLBACK: the buffer still holds the whole turn).
            longest = MODEL_END_FALLBACK if p.onnx_mode else MODEL_END_SECONDS
            if end - p.turn_start() / RATE >= longest:
                assert p.line_start is not None  # set above: the turn has heard speech and this line has a start
                # a long turn that our endpointer does not end (noisy room, no pauses): moonshine's line end ends it
                # (cut where the line ended, not now: the words said since are the next turn's)
                upto = min(p.total, round(end * RATE))
                self._final(
                    join(self.prefix, line.text), p.line_start, end, "model", restart=False, upto=upto, carry=True
                )
            else:
                # moonshine's VAD split a line inside our turn (its lines end on short pauses, and its text was
                # decoded without a tail: "Eight of spades, eight of spades"). Our endpointer ends the turn and
                # decodes all of it; the line's text stays in the interims.
                self.prefix = join(self.prefix, line.text)
        elif kind in ("LineStarted", "LineTextChanged") and line.text.strip() and p.heard:
            # only once our endpointer heard speech: tiny-en makes up words ("You") on steady noise
            if self.t.long_interims and self.sent_update and end < self.interim_upto / RATE - STALE_LINE:
                return  # an earlier line reported late (onnx interims showed more of the turn already)
            self._send_update(join(self.prefix, line.text), p.total, end, "line")

    def _send_update(self, text: str, upto: int, end: float | None = None, source: str = "onnx") -> None:
        """An interim; `source` (for bench/recognizer.py): onnx, cut (onnx from a cut), spec (an overtaken
        speculative final) or line (libmoonshine's)."""
        p = self.p
        p.line_text = text
        self.sent_update = True
        self.interim_upto = upto
        start = p.line_start if p.line_start is not None else p.turn_start() / RATE
        end = upto / RATE if end is None else end
        if self.t.trace:
            log.info(
                f"trace sid={self.sid} update behind={p.total / RATE - end:.3f} "
                f"qwait={time.monotonic() - self.t_queued:.3f} q={self.q.qsize()} cost={self.interim_cost:.3f} "
                f"end={end:.2f} text={text[-40:]!r}"
            )
        self.send(
            ("ev", self.sid, "update", {"text": continued_stops(text), "start": start, "end": end, "source": source})
        )

    # -- audio --
    def _audio(self, pcm: bytes, queued: float = 0.0) -> None:
        p = self.p
        self.t_queued = queued
        x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        if self.resampler is not None:
            x = self.resampler.process(x)
        if not len(x):
            return
        p.append(x)  # first: moonshine's listener (_on_line) reads the planner's totals
        moonshine.add_audio(self.tr, self.stream, x)
        self.fed += len(x)
        p.listen(x)
        self._cut_final()
        if p.wants_spec():
            self._speculate()  # first: an interim re-decode of a long line would hold this thread for ~0.3 s
        young = p.ep.in_turn and not p.line_text
        interval = FORCE_INTERVAL if young else self._interim_interval()
        # the turn's first interim decode as soon as it can run, not at the interval's phase (that came 0-0.24 s
        # later, by when the previous turn's commit happened to fall)
        due = self.fed - self.last_update >= interval * RATE or (young and not self.forced)
        if due and not p.waiting_for_voice() and not self._quiet(young):
            self.forced = self.forced or young
            self.last_update = self.fed
            t = time.monotonic()
            if p.onnx_interims():
                self._onnx_interim()
            else:
                self.stream.update_transcription(self.force_flag if young else 0)
            self.interim_cost = time.monotonic() - t
            if self.t.trace:
                self.decoder.interims += self.interim_cost
        if p.turn_open:
            self._maybe_commit()
        p.trim()

    def _onnx_interim(self) -> None:
        """The turn so far (from its latest cut, if any), decoded on this thread with the last interim as draft."""
        p = self.p
        self._settle_cut(p.cut_for(p.total)[1])
        base, start = p.cut_for(p.total)
        upto = p.total
        onnx = self.decoder.onnx
        words = p.draft(base).split()
        shown = words[: max(0, len(words) - self.t.interim_open_words)]  # the words the viewer has taken in
        keep = len(onnx.tokenize(" ".join(shown))) if self.t.interim_margin > 0 else 0
        draft = onnx.tokenize(" ".join(words))
        logp: list[float] = []
        ids = (
            onnx.decode_ids(p.region_audio(start), (), None, draft, keep, self.t.interim_margin, token_logp=logp) or []
        )
        text = self._join(base, start, onnx.text(ids[: onnx.firm(ids, logp, self.t.interim_doubt)]))
        if base:  # the cut's part as shown already (TurnPlanner.held)
            text = join(p.held(base), text[len(base.strip()) :])
        if text and not ends_repeated(text):  # tiny-en repeats a phrase at a cut-off word end: keep the last one
            self._send_update(drop_repeat(text), upto, source="cut" if base else "onnx")

    def _quiet(self, young: bool) -> bool:
        """No interim re-decode now: a final is due (ours or, in this worker, another stream's), or we are behind."""
        p = self.p
        if p.turn_open and (p.ep.silence >= self.t.quiet_silence * RATE or p.inflight is not None):
            return True
        if young or self.fed - self.last_update >= MAX_INTERIM_GAP * RATE:
            return False  # other streams' finals must not starve our interims
        return self.decoder.pending > 0 or self.q.qsize() >= 2

    def _interim_interval(self) -> float:
        """Re-decoding a long line costs more: keep the interims' share of the worker bounded under load."""
        return max(UPDATE_INTERVAL, self.interim_cost * (self.t.interim_share + self.decoder.sessions))

    # -- speculative final decodes (on the worker's final-decoder thread) --
    def _speculate(self) -> None:
        p = self.p
        p.inflight = p.total
        self._settle_cut(p.cut_for(p.total)[1])
        base, start, job = p.job()
        self.decoder.submit(self, Tag(p.gen, p.turn_no, base, start), job, p.total)

    def _spec_done(self, done: Done) -> None:
        p = self.p
        tag = done.tag
        if not p.turn_open or tag.turn_no != p.turn_no:
            return  # the turn ended while it was decoding
        p.checked = p.checked or bool(done.text.strip())
        if tag.gen == p.gen or done.cutoff == p.cut_ok:
            done = self._judged(done)  # it may be sent as a final or become a cut
        text = self._join(tag.base, tag.start, done.text)
        if tag.gen != p.gen:
            if done.cutoff == p.cut_ok:
                p.add_cut(text, done.cutoff, tag.start, p.cut_pause, done.ending, done.heard)
                if self._cut_final():
                    return
            # speech went on while it was decoding: not the final, but a good interim (the line so far, decoded
            # with a tail), which saves the next interim re-decode; unless it changes words the calm interims hold
            # (the next interim would most likely put them back: two rewrites)
            if text.strip() and done.cutoff > self.interim_upto and p.keeps_shown(text):
                self._send_update(text.strip(), done.cutoff, source="spec")
                self.last_update = self.fed
            return
        p.inflight = None
        # a decode from a cut: its ids are not the whole turn's
        p.spec = Spec(text, done.cutoff, tag.start, done.ids if tag.start is None else None, done.ending, done.heard)
        self.t_decode = (done.seconds, done.length)
        self.t_waited = done.waited
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        p = self.p
        if not p.commit_due():
            return
        spec = p.spec
        assert spec is not None  # commit_due() holds only with a speculative final
        if self.t.trace:
            now = time.monotonic()
            d = self.decoder
            log.info(
                f"trace sid={self.sid} commit silence={p.ep.silence / RATE:.3f} "
                f"since_speech={(p.total - p.ep.last_speech) / RATE:.3f} "
                f"qwait={now - self.t_queued:.3f} decode={self.t_decode[0]:.3f} len={self.t_decode[1]:.2f} "
                f"spec_age={(p.total - spec.cutoff) / RATE:.3f} q={self.q.qsize()} fwait={self.t_waited:.3f} "
                f"pending={d.pending} dec_spent={d.spent:.2f} dec_stale={d.stale:.2f} interims={d.interims:.2f}"
            )
        self._commit(spec.text, "model", spec.ids, upto=spec.cutoff, ending=spec.ending)

    def _cut_final(self) -> bool:
        """A long turn ends at its latest cut (a pause between words that speech went on from, decoded already):
        its final comes as soon as that decode is back, not at moonshine's late line end (4-8 s late at 4 streams),
        never inside a word, and the next turn starts exactly at the cut, so the words after it are in no gap."""
        p = self.p
        cut = p.final_cut() if p.turn_open and p.onnx_mode else None
        if cut is not None:
            self._settle_cut(cut.at, final=True)
            cut = p.final_cut()
        if cut is None:
            return False
        text, at = cut.text, cut.at
        start = p.line_start if p.line_start is not None else (p.region_start() + int(LOOK_BEHIND * RATE)) / RATE
        if p.carry is not None:
            start = p.region_start() / RATE
        after = self._after(text, cut.ending, at)
        self._final(text, start, max(at / RATE, start), "cut", restart=True, upto=at, carry=True, after=after)
        return True

    def _judged(self, done: Done) -> Done:
        """The decode's text as it is sent (worker.FinalDecoder.judge: a trailing . ? ! only at a sentence end)."""
        if done.job is None or not done.ids or self.decoder.endings is None or self.t.sentence_end <= 0:
            return done
        job = done.job
        text, ending, words = self.decoder.judge(job, done.ids)
        heard = None
        if words is not None:  # as a cut, its ending is judged again once the speech after it is heard
            heard = (done.cutoff - (len(job.audio) - int(self.t.pad_seconds * RATE)), job.prefix, words)
        return done._replace(text=text, ending=ending, job=None, heard=heard)

    def _settle_cut(self, at: int | None, final: bool = False) -> None:
        """Before a cut's text is used (a base for later decodes, or a long turn's final), the end its decode gave it
        (a sentence mark, a comma, or nothing: FinalDecoder.judge) is judged again with the speech that followed it
        (tuning.cut_right_seconds of it; for a final cut, what there is): a pause between words looks like a
        sentence end on audio that ends there ("consider how. Much there might"), not once the decoder hears the
        sentence go on; the decode after it may then start in lower case (_join). Only the cut about to be used:
        one encoder run per cut that becomes a base."""
        p = self.p
        i = next((k for k, c in enumerate(p.cuts) if c.at == at and c.heard is not None), None)
        if i is None:
            return
        cut = p.cuts[i]
        assert cut.heard is not None
        start, prefix, words = cut.heard
        upto = cut.at + int(self.t.cut_right_seconds * RATE)
        if p.total < upto and not final:
            return
        audio = p.audio_between(start, min(upto, p.total))
        if audio is None:
            p.cuts[i] = cut._replace(heard=None)
            return
        ending, logp = self.decoder.judge_again(audio, prefix, words)
        text = cut.text.rstrip().rstrip(".?!\u2026,") + ending
        p.cuts[i] = cut._replace(text=text, ending=logp, heard=None)

    def _after(self, text: str, ending, speech_end: int) -> tuple | None:
        """What the planner keeps of a final that ends without a sentence mark (TurnPlanner.after)."""
        if ending is None or not text.strip() or text.rstrip()[-1] in ".?!":
            return None
        return ending, speech_end

    def _join(self, base: str, start: int | None, text: str) -> str:
        """The text of a cut (`base`, at sample `start`) and of the decode from it. A decode from a cut, or after a
        final that ended without a sentence mark, starts with a capital as every decode does (with that final as
        context too: its ids keep the mark); its first word goes lower case if the decoder, after the head's last
        word (the cut's, or the final's: Cut.ending, TurnPlanner.after), would rather have it so."""
        p, endings = self.p, self.decoder.endings
        if base:
            ending = p.cut_ending(start) if base.rstrip()[-1:] not in ".?!" else None
        else:
            ending = None if p.after is None else p.after[0]
        words = text.split(maxsplit=1)
        if ending is not None and endings is not None and words and endings.lower_next(ending, words[0]):
            text = " ".join([words[0][:1].lower() + words[0][1:], *words[1:]])
        return join(base, text)

    def _decode(self) -> tuple[str, tuple[int, ...] | None]:
        """Decode the open turn now, on this thread: (text, ids if the whole turn went through the onnx decoder)."""
        t = time.monotonic()
        self._settle_cut(self.p.cut_for(self.p.total)[1], final=True)
        base, start, job = self.p.job()
        text, ids = self.decoder.decode(job)
        self.t_decode = (time.monotonic() - t, len(job.audio) / RATE)
        return self._join(base, start, text or ""), ids if start is None else None

    def _commit(
        self, text: str, trigger: str, ids: tuple[int, ...] | None = None, upto: int | None = None, ending=None
    ) -> None:
        """End the turn with this text, decoded from its audio up to sample `upto` (default: all so far); `ids`,
        the whole turn's tokens, make it the next turn's left context; `ending`, as Spec.ending."""
        p = self.p
        region = p.region_start()
        start = p.line_start if p.line_start is not None else (region + int(LOOK_BEHIND * RATE)) / RATE
        if p.carry is not None:
            start = region / RATE  # the turn starts where the previous one was cut
        end = max(p.ep.last_speech, int(start * RATE)) / RATE
        speech_end = p.ep.last_speech
        self._final(text, start, end, trigger, restart=True, upto=upto, after=self._after(text, ending, speech_end))
        p.remember(region, speech_end, ids)

    def _final(
        self,
        text: str,
        start: float,
        end: float,
        trigger: str,
        restart: bool,
        upto: int | None = None,
        carry: bool = False,
        after: tuple | None = None,
    ) -> None:
        text = continued_stops(collapse_repeats(text.strip()))
        if text or self.sent_update:  # an empty final still commits the interim text the client has
            self.sent_update = False
            event = {
                "text": text,
                "start": start,
                "end": end,
                "trigger": trigger,
                "words": self._word_times(text, start, end),
            }
            self.send(("ev", self.sid, "final", event))
        self.p.end_turn(upto, carry, after)
        if restart:
            self._new_stream()
        else:
            self._new_turn()

    def _word_times(self, text: str, start: float, end: float) -> list[dict]:
        """Estimated word times (wordtimes.py) from the stream's voice detector and the turn's audio; none
        without a voice detector."""
        p = self.p
        if p.vad is None or not text:
            return []
        a, b = int(start * RATE), int(end * RATE)
        first, probs = p.vad.probs_between(a, b)
        segs = speech_segments(first, probs, start, end)
        lo = max(a, p.buf_start)
        segs = without(segs, quiet_gaps(p.buf[lo - p.buf_start : max(lo, b) - p.buf_start], lo))
        return estimate(text, segs, start, end)

    def _finalize(self, trigger: str) -> bool:
        p = self.p
        if not p.turn_open:
            return False
        if p.spec is not None and p.spec.cutoff == p.total:
            text, ids = p.spec.text, p.spec.ids
        else:
            text, ids = self._decode()
        had_text = bool(text.strip())
        self._commit(text, trigger, ids)
        return had_text

    # -- the thread --
    def _run(self) -> None:
        if self.t.stream_nice and self.nice_thread:
            lower_thread_priority(self.t.stream_nice)
        while True:
            op, *args = self.q.get()
            try:
                if self.aborted and op != "abort":
                    continue
                if op == "audio":
                    self._audio(*args)
                elif op == "spec":
                    self._spec_done(*args)
                elif op == "error":
                    raise args[0]
                elif op == "finalize":
                    ended = self._finalize("manual")
                    self.send(("done", self.sid, args[0], ended))
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


FEED_SAMPLES = 1280  # 80 ms: a batch file is fed to the planner in the live streams' frame size


class BatchStream(Stream):
    """A pre-recorded file (webapp/upstreams/batch.py), in the batch worker process (its whole process runs at a
    low nice value, so live streams' workers get the cores first). Same endpointer and planner as a live stream,
    but audio arrives faster than real time: its speculative finals are decoded at once on this thread (as if the
    decoder were instant, so turns end where they would live), no interims, and a `progress` event per second of
    audio handled (the web process feeds at most a bounded look-ahead beyond it)."""

    nice_thread = False  # the process is niced already; a thread nice of its own would raise it again (as root)

    def __init__(self, *args, **kw):
        self.reported = 0  # samples handled at the last progress event
        super().__init__(*args, **kw)

    def _quiet(self, young: bool) -> bool:
        return True  # no interim re-decodes: nobody watches a batch job word by word

    def _speculate(self) -> None:
        p = self.p
        p.inflight = p.total
        self._settle_cut(p.cut_for(p.total)[1])
        base, start, job = p.job()
        tag = Tag(p.gen, p.turn_no, base, start)
        t = time.monotonic()
        text, ids = self.decoder.decode(job)
        self._spec_done(Done(tag, text or "", ids, p.total, time.monotonic() - t, len(job.audio) / RATE, 0.0, job=job))

    def _audio(self, pcm: bytes, queued: float = 0.0) -> None:
        step = FEED_SAMPLES * 2
        for i in range(0, len(pcm), step):
            super()._audio(pcm[i : i + step], queued)
        if self.p.total - self.reported >= RATE:
            self.reported = self.p.total
            self.send(("ev", self.sid, "progress", {"seconds": self.p.total / RATE}))
