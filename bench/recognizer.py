"""Benchmark of the embedded recognizer through LocalUpstream (the relay's own code path for STT_BACKEND=local).

    .venv/bin/python bench/recognizer.py [--levels 1,2,4,6,8] [--gap 1.5] [--quick]

Each stream is one continuous "microphone" session: the real-speech clips (pocketsphinx-testdata, 96 words, and
the 44 s reading of "A Tale of Two Cities" from moonshine-voice's assets, 119 words; `--set short` leaves the reading
out) one after another with `gap` seconds of low-level noise between them, sent in 80 ms chunks at real-time pace.
Streams at the same level start together, each with the clips in a different order.
Definitions:
  end of speech / onset: from each clip's 20 ms energy envelope (tests/speech.py speech_bounds);
  EOT latency: wall time of the clip's last EndOfTurn minus the time the chunk holding its end of speech was sent;
  first interim: first interim transcript of the clip minus the time the chunk holding its onset was sent;
  keeps up (no stream falling behind): every clip got its EndOfTurn and the largest interim lag stays <= 1.5 s
  (latency percentiles are reported beside it, against their own targets);
  CPU RTF per stream: CPU seconds of the web + worker processes / (streams x audio seconds);
  memory: summed RSS of the web process and the workers, sampled every 0.25 s;
  sentence ends (clips with a printed text: the LibriVox ones and the reading; tests/speech.py sentence_ends):
  spurious = a . ? ! after a word where the printed text has no sentence end (per 100 printed words; also how many
  of them stand at a comma, colon, semicolon or dash), missed = a printed sentence end with none in the finals;
  interim rewrite rate: share of a turn's interims after its first that change a word of the previous interim other
  than its last; interim words vs final: word errors of each interim's words but its last against as many first
  words of the turn's final.
Every loop is bounded: fixed levels, fixed audio, a timeout per level.
--verbose prints every clip of every stream, --rewrites every interim rewrite (previous -> new interim, and where
each came from: onnx, cut = onnx from a cut, spec = an overtaken speculative final, line = libmoonshine's). --trace 1 makes the workers print one line per turn end on stderr
(silence at the commit, queue waits, decode time of the final, ...). Every field of webapp/local/tuning.py is a flag
(--end-silence 0.3, --cut-pause 0, --onnx-interims 0, ...); LOCAL_BEAMS and LOCAL_CONTEXT_SECONDS are read as by the app.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402
from webapp import config  # noqa: E402
from webapp import local as recognizer  # noqa: E402
from webapp.local import tuning  # noqa: E402
from webapp.protocol import StreamParams  # noqa: E402
from webapp.upstreams.local import LocalUpstream  # noqa: E402

CHUNK = 2560  # 80 ms
RATE = speech.RATE


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def pids(pool) -> list[int]:
    return [os.getpid()] + [w.proc.pid for w in pool.workers]


def build_session(clips, order, gap: float, seed: int):
    """PCM of the whole session and, per clip, (clip, start, onset, eos) in seconds of the session."""
    rng = np.random.default_rng(seed)

    def noise(seconds: float, c) -> bytes:
        """Gaussian noise at the clip's own background level (as one microphone would give)."""
        rms = 10 ** (speech.noise_floor_db(c.pcm) / 20) * 32768
        return np.clip(rng.normal(0, rms, int(seconds * RATE)), -32768, 32767).astype("<i2").tobytes()

    parts, marks, pos = [noise(0.5, clips[order[0]])], [], 0.5
    for i in order:
        c = clips[i]
        on, eos = speech.speech_bounds(c.pcm, min_sound=0.1)  # a click 0.6 s before a reading is not its onset
        marks.append((c, pos, pos + on, pos + eos))
        parts += [c.pcm, noise(gap, c)]
        pos += c.duration + gap
    return b"".join(parts), marks


