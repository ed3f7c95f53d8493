"""Offline: the same turns decoded as finals by today's decoder (Moonshine tiny-en, onnxdecoder.py, greedy, with the
previous turn's ids as left context) and by Whisper tiny.en (webapp/local/whisper.py, with the previous turn's text as
its prompt), one thread each, no streaming (issue #22 item 4).

    flock /tmp/cpu.lock .venv/bin/python bench/whisper_finals.py [--compute-type int8] [--whisper-beams 1]

Turns: the recognizer's endpointer (tests/speech.py endpointer_turns) splits each clip: the 11 real clips, the
44 s reading, and the 5 consecutive LibriVox sentences joined; each turn gets the 0.5 s noise tail of a final decode.
Left context as the app's planner gives it: a turn that starts at most context_pause after the previous one, which
was at most context_seconds long. WER over all clips; sentence ends (tests/speech.py sentence_ends) on the clips
with a printed text; decode time per turn (wall, 1 thread); RSS after loading each model and after its decodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402

from webapp.local import moonshine  # noqa: E402
from webapp.local.onnxdecoder import OnnxDecoder  # noqa: E402
from webapp.local.planner import LOOK_BEHIND  # noqa: E402
from webapp.local.signal import RATE  # noqa: E402
from webapp.local.tuning import Tuning  # noqa: E402


def rss_mb() -> tuple[float, float]:
    v = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, n = line.split()[:2]
            v[k] = int(n) / 1024
    return v["VmRSS:"], v["VmHWM:"]


def turns_of(clip) -> list[tuple[np.ndarray, np.ndarray | None, float]]:
    """Per turn: its audio, the previous turn's audio up to this turn's start if it is the left context, the pause."""
    x = clip.samples.astype(np.float32) / 32768
    t = Tuning()
    out, prev = [], None
    turns = speech.endpointer_turns(clip.pcm)
    floor = turns[-1][1] if turns else 0
    rest = speech.speech_bounds(clip.pcm[2 * floor :], min_sound=0.1) if len(x) - floor > RATE // 2 else None
    if rest is not None and rest[1] - rest[0] > 0.3:  # speech still going at the clip's end: the stream's finalize
        on, last = floor + int(rest[0] * RATE), floor + int(rest[1] * RATE)
        turns.append((max(floor, on - int(LOOK_BEHIND * RATE)), len(x), last))
    for start, _end, last in turns:
        end = min(len(x), last + int(t.end_silence * RATE))
        onset = start + int(LOOK_BEHIND * RATE)
        ctx = None
        if prev is not None:
            pstart, plast = prev
            if onset - plast <= t.context_pause * RATE and plast - pstart <= t.context_seconds * RATE:
                if end - pstart <= 16 * RATE:
                    ctx = x[pstart:start]
        out.append((x[start:end], ctx, 0.0))
        prev = (start, last)
    return out


def pad(a: np.ndarray, rng) -> np.ndarray:
    tail = (rng.normal(0.0, 20.0, int(0.5 * RATE)) / 32768.0).astype(np.float32)
    return np.concatenate([a, tail]).astype(np.float32)


def run(name, clips, decode_turn):
    rng = np.random.default_rng(0)
    times, cpu, hyps = [], [], {}
    for c in clips:
        texts, prev = [], None  # prev: what the previous turn's decode returned (ids or text)
        for audio, ctx, _ in turns_of(c):
            t, c0 = time.perf_counter(), time.process_time()
            text, state = decode_turn(audio, ctx, prev if ctx is not None else None, rng)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c0)  # all threads (CTranslate2 decodes on its own)
            texts.append(text)
            prev = state
        hyps[c.name] = " ".join(x for x in texts if x)
    errors = sum(speech.edit_distance(speech.normalize(c.ref), speech.normalize(hyps[c.name])) for c in clips)
    words = sum(len(speech.normalize(c.ref)) for c in clips)
    sp = so = mi = pw = 0
    for c in clips:
        if c.text:
            a, b, m, n = speech.sentence_ends(c.text, hyps[c.name])
            sp, so, mi, pw = sp + a, so + b, mi + m, pw + n
    return {
        "name": name,
        "errors": errors,
        "words": words,
        "spurious": sp,
        "soft": so,
        "missed": mi,
        "pwords": pw,
        "p50": float(np.percentile(times, 50)),
        "p95": float(np.percentile(times, 95)),
        "max": max(times),
        "cpu50": float(np.percentile(cpu, 50)),
        "cpu95": float(np.percentile(cpu, 95)),
        "cpu_total": sum(cpu),
        "turns": len(times),
        "hyps": hyps,
    }


def main(args) -> None:
    clips = speech.real_clips()
    clips = clips + speech.long_clips() + [speech.joined(clips[:5], "librivox-joined")]
    if args.verbose:
        for c in clips:
            print(c.name, [round((b - a) / RATE, 1) for a, b, _ in speech.endpointer_turns(c.pcm)])
    audio_s = sum(c.duration for c in clips)
    results = []
    base = rss_mb()[0]
    print(f"baseline RSS {base:.0f} MB; {len(clips)} clips, {audio_s:.0f} s", flush=True)
    if "moonshine" in args.decoders:
        dec = OnnxDecoder(moonshine.model_path(), 1)
        dec.decode(np.zeros(RATE, np.float32))
        r0 = rss_mb()[0]

        def ms(audio, ctx, prev_ids, rng):
            if ctx is None:
                ids = dec.decode_ids(pad(audio, rng))
            else:
                ids = dec.decode_ids(pad(np.concatenate([ctx, audio]), rng), prev_ids)
            ids = tuple(ids or ())
            return dec.text(ids), ids  # the app's context: the previous turn's own ids

        r = run("moonshine (onnx, greedy, context ids)", clips, ms)
        r["rss_load"], r["rss_after"] = r0 - base, rss_mb()[0] - base
        results.append(r)
        print(r["name"], "done", flush=True)
    if "whisper" in args.decoders:
        from webapp.local.whisper import WhisperDecoder

        base_w = rss_mb()[0]
        wd = WhisperDecoder(beams=args.whisper_beams, compute_type=args.compute_type)
        wd.decode(np.zeros(RATE, np.float32))
        r0 = rss_mb()[0]

        def wh(audio, ctx, prev_text, rng):
            text = wd.decode(pad(audio, rng), prev_text or "")
            return text, text

        label = f"whisper tiny.en ({args.compute_type}, beams {args.whisper_beams}, prompt)"
        r = run(label, clips, wh)
        r["rss_load"], r["rss_after"] = r0 - base_w, rss_mb()[0] - base_w
        results.append(r)
        if args.no_prompt:
            r = run(label.replace("prompt", "no prompt"), clips, lambda a, c, p, rng: (wd.decode(pad(a, rng)), ""))
            r["rss_load"] = r["rss_after"] = float("nan")
            results.append(r)
        for spec in args.windows.split(
            ","
        ):  # "30": the turn zero-padded to 30 s (Whisper's own input); "+2": 2 s of zeros added
            if not spec:
                continue

            def whw(audio, ctx, prev_text, rng, spec=spec):
                a = pad(audio, rng)
                n = len(a) + int(float(spec[1:]) * RATE) if spec[0] == "+" else int(float(spec) * RATE)
                text = wd.decode(np.pad(a, (0, max(0, n - len(a)))), (prev_text or "") if args.window_prompt else "")
                return text, text

            r = run(
                label.replace("prompt", f"{'prompt' if args.window_prompt else 'no prompt'}, window {spec} s"),
                clips,
                whw,
            )
            r["rss_load"] = r["rss_after"] = float("nan")
            results.append(r)
    if args.verbose:
        for r in results:
            print(r["name"])
            for k, v in r["hyps"].items():
                print(f"  {k:16s} {v}")
    print()
    print(
        "| final decoder | WER | sentence ends: spurious (at , ; : -) / missed | decode/turn p50 | p95 | max "
        "| CPU/turn p50 | p95 | CPU s per audio s | RSS +load | +after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['name']} | {r['errors'] / r['words'] * 100:.1f}% ({r['errors']}/{r['words']}) | "
            f"{r['spurious']} ({r['soft']}) / {r['missed']} of {r['pwords']} words | {r['p50']:.3f} s | "
            f"{r['p95']:.3f} s | {r['max']:.3f} s | {r['cpu50']:.3f} s | {r['cpu95']:.3f} s | "
            f"{r['cpu_total'] / audio_s:.4f} | {r['rss_load']:.0f} MB | {r['rss_after']:.0f} MB |"
        )
    print(f"turns: {results[0]['turns']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoders", default="moonshine,whisper")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--whisper-beams", type=int, default=1)
    ap.add_argument("--no-prompt", action="store_true", help="also Whisper without the previous turn's text")
    ap.add_argument(
        "--windows",
        default="",
        help="also Whisper on these windows: 30 (seconds, zero-padded), +2 (2 s of zeros added), ...",
    )
    ap.add_argument(
        "--window-prompt", type=int, default=1, help="0: the --windows runs without the previous turn's text"
    )
    ap.add_argument("--verbose", action="store_true")
    main(ap.parse_args())
