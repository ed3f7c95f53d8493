"""Estimated word times of the embedded recognizer (webapp/local/wordtimes.py) against known sentence starts: the
five LibriVox clips joined (tests/speech.py joined, 0 or 0.3 s between them) as one 22 s final with the text the
real recognizer gave for it (tests/test_local.py test_finals_carry_estimated_word_times_that_follow_the_speech),
the stream's own Silero voice detector run over the same audio. Error = estimated start of each clip's first word
minus the clip's speech start (speech_bounds, an energy envelope).

    python bench/wordtimes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import speech  # noqa: E402
from test_local import silence, true_starts  # noqa: E402

from webapp.local import moonshine, wordtimes  # noqa: E402
from webapp.local import vad as vadmod  # noqa: E402

TEXT = (
    "And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power to do for "
    "them. He was not an ill-disposed young man, unless to be rather cold-hearted and rather selfish is to be "
    "ill-disposed. Had he married a more amiable woman, he might have been made still more respectable than he "
    "was. He might even have been made amiable himself."
)
FIRSTS = ["And", "He", "unless", "Had", "He"]


def main() -> None:
    tr = moonshine.load_transcriber()
    sess = vadmod.load_session(tr._lib)
    clips = [speech.clip(n) for n in ("lv-0870", "lv-0880", "lv-0890", "lv-0920", "lv-0930")]
    words = TEXT.split()
    idx, k = [], 0
    for f in FIRSTS:
        while words[k] != f:
            k += 1
        idx.append(k)
        k += 1
    cases = []
    for pause in (0.0, 0.3):
        pcm = silence(0.3) + speech.joined(clips, "joined", pause).pcm + silence(1.0)
        x = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768
        v = vadmod.StreamVad(sess)
        for i in range(0, len(x), 1280):
            v.process(x[i : i + 1280])
        cases.append((x, v, true_starts(clips, 0.3, pause), 22.6 + 4 * pause))
    variants = {
        "turn-wide, by characters (the exports' interpolation, before)": "none",
        "voice detector segments only": "vad",
        "voice detector segments minus pauses (this)": "both",
    }
    print("| estimate | median abs error (s) | max abs error (s) | errors (s) |\n|---|---|---|---|")
    for label, how in variants.items():
        errs = []
        for x, v, truth, end in cases:
            a, b = int(0.32 * 16000), int(end * 16000)
            segs = [] if how == "none" else wordtimes.speech_segments(*v.probs_between(a, b), 0.32, end)
            if how == "both":
                segs = wordtimes.without(segs, wordtimes.quiet_gaps(x[a:b], a))
            est = wordtimes.estimate(TEXT, segs, 0.32, end)
            errs += [est[i]["start"] - t for i, t in zip(idx, truth, strict=True)]
        e = np.abs(errs)
        print(f"| {label} | {np.median(e):.2f} | {e.max():.2f} | {' '.join(f'{x:+.2f}' for x in errs)} |")


if __name__ == "__main__":
    main()