async def run_stream(settings, pcm: bytes, marks, t0: float):
    up = LocalUpstream(settings, StreamParams())
    events = []  # (wall, event)
    # each interim event carries the worker's source of the update (stream.Stream._send_update), for --rewrites
    on_event, emit, src = up._on_event, up.turns._emit, [None]

    def tagged_event(kind, data):
        src[0] = data.get("source") if kind == "update" else None
        on_event(kind, data)

    def tagged_emit(event):
        if event.get("type") == "transcript" and not event.get("final"):
            event = dict(event, source=src[0])
        emit(event)

    up._on_event, up.turns._emit = tagged_event, tagged_emit  # (before connect(): the pool keeps the callback)
    await up.connect()

    async def reader():
        async for ev in up.events():
            events.append((time.monotonic(), ev))

    task = asyncio.create_task(reader())
    sent = []  # wall time chunk k was sent
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK / (2 * RATE) - time.monotonic()))  # pacing only
        up.send_audio(pcm[i : i + CHUNK])
        sent.append(time.monotonic())
    await up.close()
    await asyncio.wait_for(task, 30)
    return score(events, sent, marks)


def score(events, sent, marks):
    wall_at = lambda t: sent[min(len(sent) - 1, int(t * 2 * RATE) // CHUNK)]
    # turn index -> (first interim wall, final text, final end time, EndOfTurn wall, first interim start)
    turns: dict[int, dict] = {}
    lags = []
    rewrites, ends = [], []  # per interim after a turn's first: it rewrote a shown word; it ends with . ? !
    shown = []  # per rewrite: (audio end, source of the previous interim, source, previous text, text)
    late = []  # per final: its arrival minus the time the chunk holding its audio end was sent
    drift = [0, 0]  # interims' words but their last that the turn's final does not have there: errors, words
    for wall, ev in events:
        if ev["type"] == "transcript":
            t = turns.setdefault(ev["turn"], {})
            if not ev["final"]:
                prev = t.get("last")
                if prev is not None:
                    # a rewrite: a word of the previous interim, other than its last (it may still grow), changed
                    a, b = speech.normalize(prev)[:-1], speech.normalize(ev["text"])
                    rewrites.append(a != b[: len(a)])
                    if rewrites[-1]:
                        shown.append((ev["end"], t.get("source"), ev.get("source"), prev, ev["text"]))
                    ends.append(ev["text"].rstrip()[-1:] in ".?!")
                t["last"] = ev["text"]
                t["source"] = ev.get("source")
                t.setdefault("interims", []).append(ev["text"])
                t.setdefault("first", wall)
                t.setdefault("start", ev["start"])
                lags.append((wall - wall_at(ev["end"]), ev["end"], ev["text"][-60:]))
            else:
                t.update(text=ev["text"], end=ev["end"], start=t.get("start", ev["start"]))
                final = speech.normalize(ev["text"])
                for text in t.get("interims", []):
                    w = speech.normalize(text)[:-1]
                    drift[0] += speech.edit_distance(final[: len(w)], w)
                    drift[1] += len(w)
                late.append(wall - wall_at(ev["end"]))
        elif ev["type"] == "turn" and ev["event"] == "EndOfTurn":
            turns.setdefault(ev["turn"], {})["eot"] = wall
    out = []
    bounds = [m[1] for m in marks[1:]] + [1e9]
    for (c, start, onset, eos), nxt in zip(marks, bounds):
        mine = [t for t in turns.values() if "end" in t and start - 0.3 <= t["end"] < nxt - 0.3]
        hyp = " ".join(t["text"] for t in mine)
        errors = speech.edit_distance(speech.normalize(c.ref), speech.normalize(hyp))
        eot = max((t["eot"] for t in mine if "eot" in t), default=None)
        first = min((t["first"] for t in mine if "first" in t), default=None)
        ends_found = speech.sentence_ends(c.text, hyp) if c.text else (0, 0, 0, 0)
        out.append(
            {
                "clip": c.name,
                "words": len(speech.normalize(c.ref)),
                "errors": errors,
                "hyp": hyp,
                "sentence_ends": ends_found,
                "eot": None if eot is None else eot - wall_at(eos),
                "first": None if first is None else first - wall_at(onset),
            }
        )
    return (
        out,
        max(lags, default=(0.0, 0.0, "")),
        (late, rewrites, ends, drift, shown),
    )  # the most behind interim: (lag, its end, its text's end)


def pct(values, q):
    """Linear interpolation between the nearest ranks (numpy's default): with 12 clips, a nearest-rank p95 would be
    the second-slowest clip and ignore the slowest altogether."""
    return float(np.percentile(values, q)) if values else float("nan")


async def run_level(settings, pool, clips, n: int, gap: float, timeout: float):
    sessions = [build_session(clips, list(np.roll(np.arange(len(clips)), -3 * k)), gap, seed=k) for k in range(n)]
    audio = sum(len(s[0]) for s in sessions) / (2 * RATE)
    procs = pids(pool)
    cpu0 = sum(cpu_seconds(p) for p in procs)
    peak = [0]
    stop = asyncio.Event()

    async def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], sum(rss_kb(p) for p in procs))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    st = asyncio.create_task(sampler())
    t0 = time.monotonic() + 0.2
    results = await asyncio.wait_for(asyncio.gather(*(run_stream(settings, p, m, t0) for p, m in sessions)), timeout)
    stop.set()
    await st
    cpu = sum(cpu_seconds(p) for p in procs) - cpu0
    rows = [r for res, _, _ in results for r in res]
    late = [x for _, _, lt in results for x in lt[0]]
    rewrites = [x for _, _, lt in results for x in lt[1]]
    ends = [x for _, _, lt in results for x in lt[2]]
    drift = [sum(lt[3][i] for _, _, lt in results) for i in (0, 1)]
    shown = [(k, *x) for k, (_, _, lt) in enumerate(results) for x in lt[4]]
    worst = max((lag for _, lag, _ in results), key=lambda lag: lag[0])
    max_lag = worst[0]
    eots = [r["eot"] for r in rows if r["eot"] is not None]
    firsts = [r["first"] for r in rows if r["first"] is not None]
    missing = sum(r["eot"] is None for r in rows)
    words = sum(r["words"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    keeps_up = missing == 0 and max_lag <= 1.5
    # sentence ends, on the clips with a printed reference (speech.PUNCTUATED and the reading)
    spurious, soft, missed, punct_words = (sum(r["sentence_ends"][i] for r in rows) for i in range(4))
    return {
        "n": n,
        "wer": errors / words,
        "errors": errors,
        "words": words,
        "rtf": cpu / audio,
        "eot50": pct(eots, 50),
        "eot95": pct(eots, 95),
        "eotmax": max(eots, default=float("nan")),
        "first50": pct(firsts, 50),
        "first95": pct(firsts, 95),
        "missing": missing,
        "max_lag": max_lag,
        "worst": worst,
        "late50": pct(late, 50),
        "late95": pct(late, 95),
        "latemax": max(late, default=float("nan")),
        "rewrite": float(np.mean(rewrites)) if rewrites else float("nan"),
        "rewrites": shown,
        "interims": len(rewrites),
        "ends": float(np.mean(ends)) if ends else float("nan"),
        "drift": drift[0] / max(1, drift[1]),
        "spurious": spurious,
        "spurious_soft": soft,
        "missed": missed,
        "punct_words": punct_words,
        "peak_mb": peak[0] / 1024,
        "keeps_up": keeps_up,
        "rows": rows,
    }


async def main(args):
    operator = {k: v for k, v in os.environ.items() if k in ("LOCAL_BEAMS", "LOCAL_CONTEXT_SECONDS")}
    settings = config.load(operator, local_max_streams=max(args.levels))
    clips = speech.real_clips()
    if args.quick:
        clips = clips[:2] + clips[5:7]
    elif args.set == "sentences":
        clips = [speech.joined(clips[:5], "librivox-joined"), *speech.long_clips()]
    elif args.set == "all":
        clips += speech.long_clips()
    base_rss_before = rss_kb(os.getpid())
    t = time.monotonic()
    tune = tuning.from_arguments(args, **vars(recognizer.Tuning.from_settings(settings)))
    pool = await recognizer.get_pool(settings, tune)
    load = time.monotonic() - t
    await asyncio.sleep(0.5)  # only to let RSS settle after the warm-up decode
    idle_mb = sum(rss_kb(p) for p in pids(pool)) / 1024
    print(
        f"pool: {pool.n_workers} workers, start+warm-up {load:.2f} s, idle RSS {idle_mb:.0f} MB "
        f"(web process before pool {base_rss_before / 1024:.0f} MB)"
    )
    results = []
    try:
        for n in args.levels:
            r = await run_level(settings, pool, clips, n, args.gap, timeout=args.timeout)
            results.append(r)
            print(
                f"N={n}: WER {r['wer'] * 100:.1f}% EOT p50 {r['eot50']:.2f} p95 {r['eot95']:.2f} "
                f"first p50 {r['first50']:.2f} max lag {r['max_lag']:.2f} "
                f"(at {r['worst'][1]:.2f} s: ...{r['worst'][2]!r}) "
                f"keeps up {r['keeps_up']} | final lateness p50 {r['late50']:.2f} p95 {r['late95']:.2f} "
                f"max {r['latemax']:.2f} | interim rewrite rate {r['rewrite'] * 100:.1f}% "
                f"interims ending . ? ! {r['ends'] * 100:.1f}% | interim words vs final {r['drift'] * 100:.1f}% WER",
                flush=True,
            )
            per100 = lambda x: x * 100 / max(1, r["punct_words"])
            print(
                f"    sentence ends ({r['punct_words']} printed words): spurious {per100(r['spurious']):.1f}/100 words "
                f"({r['spurious']}; {r['spurious_soft']} of them at , ; : -), missed {r['missed']}",
                flush=True,
            )
            sets = {}
            for row in r["rows"]:
                e = sets.setdefault("reading" if row["clip"] == "two-cities" else "clips", [0, 0])
                e[0] += row["errors"]
                e[1] += row["words"]
            print("    WER by set: " + ", ".join(f"{k} {e / w * 100:.1f}% ({e}/{w})" for k, (e, w) in sets.items()))
            if n == args.levels[0] or args.verbose:
                for row in r["rows"] if args.verbose else r["rows"][: len(clips)]:
                    print(
                        f"    {row['clip']:10s} err {row['errors']} eot {row['eot'] if row['eot'] is None else round(row['eot'], 2)}"
                        f" first {row['first'] if row['first'] is None else round(row['first'], 2)}  {row['hyp']!r}"
                    )
            if args.rewrites:
                kinds: dict[str, int] = {}
                for k, at, before, now, prev, text in r["rewrites"]:
                    kinds[f"{before}->{now}"] = kinds.get(f"{before}->{now}", 0) + 1
                    print(f"    rewrite s{k} {at:7.2f} s {before}->{now}: {prev!r}\n{'':26s}-> {text!r}")
                print(
                    f"    rewrites {len(r['rewrites'])} of {r['interims']} interims after a turn's first, by source "
                    "(previous->new): " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
                )
            if not r["keeps_up"] and n >= 6:
                break  # higher levels would only fall further behind
    finally:
        recognizer.shutdown()

    print()
    print(
        "| streams | WER | CPU RTF/stream | EOT p50 | EOT p95 | EOT max | 1st interim p50 | p95 | missing EOT | max interim lag | peak RSS | RSS/extra stream | keeps up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        per = (r["peak_mb"] - idle_mb) / r["n"]
        print(
            f"| {r['n']} | {r['wer'] * 100:.1f}% ({r['errors']}/{r['words']}) | {r['rtf'] / 1:.3f} | {r['eot50']:.2f} s | "
            f"{r['eot95']:.2f} s | {r['eotmax']:.2f} s | {r['first50']:.2f} s | {r['first95']:.2f} s | {r['missing']} | "
            f"{r['max_lag']:.2f} s | {r['peak_mb']:.0f} MB | {per:.1f} MB | {'yes' if r['keeps_up'] else 'NO'} |"
        )
    held = [r["n"] for r in results if r["keeps_up"]]
    print(
        f"\nmost concurrent real-time streams held: {max(held) if held else 0} (levels tried: {[r['n'] for r in results]})"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,4,6,8", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--gap", type=float, default=1.5, help="seconds of noise between clips")
    ap.add_argument("--timeout", type=float, default=180.0, help="per level, seconds")
    ap.add_argument(
        "--set",
        choices=["all", "short", "sentences"],
        default="all",
        help="all: the 11 pocketsphinx clips and the 44 s two_cities reading; short: the 11 clips; "
        "sentences: long turns (the 5 consecutive LibriVox sentences joined (their own 0.1 s margins only), "
        "a 7 s and a 15 s turn, and the two_cities reading)",
    )
    ap.add_argument("--quick", action="store_true", help="4 short clips only")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument(
        "--rewrites", action="store_true", help="list every interim rewrite with the sources of both interims"
    )
    tuning.add_arguments(ap)
    asyncio.run(main(ap.parse_args()))
