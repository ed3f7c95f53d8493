"""Scale-out: two app processes sharing a real redis-server (started here on a free loopback port), a
speaker on one and viewers on the other; plus the storage and fan-out contracts run against every store and broker."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import TEST_DG_KEY, running_app, start_app, stop_app
from test_sharing import SCRIPT_FINALS, FIRST_TURN_AUDIO, http, open_viewer, owner_cookie, start_speaker
from webapp.broker import MemoryBroker, RedisBroker
from webapp.live import Viewer, live_ended, live_transcript
from webapp.store import MemoryStore, RedisStore, SqliteStore

SECRET = "shared-secret-for-both-instances-0123456789"


@pytest.fixture(scope="module")
def two_apps(simulator, session_tmp, redis_url):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "REDIS_URL": redis_url, "SECRET_KEY": SECRET}
    with running_app(env, session_tmp, "redis-a") as a, running_app(env, session_tmp, "redis-b") as b:
        yield a, b, env


# ---- the storage and fan-out contracts, for every implementation -----------------------------------


@pytest.fixture(params=["sqlite", "redis", "memory"])
async def parts(request, tmp_path, redis_url):
    """(store, broker) as the app pairs them: SQLite or memory with in-process fan-out, Redis with Redis."""
    prefix = f"contract{time.monotonic_ns()}:"
    store = {"sqlite": lambda: SqliteStore(tmp_path / "contract.sqlite3"), "memory": MemoryStore,
             "redis": lambda: RedisStore(redis_url, prefix=prefix)}[request.param]()
    broker = RedisBroker(redis_url, prefix=prefix) if request.param == "redis" else MemoryBroker()
    await store.start()
    await broker.start()
    yield store, broker
    await broker.close()
    await store.close()


async def test_store_and_broker_contract(parts):
    store, broker = parts
    now = time.time()
    await store.create_session({"id": "s1", "owner": "o1", "backend": "deepgram", "started_at": now - 10,
                                  "share_version": 0, "share_token": "tok"})
    await store.create_session({"id": "s0", "owner": "o1", "backend": "local", "started_at": now - 1.5 * 86400,
                                  "share_version": 0})
    got, arrived = [], asyncio.Event()

    async def send(text):
        got.append(json.loads(text))
        arrived.set()
    feed = broker.subscribe("s1")
    runner = asyncio.create_task(Viewer(feed, send).run())
    try:
        words = [{"word": "Hello", "start": 0.1, "end": 0.4, "confidence": 0.9}]
        interim = {"type": "transcript", "turn": 0, "text": "Hel", "final": False, "start": 0.1, "end": 0.3}
        await broker.publish("s1", live_transcript(interim))
        for seq, text in enumerate(["Hello.", "Again."]):
            final = {"type": "transcript", "turn": seq, "text": text, "final": True, "start": 0.1 + seq, "end": 0.4 + seq,
                     "words": words}
            await store.append_final("s1", seq, final)
            await broker.publish("s1", live_transcript(final, seq))
        while len(got) < 3:  # the viewer hears it (through Redis pub/sub for RedisBroker)
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        assert [(m["text"], m["final"]) for m in got] == [("Hel", False), ("Hello.", True), ("Again.", True)]
        assert [m.get("seq") for m in got] == [None, 0, 1]

        turns = await store.get_turns("s1")
        assert [(t["seq"], t["turn"], t["text"]) for t in turns] == [(0, 0, "Hello."), (1, 1, "Again.")]
        assert turns[0]["words"] == words and turns[1]["start"] == 1.1
        meta = await store.get_session("s1")
        assert meta["live"] is True and meta["owner"] == "o1" and meta["share_token"] == "tok"
        assert [m["id"] for m in await store.list_sessions("o1")] == ["s1", "s0"]  # newest first
        assert await store.list_sessions("someone-else") == []
        assert await store.get_session("nope") is None and await store.get_turns("nope") == []

        await store.set_share("s1", 1, None)
        meta = await store.get_session("s1")
        assert (meta["share_version"], meta["share_token"]) == (1, None)

        await store.end_session("s1", {"ended_at": now, "duration": 10.0, "end_reason": "client_closed"})
        await broker.publish("s1", live_ended("client_closed", now))
        await asyncio.wait_for(runner, 5)  # `ended` ends the viewer's sender
        assert got[-1]["type"] == "ended"
        meta = await store.get_session("s1")
        assert meta["live"] is False and meta["end_reason"] == "client_closed" and meta["duration"] == 10.0

        # Retention: old and ended goes; old but still open stays; recent stays.
        assert await store.purge(now - 86400) == 0  # s0 is old but open
        await store.end_session("s0", {"ended_at": now - 1.5 * 86400 + 60})
        assert await store.purge(now - 86400) == 1
        assert await store.get_session("s0") is None and await store.get_turns("s0") == []
        assert [m["id"] for m in await store.list_sessions("o1")] == ["s1"]
    finally:
        runner.cancel()
        feed.close()
        assert not broker.topics  # the last feed of a session takes its entry with it


async def test_sqlite_finals_of_many_sessions_share_one_commit_and_failures_reach_each_writer(tmp_path):
    """A thousand streams end about 260 turns a second: each final waits for the write that stores it, but the
    finals that arrive while a write is running go out together in the next one."""
    store = SqliteStore(tmp_path / "group.sqlite3")
    await store.start()
    statements = []
    await store.db.set_trace_callback(lambda sql: statements.append(sql) if sql.startswith("INSERT OR REPLACE INTO turns") else None)
    try:
        def final(i):
            event = {"type": "transcript", "turn": 0, "text": f"turn of {i}", "final": True, "start": 0.5, "end": 1.25,
                     "words": [{"word": "é", "start": 0.5, "end": 0.7, "confidence": 0.9}]}
            return store.append_final(f"s{i}", 0, event)
        await asyncio.gather(*(final(i) for i in range(300)))
        assert 1 <= len(statements) <= 5  # 300 finals, a handful of commits
        for i in (0, 137, 299):
            [turn] = await store.get_turns(f"s{i}")
            assert turn["text"] == f"turn of {i}" and turn["words"][0]["word"] == "é" and turn["end"] == 1.25

        await store.db.execute("ALTER TABLE turns RENAME TO turns_away")  # the next write fails
        results = await asyncio.gather(*(final(i) for i in range(300, 310)), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)  # every writer hears it (and retries its own)
        await store.db.execute("ALTER TABLE turns_away RENAME TO turns")
        await final(400)
        assert (await store.get_turns("s400"))[0]["text"] == "turn of 400"
    finally:
        await store.close()


# ---- two processes --------------------------------------------------------------------------------


async def test_viewer_on_one_instance_follows_speaker_on_another(two_apps, sim):
    a, b, _ = two_apps
    cookie = owner_cookie(a)
    speaker, token = await start_speaker(a, cookie)
    on_b = [await open_viewer(b, token) for _ in range(3)]
    on_a = await open_viewer(a, token)
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await on_b[0].until(lambda v: v.seen_finals())  # a viewer has it, so it is stored (stored, then published)
    late_b = await open_viewer(b, token)
    assert [t["text"] for t in late_b.of("snapshot")[0]["turns"]] == SCRIPT_FINALS[:1]
    await speaker.send_audio(1.5)
    await speaker.close_stream()
    assert speaker.finals() == SCRIPT_FINALS
    for viewer in on_b + [on_a, late_b]:
        await viewer.until_closed()
        assert viewer.seen_finals() == list(enumerate(SCRIPT_FINALS))
        assert viewer.messages[-1]["type"] == "ended"
    assert any(m["type"] == "transcript" and not m["final"] for m in on_b[0].messages)  # interims cross too

    # B serves the page and the exports of A's session, and A's owner cookie works on B (shared key).
    status, headers, page = http("GET", f"{b.http}/s/{token}")
    assert status == 200 and SCRIPT_FINALS[1] in page and 'class="badge ended"' in page
    assert headers["X-Robots-Tag"].startswith("noindex")
    assert http("GET", f"{b.http}/s/{token}/transcript.txt")[2] == "".join(f + "\n" for f in SCRIPT_FINALS)
    session_id = json.loads(http("GET", f"{b.http}/s/{token}/transcript.json")[2])["session"]["id"]
    assert session_id in http("GET", f"{b.http}/sessions", {"Cookie": cookie})[2]
    assert http("DELETE", f"{b.http}/api/sessions/{session_id}/share", {"Cookie": cookie})[0] == 204
    assert http("GET", f"{a.http}/s/{token}")[0] == 404  # revoked everywhere
    assert '"store": "RedisStore"' in a.log_text() and '"broker": "RedisBroker"' in a.log_text()


async def test_revocation_reaches_viewers_on_other_instances(two_apps, sim):
    a, b, _ = two_apps
    cookie = owner_cookie(a)
    speaker, token = await start_speaker(a, cookie)
    viewer = await open_viewer(b, token)
    session_id = json.loads(http("GET", f"{b.http}/s/{token}/transcript.json")[2])["session"]["id"]
    assert http("DELETE", f"{a.http}/api/sessions/{session_id}/share", {"Cookie": cookie})[0] == 204
    await viewer.until_closed()
    assert viewer.messages[-1] == {"type": "revoked"}
    await speaker.close_stream()


async def test_finals_survive_sigkill_of_the_speakers_instance(simulator, session_tmp, redis_url):
    simulator.reset()
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "REDIS_URL": redis_url, "SECRET_KEY": SECRET}
    a = start_app(env, session_tmp, "redis-crash-a")
    try:
        with running_app(env, session_tmp, "redis-crash-b") as b:
            speaker, token = await start_speaker(a)
            viewer = await open_viewer(b, token)
            await speaker.send_audio(FIRST_TURN_AUDIO + 0.6)
            await viewer.until(lambda v: v.seen_finals())
            a.proc.kill()  # SIGKILL the speaker's instance
            a.proc.wait(10)
            doc = json.loads(http("GET", f"{b.http}/s/{token}/transcript.json")[2])
            assert [t["text"] for t in doc["turns"]] == SCRIPT_FINALS[:1]
            assert doc["turns"][0]["words"][0]["word"] == "Hello"
            await speaker.until_closed()
    finally:
        stop_app(a)
