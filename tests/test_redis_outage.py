"""A Redis outage mid-session: a real redis-server (with an append-only file, as a production one keeps its
data) is SIGKILLed under a running app and restarted on the same port. The app must stay responsive, keep
captioning, hold the finals made meanwhile and write them once Redis is back, and exit promptly on SIGTERM."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from conftest import TEST_DG_KEY, free_port, start_app, stop_app
from test_sharing import Socket, http, open_viewer, start_speaker
from webapp import recorder as recorder_mod
from webapp.broker import Feed, RedisBroker
from webapp.live import Live, Viewer, live_ended, live_transcript
from webapp.recorder import Recorder, Recording
from webapp.store import RedisStore

# Five short turns: each is 0.6 s of words and 0.4 s to its end, so turn k is final once k + 1 s of audio arrived.
SCRIPT = [["Alpha", "one."], ["Bravo", "two."], ["Charlie", "three."], ["Delta", "four."], ["Echo", "five."]]
FINALS = [" ".join(t) for t in SCRIPT]


class RedisServer:
    """redis-server on a fixed loopback port, so it can be killed and started again where the app expects it."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.dir = data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed; ./scripts/test installs it (apt-get install redis-server)")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in self.proc.stdout:  # its own log line says when it serves (after loading its file)
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server did not start:\n" + "".join(seen))
        out = self.proc.stdout
        threading.Thread(target=lambda: out.read(), daemon=True).start()  # keep its pipe from filling

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no goodbye to its clients
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def healthz(app) -> tuple[float, dict | None]:
    """(seconds, body) of one /healthz; body None when it did not answer within 3 s."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"{app.http}/healthz", timeout=3) as r:
            assert r.status == 200
            body = r.read()
    except OSError:
        return time.monotonic() - started, None
    return time.monotonic() - started, json.loads(body)


def cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU time over `seconds` of wall time, as a share of one core."""
    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    hz = 100  # USER_HZ on Linux
    before, started = ticks(), time.monotonic()
    time.sleep(seconds)  # a measurement window, not synchronisation
    return (ticks() - before) / hz / (time.monotonic() - started)


def app_env(simulator, redis: RedisServer) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
            "REDIS_URL": redis.url}


async def sigterm(app) -> float:
    """Seconds from SIGTERM to the process's exit (inf past 10 s); this loop keeps serving our sockets meanwhile."""
    started = time.monotonic()
    app.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(app.proc.wait, 10)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.monotonic() - started


def log_events(app, event: str) -> list[dict]:
    out = []
    for line in app.log_text().splitlines():
        if f'"{event}"' in line:
            out.append(json.loads(line))
    return out


async def test_redis_killed_and_restarted_mid_session(simulator, redis_server, tmp_path):
    simulator.reset(script=SCRIPT)
    app = start_app(app_env(simulator, redis_server), tmp_path, "outage")
    try:
        speaker, token = await start_speaker(app)
        viewer = await open_viewer(app, token)
        await speaker.send_audio(1.1)
        await viewer.until(lambda v: len(v.seen_finals()) == 1)  # stored, then published

        redis_server.kill()
        await speaker.send_audio(2.0)  # turns 1 and 2, said while Redis is down
        await speaker.until(lambda s: len(s.finals()) == 3)  # the speaker's captions do not wait on the store
        cpu = cpu_share(app.proc.pid, 3.0)  # an idle app with a speaker uses about 1 %
        seconds, health = healthz(app)
        print(f"outage: app CPU {cpu:.1%} of a core, /healthz {seconds * 1000:.0f} ms, {health}")
        assert cpu < 0.25, f"the app spins while Redis is down: {cpu:.0%} of a core"
        assert health is not None and seconds < 1.0, f"/healthz did not answer within 1 s while Redis is down ({seconds:.2f} s)"
        assert (health["status"], health.get("store")) == ("degraded", "unavailable")
        assert (health["finals_held"], health["finals_lost"]) == (2, 0)
        late = await Socket.open(f"{app.ws}/ws/watch/{token}")  # a viewer arriving now: "try again later"
        await late.until_closed()
        assert (late.ws.close_code, late.messages) == (1013, [])  # no `error`: its page keeps reconnecting
        assert http("GET", f"{app.http}/s/{token}")[0] == 503

        redis_server.start()  # same port, same data
        await viewer.until(lambda v: len(v.seen_finals()) == 3, timeout=20)  # it asserts each seq arrives once
        assert viewer.seen_finals() == list(enumerate(FINALS[:3]))
        late = await open_viewer(app, token)
        assert [t["text"] for t in late.of("snapshot")[0]["turns"]] == FINALS[:3]
        doc = json.loads(http("GET", f"{app.http}/s/{token}/transcript.json")[2])
        assert [t["text"] for t in doc["turns"]] == FINALS[:3]  # in order, once
        stream = redis.Redis.from_url(redis_server.url, decode_responses=True).xrange(f"cr:t:{doc['session']['id']}")
        assert [(int(e["seq"]), json.loads(e["d"])["text"]) for _, e in stream] == list(enumerate(FINALS[:3]))

        await speaker.send_audio(1.0)  # and live again after it
        await viewer.until(lambda v: len(v.seen_finals()) == 4)
        assert viewer.seen_finals() == list(enumerate(FINALS[:4]))
        finals = [m["seq"] for m in viewer.messages if m["type"] == "transcript" and m["final"]]
        assert finals == sorted(set(finals)), f"viewer got finals out of order or twice: {finals}"
        _, health = healthz(app)
        assert (health["status"], health["finals_held"], health["finals_lost"]) == ("ok", 0, 0)
        [flushed] = log_events(app, "finals_flushed")
        assert (flushed["flushed"], flushed["lost"]) == (2, 0)

        took = await sigterm(app)
        assert took < 5.0, f"SIGTERM took {took:.1f} s"
    finally:
        stop_app(app)


