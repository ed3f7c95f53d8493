"""How the final decode itself scores, apart from timing: the benchmark's real speech cut into the turns the live
endpointer makes, each decoded by libmoonshine (greedy, as before beam search) or by webapp/local/onnxdecoder.py with 1 or 2
beams, alone or after the previous turn (left context), and with one beam, context and the interim text as the
draft (libmoonshine's decode of the turn without the tail: what the interims showed), with `tail` seconds of the
real audio after the last speech frame (the live speculative decode starts 0.04 s into the silence and the 80 ms
chunks round that up to 0.04-0.12 s).

    PYTHONPATH=. .venv/bin/python bench/decoding.py [--tails 0.04,0.08,0.12,0.2]

Deterministic (fixed audio; each turn gets its own noise tail, the same for every decoder), single-threaded,
about 2 minutes (80 s for three tails). Prints word errors of 215 (the 11 pocketsphinx clips and the reading,
without the breath that ends the reading: the live path never decodes it).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402
from webapp.local import moonshine, tuning  # noqa: E402
from webapp.local.onnxdecoder import OnnxDecoder  # noqa: E402
from webapp.local.planner import LOOK_BEHIND  # noqa: E402

RATE = speech.RATE


class CountedRuns:
    """An onnxruntime session that counts its runs (decoder passes) under the current label."""

    def __init__(self, session):
        self.session, self.label, self.runs = session, None, collections.Counter()

    def run(self, names, feed):
        if self.label:
            self.runs[self.label] += 1
        return self.session.run(names, feed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tails", default="0.04,0.08,0.12,0.2")
    tuning.add_arguments(ap)  # --pad-seconds, --context-seconds, --context-pause are the ones read here
    args = ap.parse_args()
    tune = tuning.from_arguments(args)
    from moonshine_voice import get_model_path
    from moonshine_voice.transcriber import MOONSHINE_FLAG_FORCE_UPDATE
    model = Path(get_model_path("tiny-en"))
    tr = moonshine.load_transcriber()
    beams = {1: OnnxDecoder(model, 1), 2: OnnxDecoder(model, 2)}
    counted = beams[1].decoder = CountedRuns(beams[1].decoder)
    clips = speech.real_clips() + speech.long_clips()
    pads = np.random.default_rng(0).normal(0, 20, (64, int(tune.pad_seconds * RATE))) / 32768
    print("| tail | libmoonshine greedy | 1 beam | 2 beams | 1 beam + context | 2 beams + context "
          "| 1 beam + context + draft | CPU s: 1 beam, alone / + context / + draft | 2 beams, alone / + context "
          "| decoder passes: 1 beam + context / + draft |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tail in [float(t) for t in args.tails.split(",")]:
        errors: dict[str, int] = {}
        spent = {"1": 0.0, "1+ctx": 0.0, "2": 0.0, "2+ctx": 0.0, "draft": 0.0}
        counted.runs.clear()
        for clip in clips:
            x = np.frombuffer(clip.pcm, np.int16).astype(np.float32) / 32768
            # each turn ends `tail` s after its last speech frame
            bounds = [(s, last + int(tail * RATE), last) for s, _, last in speech.endpointer_turns(clip.pcm)]
            if clip.name == "two-cities":
                bounds = bounds[:-1]  # the breath after the last word
            hyps: dict[str, list[str]] = {}
            tails = [pads[i % len(pads)].astype(np.float32) for i in range(len(bounds))]
            lm = [moonshine.decode_once(tr, np.concatenate([x[s:e], pad]), MOONSHINE_FLAG_FORCE_UPDATE)
                  for (s, e, _), pad in zip(bounds, tails)]
            interims = [moonshine.decode_once(tr, x[s:last], MOONSHINE_FLAG_FORCE_UPDATE) for s, _, last in bounds]
            hyps["greedy"] = lm
            for k, dec in beams.items():
                alone, joined, drafted, prev = [], [], [], None
                for (s, e, last), pad, interim in zip(bounds, tails, interims):
                    t = time.process_time()
                    alone.append(dec.decode(np.concatenate([x[s:e], pad])))
                    t2 = time.process_time()
                    near = (prev is not None and prev[1] - prev[0] <= tune.context_seconds * RATE
                            and s - prev[1] <= (tune.context_pause - LOOK_BEHIND) * RATE)
                    audio, prefix = np.concatenate([x[prev[0] if near else s:e], pad]), prev[2] if near else ()
                    counted.label = "1+ctx"
                    ids = dec.decode_ids(audio, prefix)
                    t3 = time.process_time()
                    spent[str(k)] += t2 - t
                    spent[f"{k}+ctx"] += t3 - t2
                    joined.append(dec.text(ids))
                    if k == 1:
                        counted.label = "draft"
                        drafted.append(dec.text(dec.decode_ids(audio, prefix, draft=dec.tokenize(interim))))
                        spent["draft"] += time.process_time() - t3
                    counted.label = None
                    prev = (s, last, ids)
                hyps[str(k)], hyps[f"{k}+ctx"] = alone, joined
                if k == 1:
                    hyps["draft"] = drafted
            ref = speech.normalize(clip.ref)
            for name, texts in hyps.items():
                errors[name] = errors.get(name, 0) + speech.edit_distance(ref, speech.normalize(" ".join(texts)))
        print(f"| {tail:.2f} s | {errors['greedy']} | {errors['1']} | {errors['2']} | {errors['1+ctx']} | "
              f"{errors['2+ctx']} | {errors['draft']} | {spent['1']:.1f} / {spent['1+ctx']:.1f} / {spent['draft']:.1f} "
              f"| {spent['2']:.1f} / {spent['2+ctx']:.1f} | {counted.runs['1+ctx']} / {counted.runs['draft']} |")


if __name__ == "__main__":
    main()
