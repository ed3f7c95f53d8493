"""Soak: K real-time streams for D seconds through the relay (`python -m webapp`, deepgram backend) against the
upstream simulator, with every upstream connection dropped after 60 s of its audio. Prints the relay's memory
over time, the reconnect gap (client-side: `status: reconnecting` to `status: live`), and checks that every
stream's transcript has each scripted turn exactly once. Bounded: it stops after D seconds of audio.

    .venv/bin/python bench/soak.py                 # 20 streams, 600 s (the documented run)
    .venv/bin/python bench/soak.py --streams 5 --seconds 90   # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_app, stop_app  # noqa: E402
from simulator import Simulator, schedule  # noqa: E402

FRAME = 2560
DROP_AFTER_S = 60


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def stream(url: str, pcm: bytes, seconds: float, offset: float) -> dict:
    await asyncio.sleep(offset)  # stagger the starts so drops do not all coincide
    out = {"finals": [], "gaps": [], "errors": []}
    down_at = None
    async with connect(url, compression=None) as ws:
        async def read():
            nonlocal down_at
            async for raw in ws:
                m = json.loads(raw)
                if m["type"] == "transcript" and m["final"]:
                    out["finals"].append(m["text"])
                elif m["type"] == "status":
                    if m["state"] == "reconnecting":
                        down_at = time.monotonic()
                    elif down_at is not None:
                        out["gaps"].append(time.monotonic() - down_at)
                        down_at = None
                elif m["type"] in ("error", "gap"):
                    out["errors"].append(m)
        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        n = int(seconds * 32000) // FRAME
        for k in range(n):
            await ws.send(pcm[k * FRAME:(k + 1) * FRAME])
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.08 - time.monotonic()))  # real-time pace
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, 30)
    return out


async def main(args) -> int:
    words = [f"w{i}" for i in range(6)]
    script = [[f"{w}t{t}" for w in words] for t in range(int(args.seconds / 2) + 10)]
    plan = schedule(script, 300, 400)
    pcm = np.random.default_rng(11).integers(-3000, 3000, int((args.seconds + 5) * 16000), dtype=np.int16).tobytes()
    expected = [" ".join(w for w, _ in turn["words"]) for turn in plan if turn["end"] <= args.seconds - 0.5]

    sim = Simulator(script=script).start()
    sim.script, sim.reference = script, pcm
    sim.faults.drop_after_bytes, sim.faults.connections = DROP_AFTER_S * 32000, 10 ** 9
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "soak", "DEEPGRAM_URL": f"{sim.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "30", "LOG_LEVEL": "warning", "IDLE_TIMEOUT": "60"}
    app = start_app(env, tmp, "soak")
    samples = [(0.0, rss_mb(app.proc.pid))]
    try:
        t0 = time.monotonic()

        async def sampler():
            while True:
                await asyncio.sleep(args.sample_every)
                samples.append((time.monotonic() - t0, rss_mb(app.proc.pid)))

        sampling = asyncio.create_task(sampler())
        results = await asyncio.gather(*[stream(f"{app.ws}/ws/listen", pcm, args.seconds, i * 0.37)
                                         for i in range(args.streams)])
        sampling.cancel()
        samples.append((time.monotonic() - t0, rss_mb(app.proc.pid)))
    finally:
        stop_app(app)
        sim.stop()

    print(f"\nsoak: {args.streams} streams x {args.seconds:.0f} s of real-time audio through the relay; "
          f"each upstream connection dropped after {DROP_AFTER_S} s of its audio\n")
    print("| t (s) | relay RSS (MB) |\n|---|---|")
    for t, mb in samples:
        print(f"| {t:.0f} | {mb:.1f} |")
    warm = [mb for t, mb in samples if t >= min(60, args.seconds / 3)]
    if len(warm) >= 2:
        ts = [t for t, mb in samples if t >= min(60, args.seconds / 3)]
        slope = np.polyfit(ts, warm, 1)[0] * 60
        print(f"\nRSS after warm-up: min {min(warm):.1f} MB, max {max(warm):.1f} MB, slope {slope:+.2f} MB/min")
    gaps = sorted(g for r in results for g in r["gaps"])
    if gaps:
        print(f"reconnect gap (reconnecting -> live), {len(gaps)} reconnects: median {statistics.median(gaps) * 1000:.0f} ms, "
              f"p95 {gaps[int(0.95 * (len(gaps) - 1))] * 1000:.0f} ms, max {gaps[-1] * 1000:.0f} ms")
    ok = sum(r["finals"][:len(expected)] == expected for r in results)
    dups = sum(len(r["finals"]) - len(set(r["finals"])) for r in results)
    errors = sum(len(r["errors"]) for r in results)
    print(f"transcripts complete and in order: {ok}/{args.streams} streams ({len(expected)} turns each); "
          f"duplicated finals: {dups}; error/gap events: {errors}")
    return 0 if ok == args.streams and dups == 0 and errors == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--sample-every", type=float, default=15.0)
    sys.exit(asyncio.run(main(p.parse_args())))