async def test_sigterm_while_redis_is_down_exits_promptly_and_counts_what_is_lost(simulator, redis_server, tmp_path):
    simulator.reset(script=SCRIPT)
    app = start_app(app_env(simulator, redis_server), tmp_path, "outage-exit")
    try:
        speaker, _ = await start_speaker(app)
        await speaker.send_audio(1.1)
        await speaker.until(lambda s: len(s.finals()) == 1)
        redis_server.kill()
        await speaker.send_audio(2.0)
        await speaker.until(lambda s: len(s.finals()) == 3)

        took = await sigterm(app)
        print(f"SIGTERM with Redis down: exited in {took:.2f} s")
        assert took < 5.0, f"SIGTERM took {took:.1f} s with Redis down"
        await speaker.until_closed()
        assert speaker.messages[-1] == {"type": "closed", "reason": "server_restart"}
        lost = log_events(app, "finals_lost")
        assert lost and all(e["why"] == "exit" for e in lost)
        assert sum(e["count"] for e in lost) >= 2  # turns 1 and 2 (and the open turn finalized at the drain)
    finally:
        stop_app(app)


# ---- in process: the bound on held finals, and a viewer's catch-up ---------------------------------


def final_event(turn: int, text: str) -> dict:
    return {"type": "transcript", "turn": turn, "text": text, "final": True, "start": float(turn), "end": turn + 0.9,
            "words": [{"word": text, "start": float(turn), "end": turn + 0.9, "confidence": 0.9}]}


async def test_finals_past_the_bound_are_counted_and_told_the_rest_written_in_order(redis_server, monkeypatch):
    monkeypatch.setattr(recorder_mod, "FINALS_HELD", 2)
    store, broker = RedisStore(redis_server.url, prefix="bound:"), RedisBroker(redis_server.url, prefix="bound:")
    await store.start()
    await broker.start()
    recording = Recording(store, broker)
    page = []  # what the speaker's page is sent by the recorder
    session = type("Session", (), {"id": "s1", "resumed": False, "audio_seconds": 5.0,
                                   "settings": type("S", (), {"backend": "deepgram", "model": "m", "cost_per_minute": 0.0}),
                                   "params": type("P", (), {"sample_rate": 16000, "name": None}),
                                   "out": type("Out", (), {"put": staticmethod(page.append)})})()
    got, changed = [], asyncio.Event()

    async def send(text):
        got.append(json.loads(text))
        changed.set()

    async def until(predicate):
        while not predicate():
            changed.clear()
            await asyncio.wait_for(changed.wait(), 20)
    viewer = Viewer(broker.subscribe("s1"), send, replay=lambda seq: recording.catch_up("s1", seq))
    runner = asyncio.create_task(viewer.run())
    recorder = Recorder(recording, lambda session_id, version: "tok", None)
    try:
        await recorder.opened(session)
        recorder.event(final_event(0, "zero"))
        await until(lambda: len(got) == 1)

        redis_server.kill()
        recorder.event(final_event(1, "one"))
        await asyncio.wait_for(recorder.stalled.wait(), 5)  # the writer found the store down
        for turn, text in ((2, "two"), (3, "three"), (4, "four")):
            recorder.event(final_event(turn, text))
        health = await asyncio.wait_for(recording.health(), 1.0)
        assert (health["store"], health["finals_held"], health["finals_lost"]) == ("unavailable", 2, 2)
        assert [(m["type"], m["code"], m["lost"]) for m in page] == [("notice", "finals_lost", 1)]  # at the first loss

        redis_server.start()
        await recorder.closed(session, "client_closed")  # the store is down: returns at once, the writer goes on
        await asyncio.wait_for(asyncio.shield(recorder.writer), 20)
        turns = await store.get_turns("s1")
        assert [(t["seq"], t["text"]) for t in turns] == [(0, "zero"), (1, "one"), (2, "two")]
        assert page[-1]["lost"] == 2 and "2 caption line(s)" in page[-1]["message"]  # the outage's count, at its end
        assert (await store.get_session("s1"))["end_reason"] == "client_closed"
        assert await asyncio.wait_for(runner, 20) == "ended"
        assert [(m.get("seq"), m["type"]) for m in got] == [(0, "transcript"), (1, "transcript"), (2, "transcript"), (None, "ended")]
        health = await recording.health()
        assert (health["store"], health["finals_held"], health["finals_lost"]) == ("ok", 0, 2)
    finally:
        runner.cancel()
        await broker.close()
        await store.close()


