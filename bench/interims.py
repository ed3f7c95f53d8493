"""Interim stability of the onnx decoder offline (no real-time pacing, no other streams): each endpointer turn of
the real-speech clips is decoded as the live stream's interims would be (every 0.32 s of audio, the turn so far with
its noise tail, the previous interim as draft, up to MODEL_END_SECONDS), for each --margins value (tuning's
interim_margin; 0 = plain greedy, today's interims).

    .venv/bin/python bench/interims.py [--margins 0,1,2,3] [--open-words 2]

Per margin: interim rewrite rate (as bench/recognizer.py: an interim after the turn's first that changes a word of
the previous interim other than its last), the interims' word error against the turn's final (each interim's words
but its last against as many first words of the final), and whether the finals (decoded with the last interim as
draft, margin 0) kept the plain greedy words.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402

from webapp.local.onnxdecoder import OnnxDecoder  # noqa: E402
from webapp.local.planner import MODEL_END_SECONDS, UPDATE_INTERVAL  # noqa: E402

RATE = 16000


def turns(clips):
    """(clip name, turn audio as float) for every endpointer turn of the clips."""
    for c in clips:
        x = np.frombuffer(c.pcm, np.int16).astype(np.float32) / 32768
        for start, end, _ in speech.endpointer_turns(c.pcm):
            yield c.name, x[start:end]


def tail(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 20, RATE // 2) / 32768).astype(np.float32)


def run(dec: OnnxDecoder, audio: np.ndarray, margin: float, open_words: int, seed: int):
    """The turn's interims and its final (with the last interim as draft), as texts."""
    interims: list[str] = []
    step = int(UPDATE_INTERVAL * RATE)
    first = int(0.5 * RATE)  # about when the voice detector lets the first interim run
    for upto in range(first, min(len(audio), int(MODEL_END_SECONDS * RATE)), step):
        words = interims[-1].split() if interims else []
        shown = words[: max(0, len(words) - open_words)]
        keep = len(dec.tokenize(" ".join(shown))) if margin > 0 else 0
        a = np.concatenate([audio[:upto], tail(seed + upto)])
        ids = dec.decode_ids(a, (), None, dec.tokenize(" ".join(words)), keep, margin)
        text = dec.text(ids or ())
        if text and (not interims or text != interims[-1]):
            interims.append(text)
    a = np.concatenate([audio, tail(seed)])
    final = dec.text(dec.decode_ids(a, (), None, dec.tokenize(interims[-1] if interims else "")) or ())
    plain = dec.text(dec.decode_ids(a) or ())
    return interims, final, plain


def main(args) -> None:
    from moonshine_voice import get_model_path

    dec = OnnxDecoder(Path(get_model_path("tiny-en")))
    clips = speech.real_clips()
    sets = {
        "sentences": [speech.joined(clips[:5], "librivox-joined"), *speech.long_clips()],
        "default": clips + speech.long_clips(),
    }[args.set]
    print(f"set {args.set}: {len(sets)} clips, open words {args.open_words}")
    print("| margin | interims | rewrite rate | interim errors vs final | finals = plain greedy | seconds |")
    print("|---|---|---|---|---|---|")
    for margin in args.margins:
        t = time.monotonic()
        rewrites, errors, words, same, n_turns, n = [], 0, 0, 0, 0, 0
        for k, (_, audio) in enumerate(turns(sets)):
            interims, final, plain = run(dec, audio, margin, args.open_words, seed=k)
            n_turns += 1
            same += speech.normalize(final) == speech.normalize(plain)
            ref = speech.normalize(final)
            for prev, cur in pairwise(interims):
                a, b = speech.normalize(prev)[:-1], speech.normalize(cur)
                rewrites.append(a != b[: len(a)])
                if args.show and rewrites[-1]:
                    print(f"    {prev!r}\n -> {cur!r}")
            for text in interims:
                w = speech.normalize(text)[:-1]
                errors += speech.edit_distance(ref[: len(w)], w)
                words += len(w)
            n += len(interims)
        print(
            f"| {margin:g} | {n} | {np.mean(rewrites) * 100:.1f}% ({sum(rewrites)}/{len(rewrites)}) | "
            f"{errors / max(1, words) * 100:.1f}% ({errors}/{words}) | {same}/{n_turns} | {time.monotonic() - t:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--margins", default="0,1,2,3", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--open-words", type=int, default=2)
    ap.add_argument("--show", action="store_true", help="print every rewrite")
    ap.add_argument("--set", choices=["sentences", "default"], default="sentences")
    main(ap.parse_args())
