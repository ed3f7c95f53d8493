"""Offline: what separates a pause inside a sentence from a sentence end at the turn ends of real speech (issue 22)?

    flock /tmp/cpu.lock .venv/bin/python bench/sentence_evidence.py [--verbose]

Turns: the recognizer's endpointer (tests/speech.py endpointer_turns) on the 44 s reading (its print has no sentence
end before the last word), the 5 LibriVox clips (each one turn; Austen's print: one ends in ".", the others in
, ; :), and moonshine-voice's beckett.wav and endgame_nagg_nell.wav (every turn end is the end of a line: a sentence
end). Each turn is decoded as the app's final decoder does (greedy, the previous turn's ids as left context when it
follows within the context pause), then per turn end that the decode closes with . ? ! :
  heard   P(. ? !) after the turn's words on the audio up to 0.04 s after its speech (FinalDecoder.judge's feature)
  alone   the same without the previous turn as context
  +0.3 s / +0.8 s   the same with that much of the audio after the pause (the next turn's start): what a decision
          that waited for the next words would know
  pitch   the last voiced 50 ms's F0 over the turn's median F0 (a rise > 1.1: a continuation contour)
The summary counts, per feature and threshold, how many pauses inside a sentence would keep a mark and how many
sentence ends would lose theirs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import speech  # noqa: E402
from whisper_finals import pad, turns_of  # noqa: E402

from webapp.local import moonshine  # noqa: E402
from webapp.local.onnxdecoder import Endings, OnnxDecoder  # noqa: E402
from webapp.local.signal import RATE  # noqa: E402


def f0_ratio(x: np.ndarray) -> float:
    """Last voiced F0 / median voiced F0 of a turn (a YIN-style difference function per 40 ms, 10 ms hop)."""
    hop, win, lo, hi = 160, 640, RATE // 400, RATE // 60
    f0 = []
    for i in range(0, len(x) - win, hop):
        f = x[i : i + win] - x[i : i + win].mean()
        if float((f * f).sum()) < 1e-5 * win:
            f0.append(0.0)
            continue
        d = np.array([((f[:-t] - f[t:]) ** 2).sum() for t in range(1, hi + 1)])
        cm = d * np.arange(1, hi + 1) / np.maximum(np.cumsum(d), 1e-12)
        t = lo + int(np.argmin(cm[lo - 1 : hi]))
        f0.append(RATE / t if cm[t - 1] < 0.3 else 0.0)
    v = np.array(f0)
    voiced = v[v > 0]
    tail = v[-30:][v[-30:] > 0]
    if len(voiced) < 5 or len(tail) < 3:
        return float("nan")
    return float(np.median(tail[-5:]) / np.median(voiced))


def recordings() -> list[tuple[speech.Clip, list[str]]]:
    import moonshine_voice

    assets = Path(moonshine_voice.__file__).parent / "assets"
    out = []
    reading = speech.long_clips()[0]
    n = len(speech.endpointer_turns(reading.pcm))
    out.append((reading, ["inside"] * n))  # (its last words end the clip: main() leaves them out)
    for c in speech.real_clips()[:5]:
        n = len(speech.endpointer_turns(c.pcm))
        out.append((c, ["inside"] * (n - 1) + ["end" if c.text.endswith(".") else "inside"]))
    for name in ("beckett", "endgame_nagg_nell"):
        c = speech.Clip(name, "", speech._read_pcm(assets / f"{name}.wav"))
        out.append((c, ["end"] * len(speech.endpointer_turns(c.pcm))))
    return out


def main(args) -> None:
    dec = OnnxDecoder(moonshine.model_path(), 1)
    e = Endings(dec)
    rng = np.random.default_rng(0)
    rows = []  # (label, heard, alone, +0.3, +0.8, pitch, text)
    for clip, labels in recordings():
        x = clip.samples.astype(np.float32) / 32768
        turns = turns_of(clip)
        bounds = speech.endpointer_turns(clip.pcm)
        prev = None
        for k, ((audio, ctx, _), label) in enumerate(zip(turns, labels, strict=False)):
            full = audio if ctx is None else np.concatenate([ctx, audio])
            prefix = tuple(prev) if ctx is not None and prev is not None else ()
            ids = tuple(dec.decode_ids(pad(full, rng), prefix) or ())
            prev = ids
            shown = ids[e.lead(ids) :] if prefix else ids
            marks = e.marks(shown)
            if not marks or label == "last":
                continue
            words = shown[: len(shown) - marks]
            heard = full[: len(full) - int(0.16 * RATE)]  # the turn ends 0.2 s after its speech: keep 0.04 s
            p_heard = e.sentence_end(e.next_logp(heard, prefix, words))
            own = audio[: len(audio) - int(0.16 * RATE)]
            p_alone = e.sentence_end(e.next_logp(own, (), words)) if prefix else p_heard
            if k >= len(bounds):
                continue
            start, _end, last = bounds[k]
            if clip.name == "two-cities" and k >= len(bounds) - 2:
                continue  # its last words ("... comparison only", then a breath): a full stop or none are both fine
            right = []
            for extra in (0.3, 0.8):
                nxt = bounds[k + 1][0] + int(0.2 * RATE) if k + 1 < len(bounds) else len(x)
                upto = min(len(x), nxt + int(extra * RATE))  # the next turn's onset (look-behind 0.2 s) + extra
                a = x[start - (len(full) - len(audio)) : upto]
                right.append(e.sentence_end(e.next_logp(a, prefix, words)))
            rows.append((label, p_heard, p_alone, right[0], right[1], f0_ratio(x[start:last]), dec.text(words)))
    if args.verbose:
        for r in rows:
            print(
                f"{r[0]:7s} heard {r[1]:.2f} alone {r[2]:.2f} +0.3s {r[3]:.2f} +0.8s {r[4]:.2f} pitch {r[5]:.2f}  {r[6][-50:]!r}"
            )
    inside = [r for r in rows if r[0] == "inside"]
    ends = [r for r in rows if r[0] == "end"]
    print(f"\n{len(inside)} turn ends inside a sentence, {len(ends)} sentence ends (the decode wrote . ? ! at each)\n")
    print("| feature | threshold | pauses inside a sentence that keep a mark | sentence ends that lose it |")
    print("|---|---|---|---|")
    for i, name in ((1, "heard (today)"), (2, "alone"), (3, "+0.3 s after"), (4, "+0.8 s after")):
        for th in (0.5, 0.7, 0.85, 0.9):
            keep = sum(r[i] >= th for r in inside)
            lose = sum(r[i] < th for r in ends)
            print(f"| {name} | {th} | {keep} of {len(inside)} | {lose} of {len(ends)} |")
    rise = 1.1
    keep = sum(r[1] >= 0.85 and not r[5] > rise for r in inside)
    lose = sum(r[1] < 0.85 or r[5] > rise for r in ends)
    print(f"| heard >= 0.85 and no pitch rise > {rise} | | {keep} of {len(inside)} | {lose} of {len(ends)} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verbose", action="store_true")
    main(ap.parse_args())