def live_final(seq: int) -> Live:
    return live_transcript(final_event(seq, f"f{seq}"), seq)


@pytest.mark.parametrize("case", ["gap", "catch_up", "replay_fails"])
async def test_viewer_fills_what_the_live_feed_missed_once_and_in_order(case):
    """The live feed dropped finals 1 and 2 (published while this instance was not subscribed). A replay that
    fails (the store went down again) leaves the gap: the viewer goes on with what comes live."""
    sent, calls = [], []

    async def send(text):
        sent.append(json.loads(text))

    async def replay(seq):
        calls.append(seq)
        if case == "replay_fails":
            raise ConnectionError("store still down")
        return [live_final(s) for s in range(seq, 4)]
    feed = Feed()
    runner = asyncio.create_task(Viewer(feed, send, replay=replay).run())
    try:
        feed.put(live_final(0))
        if case == "catch_up":
            feed.interrupted()  # the feed came back: what did we miss?
        feed.put(live_final(3))  # a gap: 1 and 2 never came live
        feed.put(live_final(3))  # and one the replay already had
        feed.put(live_ended("client_closed", 1.0))
        assert await asyncio.wait_for(runner, 5) == "ended"
    finally:
        runner.cancel()
    seqs = [m.get("seq") for m in sent if m["type"] == "transcript"]
    assert seqs == ([0, 3] if case == "replay_fails" else [0, 1, 2, 3])
    assert calls == ([0] if case == "catch_up" else [1])  # catch_up before 0 was sent: the replay has it all


async def test_a_resume_during_the_outage_is_told_to_retry_and_then_resumes(simulator, redis_server, tmp_path):
    """A page whose session ran on another instance resumes there only through the store: while it is down the
    socket gets a retryable `store_unavailable` (not a dropped socket without a reason), and its token stays good."""
    simulator.reset(script=SCRIPT)
    env = {**app_env(simulator, redis_server), "SECRET_KEY": "outage-resume-secret-0123456789abcdef"}
    first, second = start_app(env, tmp_path, "resume-a"), start_app(env, tmp_path, "resume-b")
    try:
        speaker, _ = await start_speaker(first)
        token = speaker.ready["resume_token"]
        await speaker.send_audio(1.1)
        await speaker.until(lambda s: len(s.finals()) == 1)
        redis_server.kill()
        await speaker.ws.close()  # the page's network drops; it comes back through the other instance

        retry = await Socket.open(f"{second.ws}/ws/listen?resume={token}")
        await retry.until(lambda s: s.closed)
        errors = retry.of("error")
        assert [(e["code"], e["retryable"]) for e in errors] == [("store_unavailable", True)], retry.messages
        assert errors[0]["retry_after"] > 0

        redis_server.start()
        resumed = await Socket.open(f"{second.ws}/ws/listen?resume={token}")  # the same token: it was not spent
        ready = await resumed.until(lambda s: s.ready)
        assert ready["resumed"] is True and ready["session_id"] == speaker.ready["session_id"], resumed.messages
        await resumed.send_audio(1.0)
        await resumed.until(lambda s: len(s.finals()) == 1)
        await resumed.close_stream()
    finally:
        stop_app(first)
        stop_app(second)
