"""A worker process of the embedded recognizer: one Transcriber, one final-decoder thread, and one Stream thread per
client stream, talking to the web process (pool.py) over a socketpair.

    python -m webapp.local.worker FD TUNING_JSON [batch]

With `batch`, the process runs pre-recorded files (stream.BatchStream) at nice BATCH_NICE: live streams, in the
other workers, get the cores first.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import moonshine
from .onnxdecoder import Endings, OnnxDecoder
from .planner import Done, Job, Tag
from .signal import RATE
from .stream import BatchStream, Stream
from .tuning import Tuning
from .vad import StreamVad, load_session

log = logging.getLogger(__name__)

BATCH_NICE = 15  # CFS weight 36 against 1024 at nice 0 (a live final decode) and 335 at 5 (a live stream thread)
VERIFY_SECONDS = 2.0  # turns up to this long are decoded by libmoonshine first, to check that they hold speech


class FinalDecoder:
    """One thread per worker that runs the streams' speculative final decodes, first come first served. While
    one is queued or running, the worker's streams skip their interim re-decodes, so finals do not wait behind
    them. Results go back through each stream's own queue (its thread owns all of its state)."""

    def __init__(self, tr, onnx: OnnxDecoder | None = None, vad=None, tuning: Tuning | None = None, whisper=None):
        self.tr, self.onnx, self.vad = tr, onnx, vad  # vad: the Silero session
        self.whisper = whisper  # whisper.WhisperDecoder: the finals' text (tuning.final_decoder)
        self.endings = Endings(onnx) if onnx is not None else None
        self.tuning = tuning if tuning is not None else Tuning()
        self.force_flag = moonshine.force_flag()
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0  # queued + running
        self.sessions = 0  # streams open in this worker
        self.spent = self.stale = self.interims = 0.0  # trace only (interims: the streams' re-decodes)
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="stt-final", daemon=True).start()

    def submit(self, stream: Stream, tag: Tag, job: Job, cutoff: int) -> None:
        with self.lock:
            self.pending += 1
        self.q.put((stream, tag, job, cutoff, time.monotonic()))

    def decode(self, job: Job, stop: Callable[[], bool] | None = None) -> tuple[str | None, tuple[int, ...] | None]:
        """Text and (from the onnx decoder) token ids of the job's turn, audio[own:] with its tail; audio[:own] is
        the previous turn (and the pause after it), already decoded as `prefix`.

        libmoonshine's decode has a voice detector: it finds no speech in a breath or a click, where tiny-en
        makes up "You" or "Mm-h". So a turn goes to the onnx decoder only once that decode found words in it
        (once per turn: `checked`), or, if it is longer than VERIFY_SECONDS, once it has shown words (interims).
        `draft`: what the interims said the turn is (the onnx decoder checks it instead of stepping token by token).
        Text None: `stop()` turned true during the onnx decode."""
        own = job.audio[job.own :]
        if self.onnx is None:
            return moonshine.decode_once(self.tr, own, self.force_flag), None
        short = len(own) <= (VERIFY_SECONDS + self.tuning.pad_seconds) * RATE
        if not job.checked and (short or not job.words):
            text = moonshine.decode_once(self.tr, own, self.force_flag)
            if not text:
                return text, None
        if self.whisper is not None:
            return self._whisper(job, stop)
        found = self.onnx.decode_ids(job.audio, job.prefix, stop, self.onnx.tokenize(job.draft))
        if found is None:
            return None, None
        ids = tuple(found)
        return self.onnx.text(ids), ids

    def _whisper(self, job: Job, stop: Callable[[], bool] | None) -> tuple[str | None, tuple[int, ...] | None]:
        """Whisper decodes the turn alone, the previous turn's text as its prompt; the ids (Moonshine's tokens of
        that text) make the turn the next one's context, as the onnx decoder's would."""
        if stop is not None and stop():
            return None, None
        assert self.onnx is not None
        text = self.whisper.decode(job.audio[job.own :], self.onnx.text(job.prefix))
        return text, tuple(self.onnx.tokenize(text))

    def judge(self, job: Job, ids: tuple[int, ...]) -> tuple[str, np.ndarray | None, tuple[int, ...] | None]:
        """The text of a speculative final or cut (the job's decode, `ids`) as it is sent: without its trailing
        . ? ! unless the decoder, on the audio as heard (the noise tail left out: with it, tiny-en ends nearly every
        text with "." because the audio ends), gives a sentence mark after the last word at least
        tuning.sentence_end; a turn or cut that ends at a pause inside a sentence must not end it (issue 22). Also
        the decoder's log-probabilities after the last word (None if the ids end in no sentence mark), and the word
        ids before the mark (a cut's ending is judged again with the speech after it: Stream._settle_cut). One encoder
        run and one decoder pass, on the stream's thread (run there, the final decoder's queue does not wait).
        The ids themselves keep the mark: as the next turn's context, the text without it read "It was the epoch"
        after "belief" as "that was the epoch"."""
        assert self.onnx is not None and self.endings is not None
        e = self.endings
        shown = ids[e.lead(ids) :] if job.prefix else ids  # a mark or comma the decoder began with after a context
        marks = e.marks(shown)
        if not marks:
            return self.onnx.text(shown), None, None
        words = shown[: len(shown) - marks]
        heard = job.audio[: len(job.audio) - int(self.tuning.pad_seconds * RATE)]
        logp = e.next_logp(heard, job.prefix, words)
        if e.sentence_end(logp) >= self.tuning.sentence_end:
            return self.onnx.text(shown), logp, words
        return self._without_mark(self.onnx.text(words), logp), logp, words

    def _without_mark(self, text: str, logp: np.ndarray) -> str:
        """A text whose sentence mark was dropped: it ends with a comma if the decoder would put one there."""
        return text + self._comma(logp) if text else text

    def _comma(self, logp: np.ndarray) -> str:
        """ "," where the decoder gives a comma, semicolon, colon or dash at least tuning.clause_end (the pause is
        inside a sentence, and it would mark it), else ""."""
        assert self.endings is not None
        return "," if 0 < self.tuning.clause_end <= self.endings.clause_end(logp) else ""

    def judge_again(self, audio: np.ndarray, prefix: tuple[int, ...], words: tuple[int, ...]) -> tuple[str, np.ndarray]:
        """A cut's end, on its audio and the speech that followed it (Stream._settle_cut): the decoder's likeliest
        sentence mark if it gives one at least tuning.cut_sentence_end, else a comma or "" (as judge), and the
        log-probabilities after its last word."""
        assert self.endings is not None and self.onnx is not None
        e = self.endings
        logp = e.next_logp(audio, prefix, words)
        if e.sentence_end(logp) >= self.tuning.cut_sentence_end:
            return self.onnx.text([e.likeliest_mark(logp)]), logp
        return self._comma(logp), logp

    def _run(self) -> None:
        while True:
            stream, tag, job, cutoff, queued = self.q.get()
            t = time.monotonic()
            try:
                p = stream.p
                if stream.aborted or tag.gen != p.gen:
                    text = None  # stale already: skip the work
                else:
                    # speech overtook it (and it cannot become a cut): stop between decoder steps
                    def stop(s: Stream = stream, g: int = tag.gen) -> bool:
                        return s.aborted or s.p.stale(g)

                    text, ids = self.decode(job, stop=stop)
                    if self.tuning.trace:  # decoder seconds, and those spent on decodes that speech overtook meanwhile
                        spent = time.monotonic() - t
                        self.spent += spent
                        if tag.gen != p.gen:
                            self.stale += spent
            except Exception as exc:
                log.exception("final decode failed")
                text = None
                stream.q.put(("error", exc))
            finally:
                with self.lock:
                    self.pending -= 1
            if text is not None:
                done = Done(tag, text, ids, cutoff, time.monotonic() - t, len(job.audio) / RATE, t - queued, job=job)
                stream.q.put(("spec", done))


