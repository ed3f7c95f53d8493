"""How long one caption takes from ObsDestination.deliver() to OBS, on loopback, against the obs-websocket
simulator (tests/fake_obs.py, its own thread and event loop, as OBS is its own process): p50/p99/max over
N captions, and until deliver() returns (OBS's RequestResponse read), with and without the stream-status cache expiring (each expiry costs one GetStreamStatus round trip
before the caption), plus the CPU each caption costs this process (client + simulator).

    flock /tmp/cpu.lock /work/main/.venv/bin/python bench/obs_latency.py [--captions 200]

Bounded: N captions (default 200) per mode, a few seconds in all.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_obs import FakeObs  # noqa: E402

from webapp.outputs.base import Caption  # noqa: E402
from webapp.outputs.obs import ObsDestination  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(n: int, status_ttl: float, label: str) -> None:
    sim = FakeObs(password="bench-password").start()
    dest = ObsDestination(sim.url, "bench-password", status_ttl=status_ttl)
    try:
        await dest.start()
        starts: list[float] = []
        rtt: list[float] = []
        cpu0 = time.process_time()
        for i in range(n):
            text = f"Caption {i}: the quick brown fox jumps over the lazy dog {i}."
            starts.append(time.monotonic())
            assert await dest.deliver(Caption("bench", i, text, 0.0, 1.0, time.time(), seq=i), i)
            rtt.append((time.monotonic() - starts[-1]) * 1000)
        cpu = time.process_time() - cpu0
        assert sim.wait_for(lambda: len(sim.captions) == n, 5)
        lat = [(arrived - started) * 1000 for (arrived, _), started in zip(sim.captions, starts, strict=True)]
        print(
            f"{label:<34} n={n}  deliver→OBS p50 {statistics.median(lat):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  "
            f"max {max(lat):.2f} ms  deliver() returns p50 {statistics.median(rtt):.2f} ms  p99 {pct(rtt, 0.99):.2f} ms"
            f"  CPU {cpu / n * 1e6:.0f} µs/caption  status requests "
            f"{sim.requests.count('GetStreamStatus')}"
        )
    finally:
        await dest.close()
        sim.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=200)
    n = min(parser.parse_args().captions, 5000)
    await run(n, 2.0, "status cached (ttl 2 s)")
    await run(n, 0.0, "status asked before every caption")


if __name__ == "__main__":
    asyncio.run(main())
