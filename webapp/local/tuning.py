"""The embedded recognizer's tuning, one frozen value handed to every worker process (as JSON on its command line).

Operators set four of them through config.py (LOCAL_MAX_STREAMS, LOCAL_BEAMS, LOCAL_CONTEXT_SECONDS,
LOCAL_FINAL_DECODER); the rest are
experiment knobs, flags of bench/recognizer.py and bench/decoding.py (docs/benchmarks.md says what each measured).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    # Final decodes in onnxruntime (onnxdecoder.py) with this many beams; 0 = libmoonshine's decode, no context.
    # With left context, 2 beams changed little (6 streams: 3.1 % WER against 3.5 %) and cost the latency targets at
    # 6 streams (p95 0.73 against 0.52 s): docs/benchmarks.md.
    beams: int = 1
    # Left context: a turn that starts at most context_pause after the previous one is decoded together with it,
    # the decoder reading the previous turn's tokens. At 6 streams the benchmark's WER went from 6.4-7.4 % to
    # 3.5-5.5 % (docs/benchmarks.md). context_seconds: the longest previous turn used as context (0 = off).
    context_seconds: float = 8.0
    context_pause: float = 1.2
    spec_silence: float = 0.04  # silence after speech that starts the speculative final decode
    end_silence: float = 0.2  # silence after speech that ends the turn
    pad_seconds: float = 0.5  # noise tail added to final decodes (avoids "five, five, five")
    interim_share: float = 2.0  # interim interval >= last re-decode time x (this + the worker's streams)
    quiet_silence: float = 0.02  # silence in an open turn that stops interim re-decodes
    # A speculative decode made at a pause at least cut_pause long (between words) that speech then went on from is
    # kept as a cut: later decodes of a turn of at least cut_from_seconds start there, if both parts are at least
    # cut_min_seconds (tiny-en decodes short fragments badly). cut_pause=0 turns cuts off (docs/benchmarks.md).
    cut_pause: float = 0.12
    cut_min_seconds: float = 2.0
    cut_from_seconds: float = 6.0
    # A speculative decode that speech overtook (and that cannot become a cut) stops between decoder steps: at 6
    # streams, 63 % of the final decoder's time went to such decodes (30.5 of 48.8 s per worker; 21 s with stopping).
    stop_overtaken: bool = True
    # How much nicer than the worker the streams' threads are (endpointer, interims): the final-decoder thread gets
    # the core first. At 10 the interims starved; at 5, 6 streams kept up (docs/benchmarks.md).
    stream_nice: int = 5
    # Interims from the onnx decoder once the stream's own voice detector heard speech; False: moonshine's lines.
    onnx_interims: bool = True
    # A final or cut whose decode ends in . ? ! keeps the mark only if the decoder, on the audio as heard (no noise
    # tail), gives a sentence mark after its last word at least this probability (0 = keep every mark). Turns end at
    # pauses inside sentences (the reading's commas): issue 22, docs/benchmarks.md "Issue 22: sentence ends".
    sentence_end: float = 0.85
    # Where that mark is dropped, the text ends with a comma if the decoder gives a comma, semicolon, colon or dash
    # there at least this probability ("it was the age of wisdom, it was the age of foolishness"; 0 = no comma).
    clause_end: float = 0.2
    # A cut (a pause inside a long turn that speech went on from) that kept its mark is judged again once
    # cut_right_seconds of the speech after it are heard: the mark stays if the decoder, hearing the sentence go on,
    # still gives it cut_sentence_end ("how much there might. Be prudently" -> ~0.0; "for them. He was" 0.72).
    cut_sentence_end: float = 0.5
    cut_right_seconds: float = 0.5
    # Calm interims: an onnx interim keeps the previous interim's words but its last interim_open_words unless the
    # decoder's own choice is more than interim_margin (log-probability) likelier (onnxdecoder.py; 0 = plain greedy).
    # With long_interims, margin 3 about halved the interim rewrite rate (docs/benchmarks.md, calm interims).
    interim_margin: float = 3.0
    interim_open_words: int = 1
    # An onnx interim leaves out its last two words if each has a token below this probability (a word cut off by
    # the audio's end, read as pieces: OnnxDecoder.firm); 0 = off.
    interim_doubt: float = 0.5
    # Turns past MODEL_END_SECONDS: onnx interims from the turn's latest cut while it has one (else libmoonshine's
    # re-decode of its line), and libmoonshine's late reports of lines that ended before the last interim are not
    # shown (they took the interims back to the turn's first words, seconds late).
    long_interims: bool = True
    trace: bool = False  # one timing line per turn end on the workers' stderr
    # "whisper": finals from Whisper tiny.en (whisper.py, the optional [whisper] extra; the previous turn's text as
    # its prompt instead of context ids); Moonshine keeps the interims and the voice checks. Better on long read
    # speech, worse WER on short turns, ~2x CPU, +146 MB per worker: opt-in (docs/benchmarks.md, issue 22).
    final_decoder: str = "moonshine"

    @classmethod
    def from_settings(cls, settings) -> Tuning:
        """The operator's settings (config.Settings, or anything with the same attributes) over the defaults."""
        return cls(
            beams=getattr(settings, "local_beams", cls.beams),
            context_seconds=getattr(settings, "local_context_seconds", cls.context_seconds),
            final_decoder=getattr(settings, "local_final_decoder", cls.final_decoder),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Tuning:
        return cls(**json.loads(text))


def add_arguments(parser) -> None:
    """One command-line flag per field (--end-silence 0.3, --onnx-interims 0), for the benchmarks."""
    for f in dataclasses.fields(Tuning):
        kind = int if f.type in ("int", "bool") else str if f.type == "str" else float
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, default=None, help=f"tuning: {f.name} (default {f.default})"
        )


def from_arguments(args, **base) -> Tuning:
    """The Tuning that add_arguments' flags describe (unset flags keep `base`, then the defaults)."""
    values = dict(base)
    for f in dataclasses.fields(Tuning):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = bool(value) if f.type == "bool" else value
    return Tuning(**values)