def main(fd: int, tuning: Tuning, batch: bool = False) -> None:
    if batch:
        os.nice(BATCH_NICE)  # before any thread starts: they all inherit it
    logging.basicConfig(
        level="INFO" if tuning.trace else os.environ.get("RECOGNIZER_LOG_LEVEL", "WARNING"),
        format="recognizer-worker %(process)d %(levelname)s %(message)s",
    )
    conn = Connection(fd)
    lock = threading.Lock()

    def send(msg: tuple) -> None:
        with lock:
            conn.send(msg)

    t0 = time.monotonic()
    tr = moonshine.load_transcriber()
    # warm-up: the first decode is slower (allocations); do it now, not in the first session
    # (twice at once: finals are decoded on their own thread beside the streams' interim re-decodes)
    x = (np.random.default_rng(0).normal(0, 300, RATE) / 32768.0).astype(np.float32)
    other = threading.Thread(target=moonshine.decode_once, args=(tr, x, moonshine.force_flag()))
    other.start()
    warm = tr.create_stream(update_interval=1e9)
    warm.start()
    warm.add_audio(x.tolist(), RATE)
    warm.stop()
    warm.close()
    other.join()
    onnx = None
    if tuning.beams > 0:
        onnx = OnnxDecoder(moonshine.model_path(), tuning.beams)
        onnx.decode(x)  # warm-up
    vad = None
    if onnx is not None and tuning.onnx_interims:
        try:
            vad = load_session(tr._lib)
            StreamVad(vad).process(x[:2048])  # warm-up, and a check of the model's inputs
        except Exception:  # another libmoonshine build: libmoonshine's interims, as with onnx_interims off
            log.exception("no voice detector per stream; interims come from moonshine's streaming lines")
            vad = None
    whisper = None
    if onnx is not None and tuning.final_decoder == "whisper":
        from .whisper import WhisperDecoder

        whisper = WhisperDecoder()
        whisper.decode(x)  # warm-up
    send(("ready", {"pid": os.getpid(), "load_seconds": time.monotonic() - t0}))
    decoder = FinalDecoder(tr, onnx, vad, tuning, whisper)
    streams: dict[int, Stream] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg == ("quit",):
            break
        op, sid, *rest = msg
        arg: Any = (
            rest[0] if rest else None
        )  # unpickled: open: the sample rate; audio: the PCM; finalize: the reply's token
        if op == "open":
            streams[sid] = (BatchStream if batch else Stream)(sid, arg, tr, send, decoder)
            decoder.sessions = len(streams)
            continue
        s = streams.get(sid)
        if s is None:
            continue
        if op == "audio":
            s.q.put(("audio", arg, time.monotonic()))
        elif op == "finalize":
            s.q.put(("finalize", arg))
        elif op == "close":
            s.q.put(("close",))
            streams.pop(sid, None)
            decoder.sessions = len(streams)
        elif op == "abort":
            s.aborted = True
            s.q.put(("abort",))
            streams.pop(sid, None)
            decoder.sessions = len(streams)
    for s in streams.values():
        s.aborted = True
        s.q.put(("abort",))
    os._exit(0)  # skip interpreter teardown (ORT threads); nothing to flush


if __name__ == "__main__":
    main(int(sys.argv[1]), Tuning.from_json(sys.argv[2]), batch=sys.argv[3:4] == ["batch"])
