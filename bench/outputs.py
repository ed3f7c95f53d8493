"""Caption outputs benchmark (issue 19): one session feeding 4 outputs of each kind (youtube, zoom, webhook, obs).

    flock /tmp/cpu.lock .venv/bin/python bench/outputs.py [--seconds 20] [--per-kind 4] [--dead-obs stall|stopped]

Everything on 127.0.0.1: the upstream simulator (tests/simulator.py, Flux wire format), the receiver
simulators (tests/receivers.py, which check the documented formats) and the obs-websocket simulators
(tests/fake_obs.py: streaming, with a password) in this process, the app as users run it (`python -m webapp`,
SQLite store) in its own process; audio paced in real time. Three sessions of the same script, one after the
other:
  none     no outputs (the baseline)
  outputs  4 outputs of each kind, every receiver healthy
  dead     the same, with one receiver of each kind dead: the HTTP ones close connections unanswered; the OBS one
           stalls (connects and identifies, never answers a request: a hung OBS) or, with --dead-obs stopped, is
           not listening at all (OBS closed)
Checked: every post at the HTTP receivers (their format checks: no violation); at each live OBS the caption words
arrive once and in order (the script's words, early parts and remainders joined), every row <= 32 characters,
at most 2 rows and 128 bytes; the dead receivers get nothing.
Measured:
  final latency  for each final, a receiver's receipt of the post that completes that turn minus the speaker
                 socket's receipt of the final (time.time() in this one process; FakeObs's monotonic times are
                 mapped to it), also per kind
  word lag       for each word, its receipt at a YouTube receiver minus when the speaker finished saying it (the
                 simulator hears word i of a turn at its (i+1) x 0.3 s of audio): what the early sends buy
  speaker        the relay's own latency for the speaker's finals, with and without outputs
  CPU            the app process's user+system CPU over each session; (outputs - none) / captions delivered
Bounded: at most 120 s of audio per session and 16 outputs per kind; every wait has a timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

FRAME, FRAME_SECONDS = 2560, 0.08
WORD_S, EOT_S = 0.3, 0.4
# Short and long turns: the long ones are sent early, in parts.
SCRIPT = [
    "Good morning everyone.",
    "Welcome to the service on this cold winter day, and thank you all for coming through the snow.",
    "Please take a seat.",
    "We begin with a reading from the book of Ruth, chapter one, read for us this morning by Margaret.",
    "Thank you.",
    "After the reading we will sing together, and then the children will go to their classes downstairs.",
]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def script_turns(seconds: float) -> list[list[str]]:
    turns, total = [], 0.0
    while True:
        for line in SCRIPT:
            words = line.split()
            total += len(words) * WORD_S + EOT_S
            if total > seconds - 0.5:
                return turns
            turns.append(words)


@dataclass
class ObsPost:
    """One caption an OBS simulator accepted, shaped like receivers.Post (text with its rows joined)."""

    text: str
    at: float  # time.time()
    rows: list[str]


class ObsReceiver:
    """A FakeObs (tests/fake_obs.py) as the bench sees a receiver: name, url, captions as posts, dead or not."""

    kind = "obs"

    def __init__(self, name: str, password: str):
        from fake_obs import FakeObs

        self.name, self.password = name, password
        self.obs = FakeObs(password=password, streaming=True).start()
        self.origin = self.url = self.obs.url
        self.is_down = False
        self.mode = "stall"

    @property
    def captions(self) -> list[ObsPost]:
        shift = time.time() - time.monotonic()  # FakeObs stamps with time.monotonic(), the bench uses time.time()
        with self.obs._changed:
            raw = list(self.obs.captions)
        return [ObsPost(" ".join(t.split("\n")), at + shift, t.split("\n")) for at, t in raw]

    @property
    def violations(self) -> list[str]:
        bad = []
        for post in self.captions:
            if len(post.rows) > 2 or any(len(row) > 32 for row in post.rows) or len("\n".join(post.rows).encode()) > 128:
                bad.append(f"not two CEA-608 rows: {post.rows!r}")
        return bad

    def reset(self) -> None:
        with self.obs._changed:
            self.obs.captions.clear()
            self.obs.requests.clear()
        self.obs.stall = False
        self.is_down = False

    def down(self, mode: str) -> None:
        self.is_down, self.mode = True, mode
        if mode == "stopped":
            self.obs.stop()  # nothing listens: every connect is refused
        else:
            self.obs.stall = True

    def stop(self) -> None:
        self.obs.stop()


def final_posts(receiver, turns: list[list[str]]) -> dict[int, float]:
    """Turn index -> when the receiver got the post that completes it."""
    out: dict[int, float] = {}
    if type(receiver).__name__ == "WebhookReceiver":
        finals = [p for p in receiver.payloads if p["final"]]
        for i, (p, c) in enumerate(zip(finals, [c for c in receiver.captions if c.final], strict=False)):
            out[i] = c.at
        return out
    ends, total = [], 0
    for words in turns:
        total += len(words)
        ends.append(total)
    count, k = 0, 0
    for post in receiver.captions:
        count += len(post.text.split())
        while k < len(ends) and count >= ends[k]:
            out[k] = post.at
            k += 1
    return out


async def session(app, cookie, turns, sim, add=None) -> dict:
    from test_sharing import Socket
    from client import frames, tone_pcm
    sim.reset(script=turns)
    speaker = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Cookie": cookie})
    await speaker.until(lambda s: s.ready)
    if add:
        add(speaker.ready["session_id"])
    seconds = sum(len(t) * WORD_S + EOT_S for t in turns) + 0.6
    cpu0, t0 = cpu_seconds(app.proc.pid), time.time()
    sent: list[float] = []
    finals_at: dict[int, float] = {}

    async def watch():
        while len(finals_at) < len(turns):
            for m in speaker.messages:
                if m["type"] == "transcript" and m["final"] and m["turn"] not in finals_at:
                    finals_at[m["turn"]] = time.time()
            speaker.changed.clear()
            if len(finals_at) < len(turns):
                await speaker.changed.wait()

    watcher = asyncio.create_task(watch())
    start = time.monotonic()
    for i, chunk in enumerate(frames(tone_pcm(seconds))):
        await speaker.ws.send(chunk)
        sent.append(time.time())
        await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_SECONDS - time.monotonic()))  # real-time pacing
    await asyncio.wait_for(watcher, 15)
    ends = {m["turn"]: m["end"] for m in speaker.messages if m["type"] == "transcript" and m["final"]}
    await speaker.close_stream()
    await asyncio.sleep(2.0)  # let the outputs finish (bounded: their posts take milliseconds)
    cpu = cpu_seconds(app.proc.pid) - cpu0
    relay = [finals_at[t] - sent[min(len(sent) - 1, max(0, -(-round(ends[t] * 32000) // FRAME) - 1))] for t in ends]
    return {"t0": t0, "cpu": cpu, "finals_at": [finals_at[t] for t in sorted(finals_at)], "relay": relay}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--per-kind", type=int, default=4)
    ap.add_argument("--dead-obs", choices=("stall", "stopped"), default="stall")
    args = ap.parse_args()
    seconds, per_kind = min(args.seconds, 120.0), max(1, min(args.per_kind, 16))

    from conftest import start_app, stop_app, TEST_DG_KEY
    from receivers import WebhookReceiver, YoutubeReceiver, ZoomReceiver
    from simulator import Simulator
    from test_sharing import http, owner_cookie

    turns = script_turns(seconds)
    sim = Simulator().start()
    kinds = {"youtube": YoutubeReceiver, "zoom": ZoomReceiver, "webhook": WebhookReceiver}
    rx = {k: [cls(f"{k}-{i}") for i in range(per_kind)] for k, cls in kinds.items()}
    rx["obs"] = [ObsReceiver(f"obs-{i}", f"bench-obs-pw-{i}") for i in range(per_kind)]
    every = [r for group in rx.values() for r in group]
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
           "LOG_LEVEL": "info", "OUTPUT_ALLOWED_URLS": " ".join(r.origin for r in every)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    app = start_app(env, tmp, "bench-outputs")
    try:
        cookie = owner_cookie(app)

        def add(session_id):
            for kind, group in rx.items():
                for r in group:
                    if kind == "obs":
                        body = json.dumps({"type": "obs", "url": r.url, "password": r.password}).encode()
                    else:
                        query = {"youtube": "?cid=bench", "zoom": "?id=m&signature=s", "webhook": ""}[kind]
                        body = json.dumps({"type": kind, "url": r.url + query, "secret": "bench-secret-0123456"}).encode()
                    status, _, text = http("POST", f"{app.http}/api/sessions/{session_id}/outputs",
                                           {"Cookie": cookie, "Content-Type": "application/json"}, body)
                    assert status == 201, text
                    r.secret = "bench-secret-0123456" if kind == "webhook" else None

        def reset():
            for r in every:
                if isinstance(r, ObsReceiver):
                    r.reset()
                    continue
                with r.lock:
                    r.captions.clear()
                    r.violations.clear()
                    getattr(r, "payloads", []).clear()
                    getattr(r, "deliveries", set()).clear()
                    getattr(r, "bodies", {}).clear()
                    if hasattr(r, "last_seq"):
                        r.last_seq = None
                r.down(False)

        results = {}
        for phase in ("none", "outputs", "dead"):
            reset()
            if phase == "dead":
                for kind, group in rx.items():
                    group[0].down(args.dead_obs) if kind == "obs" else group[0].down()
            conns0 = rx["obs"][0].obs.connections
            res = await session(app, cookie, turns, sim, None if phase == "none" else add)
            dead_obs = (rx["obs"][0].obs.connections - conns0, len(rx["obs"][0].obs.requests))
            live = [r for r in every if not r.is_down] if phase != "none" else []
            latencies, posts, by_kind = [], 0, {}
            script_words = [w for words in turns for w in words]
            for r in live:
                assert not r.violations, (r.name, r.violations[:3])
                got = final_posts(r, turns)
                assert len(got) == len(turns), (phase, r.name, len(got), len(turns))
                if isinstance(r, ObsReceiver):  # each word once, in order (early parts and their remainders)
                    sent = [w for post in r.captions for w in post.text.split()]
                    assert sent == script_words, (phase, r.name, sent[:20], script_words[:20])
                lat = [got[k] - res["finals_at"][k] for k in got]
                latencies += lat
                by_kind.setdefault(getattr(r, "kind", None) or type(r).__name__, []).extend(lat)
                posts += len(r.captions)
            for r in every:
                if phase == "dead" and r.is_down:  # a dead receiver accepted nothing
                    assert not r.captions, (r.name, len(r.captions))
            lag = []
            if live:
                yt = next(r for r in live if type(r).__name__ == "YoutubeReceiver")
                spoken, i = [], 0
                offset = 0.0
                for words in turns:
                    for j in range(len(words)):
                        spoken.append(res["t0"] + offset + (j + 1) * WORD_S)
                    offset += len(words) * WORD_S + EOT_S
                for post in yt.captions:
                    for _ in post.text.split():
                        lag.append(post.at - spoken[i])
                        i += 1
            obs_lag = []
            if live:
                ob = next(r for r in live if isinstance(r, ObsReceiver))
                i = 0
                for post in ob.captions:
                    for _ in post.text.split():
                        obs_lag.append(post.at - spoken[i])
                        i += 1
            results[phase] = {**res, "latencies": latencies, "posts": posts, "lag": lag, "obs_lag": obs_lag,
                              "by_kind": by_kind, "receivers": len(live),
                              "dead_obs": dead_obs}
    finally:
        stop_app(app)
        for r in every:
            r.stop()
        sim.stop()

    base = results["none"]
    print(f"script: {len(turns)} turns, {sum(map(len, turns))} words, {seconds:.0f} s of real-time audio; "
          f"{per_kind} outputs of each kind (youtube, zoom, webhook, obs); dead OBS: {args.dead_obs}")
    print("| session | receivers | posts delivered | final latency p50 / p99 (ms) | word lag p50 / max (s) "
          "| speaker final latency p50 / max (ms) | app CPU (s) | CPU per delivered post (µs) |")
    print("|---|---|---|---|---|---|---|---|")
    n = len(rx) * per_kind
    labels = (("none", "no outputs"), ("outputs", f"{n} outputs"), ("dead", f"{n} outputs, 1 of each kind dead"))
    for phase, label in labels:
        r = results[phase]
        lat = f"{pct(r['latencies'], 0.5) * 1000:.1f} / {pct(r['latencies'], 0.99) * 1000:.1f}" if r["latencies"] else "–"
        lag = f"{statistics.median(r['lag']):.2f} / {max(r['lag']):.2f}" if r["lag"] else "–"
        relay = f"{statistics.median(r['relay']) * 1000:.1f} / {max(r['relay']) * 1000:.1f}"
        per_post = f"{(r['cpu'] - base['cpu']) / r['posts'] * 1e6:.0f}" if r["posts"] else "–"
        print(f"| {label} | {r['receivers']} | {r['posts']} | {lat} | {lag} | {relay} | {r['cpu']:.2f} | {per_post} |")
    print()
    print("| session | final latency p50 / p99 (ms): youtube | zoom | webhook | obs | OBS word lag p50 / max (s) |")
    print("|---|---|---|---|---|---|")
    for phase, label in labels[1:]:
        r = results[phase]
        cells = []
        for kind in ("YoutubeReceiver", "ZoomReceiver", "WebhookReceiver", "obs"):
            v = r["by_kind"].get(kind, [])
            cells.append(f"{pct(v, 0.5) * 1000:.1f} / {pct(v, 0.99) * 1000:.1f}" if v else "–")
        ol = r["obs_lag"]
        olag = f"{statistics.median(ol):.2f} / {max(ol):.2f}" if ol else "–"
        print(f"| {label} | {' | '.join(cells)} | {olag} |")
    conns, requests = results["dead"]["dead_obs"]
    print(f"\ndead OBS ({args.dead_obs}): {conns} connections accepted, {requests} requests left unanswered, "
          "0 captions")


if __name__ == "__main__":
    asyncio.run(main())
