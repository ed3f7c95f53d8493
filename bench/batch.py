"""Benchmark of local batch transcription (webapp/upstreams/batch.py transcribe_local, the code path of
POST /v1/audio/transcriptions with STT_BACKEND=local), alone and beside live streams.

    flock /tmp/cpu.lock timeout 600 .venv/bin/python bench/batch.py [--passes 6] [--live 4] [--set short]

The "recording": the real-speech clips of bench/recognizer.py (pocketsphinx-testdata and the 44 s two_cities
reading, 215 words) one after another with 1.5 s of noise between them, `--passes` times in different orders
(6 passes: about 10 minutes). Phases, one after another:
  1. batch alone: the recording through a batch job; real-time factor = wall seconds / audio seconds, and WER;
  2. live alone: `--live` real-time streams (bench/recognizer.py run_level, its `--set`), end-of-turn p50/p95;
  3. live + batch: the same live streams while the recording is transcribed again (started with them);
     their end-of-turn p50/p95 (target: p95 <= 1 s) and the batch's RTF under that load;
     2 and 3 alternate `--rounds` times (other work on a shared machine drifts; alternation spreads it);
  4. batch of live stream 0's own session audio: WER batch vs live on the same audio.
Every phase is bounded (fixed audio, a timeout each).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import recognizer as live_bench  # noqa: E402  (bench/recognizer.py: the live-stream machinery)
import speech  # noqa: E402

from webapp import config  # noqa: E402
from webapp import local as recognizer  # noqa: E402
from webapp.upstreams.batch import transcribe_local  # noqa: E402

RATE = speech.RATE


def recording(clips, passes: int, gap: float) -> tuple[bytes, str]:
    pcm, refs = [], []
    for k in range(passes):
        order = list(np.roll(np.arange(len(clips)), -5 * k))
        part, marks = live_bench.build_session(clips, order, gap, seed=100 + k)
        pcm.append(part)
        refs += [m[0].ref for m in marks]
    return b"".join(pcm), " ".join(refs)


async def batch_job(settings, pcm: bytes, pool) -> dict:
    async def chunks():
        for i in range(0, len(pcm), 2 * RATE):
            yield pcm[i : i + 2 * RATE]

    segments = []
    pid = pool.batch_worker.proc.pid if pool.batch_worker else None
    cpu0 = live_bench.cpu_seconds(pid) if pid else 0.0
    t = time.monotonic()
    transcript = await transcribe_local(settings, chunks(), segments.append, lambda s: None, lambda s: None)
    wall = time.monotonic() - t
    pid = pool.batch_worker.proc.pid
    cpu = live_bench.cpu_seconds(pid) - cpu0
    audio = len(pcm) / (2 * RATE)
    return {"audio": audio, "wall": wall, "rtf": wall / audio, "cpu_rtf": cpu / audio, "text": transcript.full_text,
            "segments": len(segments)}


async def main(args) -> None:
    settings = config.load({}, local_max_streams=max(6, args.live))
    clips = speech.real_clips() + speech.long_clips()
    pcm, ref = recording(clips, args.passes, 1.5)
    live_clips = speech.real_clips() if args.set == "short" else clips
    pool = await recognizer.get_pool(settings)
    print(f"recording: {len(pcm) / (2 * RATE) / 60:.1f} min, {len(speech.normalize(ref))} words; "
          f"{pool.n_workers} live workers, cores {os.cpu_count()}", flush=True)
    loads: list[float] = []
    try:
        # warm the batch worker (its start is a one-off, like the first upload after a restart)
        warm = await batch_job(settings, clips[0].pcm, pool)
        print(f"batch worker warm (first job {warm['wall']:.1f} s)", flush=True)

        alone = await asyncio.wait_for(batch_job(settings, pcm, pool), args.timeout)
        alone["wer"] = speech.wer(ref, alone["text"])
        loads.append(os.getloadavg()[0])  # other work on the machine (the lock covers benchmarks only)
        print(f"1. batch alone: RTF {alone['rtf']:.3f} (wall {alone['wall']:.1f} s for {alone['audio']:.0f} s), "
              f"CPU RTF {alone['cpu_rtf']:.3f}, WER {alone['wer'] * 100:.1f}%, {alone['segments']} segments", flush=True)

        lives, boths, besides = [], [], []
        for r in range(args.rounds):  # alternated, so drifting load from other work falls on both alike
            live = await live_bench.run_level(settings, pool, live_clips, args.live, 1.5, args.timeout)
            loads.append(os.getloadavg()[0])  # other work on the machine (the lock covers benchmarks only)
            print(f"2.{r + 1} {args.live} live alone: EOT p50 {live['eot50']:.2f} p95 {live['eot95']:.2f} "
                  f"max {live['eotmax']:.2f}, WER {live['wer'] * 100:.1f}%, missing {live['missing']}", flush=True)
            job = asyncio.create_task(asyncio.wait_for(batch_job(settings, pcm, pool), args.timeout))
            both = await live_bench.run_level(settings, pool, live_clips, args.live, 1.5, args.timeout)
            beside = await job
            beside["wer"] = speech.wer(ref, beside["text"])
            loads.append(os.getloadavg()[0])
            print(f"3.{r + 1} {args.live} live + batch: EOT p50 {both['eot50']:.2f} p95 {both['eot95']:.2f} "
                  f"max {both['eotmax']:.2f}, live WER {both['wer'] * 100:.1f}%, missing {both['missing']}; "
                  f"batch RTF {beside['rtf']:.3f}, WER {beside['wer'] * 100:.1f}%", flush=True)
            lives.append(live)
            boths.append(both)
            besides.append(beside)

        session, marks = live_bench.build_session(live_clips, list(np.arange(len(live_clips))), 1.5, seed=0)
        same = await batch_job(settings, session, pool)
        same_ref = " ".join(m[0].ref for m in marks)
        same["wer"] = speech.wer(same_ref, same["text"])
        loads.append(os.getloadavg()[0])  # other work on the machine (the lock covers benchmarks only)
        print(f"4. batch of live stream 0's audio: WER {same['wer'] * 100:.1f}%", flush=True)
    finally:
        recognizer.shutdown()
    n = len(live_clips)
    print()
    print("| run | audio | wall | RTF (wall/audio) | batch WER | live EOT p50 | live EOT p95 | live EOT max | "
          "live WER | missing EOT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| batch alone | {alone['audio']:.0f} s | {alone['wall']:.1f} s | {alone['rtf']:.3f} | "
          f"{alone['wer'] * 100:.1f}% | | | | | |")
    for r, (live, both, beside) in enumerate(zip(lives, boths, besides, strict=True), 1):
        print(f"| round {r}: {args.live} live streams alone | | | | | {live['eot50']:.2f} s | {live['eot95']:.2f} s | "
              f"{live['eotmax']:.2f} s | {live['wer'] * 100:.1f}% | {live['missing']} |")
        print(f"| round {r}: {args.live} live streams + batch | {beside['audio']:.0f} s | {beside['wall']:.1f} s | "
              f"{beside['rtf']:.3f} | {beside['wer'] * 100:.1f}% | {both['eot50']:.2f} s | {both['eot95']:.2f} s | "
              f"{both['eotmax']:.2f} s | {both['wer'] * 100:.1f}% | {both['missing']} |")
    print(f"| batch of live stream 0's audio | {same['audio']:.0f} s | {same['wall']:.1f} s | {same['rtf']:.3f} | "
          f"{same['wer'] * 100:.1f}% | | | | stream 0: "
          + " / ".join(f"{live_wer(x, n) * 100:.1f}%" for x in lives + boths) + " | |")
    print(f"load average (1 min) at the phases' ends: {', '.join(f'{x:.1f}' for x in loads)}")
    ok = all(b["eot95"] <= 1.0 and b["missing"] == 0 for b in boths)
    print(f"\ntarget (live EOT p95 <= 1 s during an upload): {'met' if ok else 'NOT met'} in every round")


def live_wer(level: dict, n_clips: int) -> float:
    """Stream 0's WER in a run_level result (its rows come first, one per clip)."""
    rows = level["rows"][:n_clips]
    return sum(r["errors"] for r in rows) / max(1, sum(r["words"] for r in rows))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=6, help="passes over the clips in the recording (6: ~10 min)")
    ap.add_argument("--live", type=int, default=4, help="live streams beside the upload")
    ap.add_argument("--set", choices=["all", "short"], default="short", help="the live streams' clips (recognizer.py)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of live alone / live + batch")
    ap.add_argument("--timeout", type=float, default=240.0, help="per phase, seconds")
    asyncio.run(main(ap.parse_args()))
