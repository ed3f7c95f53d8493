"""What a viewer reads: real speech through headless Chromium's microphone, the default (embedded) recognizer, the
capture page and a viewer page in presentation mode, with screenshots (issue 22: whole sentences, calm interims).

    .venv/bin/python bench/browser_captions.py [--out bench/.out/captions] [--streams 1]

The microphone plays the 5 consecutive LibriVox sentences joined (speech.joined, one long turn with short pauses),
1.5 s of room noise, then the 44 s reading of "A Tale of Two Cities" (one long sentence of commas). `--streams 2`
adds a second capture page with the same recording (a 2-core host admits 6 streams by default).
Measured in the page (a MutationObserver on the viewer's transcript): every interim shown, how many of them changed
a word shown before other than its last (rewrites), and how many ended in . ? !; at the end, the viewer's finals
against the printed texts (spurious / missed sentence ends, tests/speech.py sentence_ends) and WER.
Screenshots: the capture page and the presenting viewer mid-speech (every 8 s) and at the end.
One run, bounded: the recording's length plus 60 s at most.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import wave
from itertools import pairwise
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

import speech  # noqa: E402
from browser import browser  # noqa: E402
from conftest import running_app  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

OBSERVER = """() => {
  const seen = window.__seen = { interims: [], finals: 0 };
  new MutationObserver(() => {
    const live = document.querySelector('#transcript .turn.interim');
    const text = live ? live.textContent.trim() : '';
    if (text && text !== seen.interims[seen.interims.length - 1]) seen.interims.push(text);
    seen.finals = document.querySelectorAll('#transcript .final').length;
  }).observe(document.querySelector('#transcript'), { subtree: true, childList: true, characterData: true });
}"""


def recording(path: Path) -> tuple[float, str, str]:
    clips = speech.real_clips()
    lv = speech.joined(clips[:5], "librivox-joined")
    reading = speech.long_clips()[0]
    rng = np.random.default_rng(7)
    noise = lambda s: rng.normal(0, 20, int(s * speech.RATE)).astype("<i2").tobytes()  # noqa: E731
    pcm = noise(0.8) + lv.pcm + noise(1.5) + reading.pcm + noise(2.0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(speech.RATE)
        w.writeframes(pcm)
    return len(pcm) / (2 * speech.RATE), lv.ref + " " + reading.ref, lv.text + " " + reading.text


def rewrites(interims: list[str]) -> tuple[int, int]:
    """(interims after a turn's first, of them the ones that changed a word of the previous other than its last)."""
    n = changed = 0
    for prev, cur in pairwise(interims):
        a, b = speech.normalize(prev)[:-1], speech.normalize(cur)
        if not a or len(b) < len(a) // 2:
            continue  # a new turn's interim
        n += 1
        changed += a != b[: len(a)]
    return n, changed


def main(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="captions-"))
    wav = tmp / "speech.wav"
    seconds, ref, printed = recording(wav)
    with running_app({"LOCAL_MAX_STREAMS": str(max(2, args.streams))}, tmp, "captions") as app, browser(wav) as b:
        ctx = b.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(app.http + "/")
        others = []
        for _ in range(args.streams - 1):
            other = ctx.new_page()
            other.goto(app.http + "/")
            others.append(other)
        page.click("#start")
        for other in others:
            other.click("#start")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=30000)
        expect(page.locator("#share-link")).to_contain_text("/v/", timeout=10000)
        link = page.locator("#share-link").inner_text().strip()
        viewer = b.new_context(viewport={"width": 1280, "height": 720}).new_page()
        viewer.goto(link)
        viewer.evaluate(OBSERVER)
        viewer.click("#present")
        t0 = time.monotonic()
        shot = 0
        while time.monotonic() - t0 < seconds + 2:
            time.sleep(8)  # screenshots at a fixed pace of the recording: nothing to await
            shot += 1
            page.screenshot(path=str(out / f"capture-{shot:02d}.png"))
            viewer.screenshot(path=str(out / f"viewer-present-{shot:02d}.png"))
        page.click("#stop")
        for other in others:
            other.click("#stop")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed", timeout=30000)
        page.screenshot(path=str(out / "capture-end.png"), full_page=True)
        viewer.keyboard.press("Escape")
        viewer.screenshot(path=str(out / "viewer-end.png"), full_page=True)
        finals = viewer.locator("#transcript .final").all_inner_texts()
        seen = viewer.evaluate("window.__seen")
    text = " ".join(t.strip() for t in finals)
    n, changed = rewrites(seen["interims"])
    spurious, soft, missed, words = speech.sentence_ends(printed, text)
    stops = sum(i.rstrip()[-1:] in ".?!" for i in seen["interims"])
    result = {
        "audio_s": round(seconds, 1),
        "finals": len(finals),
        "wer": round(speech.wer(ref, text), 3),
        "spurious_per_100": round(spurious * 100 / words, 2),
        "spurious": spurious,
        "spurious_at_commas": soft,
        "missed": missed,
        "interims_shown": len(seen["interims"]),
        "rewrite_rate": round(changed / max(1, n), 3),
        "interims_ending_stop": stops,
        "text": text,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / ".out" / "captions"))
    ap.add_argument("--streams", type=int, default=1)
    main(ap.parse_args())
