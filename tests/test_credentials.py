"""Limits and credentials that must hold against a client that bends the rules (issue 17, items 5 and 6): minute
quotas with parallel sessions and across resumes, resume tokens bound to their owner and good once, Host names
refused against DNS rebinding, and the client address behind trusted proxies. Real app processes, real sockets,
the upstream simulator (its records count the audio relayed, which is what a provider bills)."""
from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client import collect_until_closed, frames, run_capture, tone_pcm, types
from conftest import TEST_DG_KEY, running_app, start_app, stop_app
from test_sharing import owner_cookie
from webapp.store import MemoryStore, RedisStore, SqliteStore

BPS = 32000  # 16 kHz 16-bit mono
SLACK_S = 0.5  # a limit may be passed by no more than this (frames are 80 ms)


def flux_env(sim, **extra) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "0", **{k: str(v) for k, v in extra.items()}}


def relayed_s(sim) -> float:
    return sum(len(r.audio) for r in sim.records) / BPS


class Speaker:
    """One capture socket that records what the server says; `ready` is awaited, a drop is a TCP abort."""

    def __init__(self, ws):
        self.ws, self.messages, self.changed = ws, [], asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, headers: dict | None = None, wait: bool = True) -> "Speaker":
        s = cls(await connect(url, compression=None, additional_headers=headers or {}))
        if wait:
            await s.until(lambda m: m["type"] in ("ready", "closed"))
        return s

    async def _read(self):
        async for raw in self.ws:
            self.messages.append(json.loads(raw))
            self.changed.set()

    async def until(self, pred, timeout: float = 10):
        async def wait():
            while not any(pred(m) for m in self.messages):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)
        return next(m for m in self.messages if pred(m))

    @property
    def ready(self) -> dict:
        return self.messages[0]

    def drop(self) -> None:
        self.ws.transport.abort()
        self.reader.cancel()


# ---- item 5: minutes charged as audio flows -------------------------------------------------------------


async def test_parallel_sessions_share_the_daily_allowance(simulator, session_tmp):
    """Three sessions at once, 40 s of audio each, against CLIENT_MINUTES_PER_DAY=1: 60 s relayed in all, not 120.
    (Before: each session was given the whole remaining allowance at admission and charged at its end.)"""
    simulator.reset()
    with running_app(flux_env(simulator, CLIENT_MINUTES_PER_DAY=1), session_tmp, "quota-parallel") as app:
        url = f"{app.ws}/ws/listen"
        runs = await asyncio.gather(*(run_capture(url, tone_pcm(40.0)) for _ in range(3)))
        total = relayed_s(simulator)
        print(f"relayed {total:.2f} s against a 60 s allowance")
        assert 60 - SLACK_S <= total <= 60 + SLACK_S
        stopped = [m for msgs in runs for m in msgs if m["type"] == "error"]
        assert stopped and {m["code"] for m in stopped} == {"quota_exceeded"}
        assert all("midnight UTC" in m["message"] and m["retry_after"] > 0 for m in stopped)
        later = await run_capture(url, b"", close=False)
        assert types(later) == ["error", "closed"] and later[0]["code"] == "quota_exceeded"


async def test_session_minutes_hold_across_resumes(simulator, session_tmp):
    """MAX_SESSION_MINUTES=1: 40 s, a drop, a resume with 40 s more: the session stops at 60 s of audio.
    (Before: every resumed socket got a whole new minute.)"""
    simulator.reset()
    with running_app(flux_env(simulator, MAX_SESSION_MINUTES=1), session_tmp, "quota-resume") as app:
        url = f"{app.ws}/ws/listen"
        first = await Speaker.open(url)
        for chunk in frames(tone_pcm(40.0)):
            await first.ws.send(chunk)
        await simulator.until(lambda: simulator.records and len(simulator.records[0].audio) >= 40 * BPS)
        first.drop()
        await simulator.until(lambda: simulator.records[0].closed)
        second = await run_capture(f"{url}?resume={first.ready['resume_token']}", tone_pcm(40.0))
        assert second[0]["type"] == "ready" and second[0]["resumed"]
        errors = [m for m in second if m["type"] == "error"]
        assert [m["code"] for m in errors] == ["session_limit"] and second[-1]["reason"] == "session_limit"
        total = relayed_s(simulator)
        print(f"relayed {total:.2f} s in one session against a 60 s session limit")
        assert 60 - SLACK_S <= total <= 60 + SLACK_S
        # A resume of a session at its limit is refused at once, before the recognizer is asked.
        third = await run_capture(f"{url}?resume={second[0]['resume_token']}", b"", close=False)
        assert types(third) == ["error", "closed"] and third[0]["code"] == "session_limit"


# ---- item 6: resume tokens bound to the owner and good once ----------------------------------------------


@pytest.fixture(scope="module")
def app(simulator, session_tmp):
    env = flux_env(simulator, ALLOWED_HOSTS="captions.example *.lan.example", ALLOWED_ORIGINS="https://church.example",
                   TRUSTED_PROXIES="127.0.0.1", MAX_STREAMS_PER_CLIENT=1)
    with running_app(env, session_tmp, "credentials") as a:
        yield a


async def refused(url: str, headers: dict | None = None) -> bool:
    msgs = await run_capture(url, b"", headers=headers, close=False)
    assert types(msgs) == ["error", "closed"] or msgs[0]["type"] == "ready"
    return msgs[0].get("code") == "resume_refused"


async def test_a_resume_token_needs_its_owners_cookie_and_is_good_once(app, sim):
    url = f"{app.ws}/ws/listen"
    alice, mallory = {"Cookie": owner_cookie(app)}, {"Cookie": owner_cookie(app)}
    live = await Speaker.open(url, alice)
    for chunk in frames(tone_pcm(3.2)):
        await live.ws.send(chunk)
    await live.until(lambda m: m.get("event") == "EndOfTurn")
    token = live.ready["resume_token"]
    # Another browser (another owner cookie) or no cookie at all: refused, and the live session is not taken over.
    assert await refused(f"{url}?resume={token}", mallory)
    assert await refused(f"{url}?resume={token}", {"X-Forwarded-For": "198.51.100.9"})
    assert len(sim.records) == 1 and not sim.records[0].closed
    await live.ws.send(json.dumps({"type": "Finalize"}))
    await live.until(lambda m: m.get("type") == "transcript" and m["final"] and m["turn"] == 1)
    # The owner, after a network drop, resumes the same session; the new `ready` carries a new token.
    live.drop()
    await sim.until(lambda: sim.records[0].closed)
    again = await Speaker.open(f"{url}?resume={token}", alice)
    assert again.ready["type"] == "ready" and again.ready["resumed"]
    assert again.ready["session_id"] == live.ready["session_id"] and again.ready["resume_token"] != token
    again.drop()
    await sim.until(lambda: len(sim.records) == 2 and sim.records[1].closed)
    # The spent token is refused even to its owner; the new one works.
    assert await refused(f"{url}?resume={token}", alice)
    third = await run_capture(f"{url}?resume={again.ready['resume_token']}", tone_pcm(0.4), headers=alice)
    assert third[0]["type"] == "ready" and third[0]["session_id"] == live.ready["session_id"]


async def test_a_resume_that_never_got_its_ready_leaves_the_token_good(app, sim):
    """The page's token is spent only by a resume whose `ready` (with the new token) was sent: a resumed socket
    still waiting for the recognizer when it is replaced (taken over) or lost (given back) spends nothing."""
    url = f"{app.ws}/ws/listen"
    cookie = {"Cookie": owner_cookie(app)}
    first = await Speaker.open(url, cookie)
    token = first.ready["resume_token"]
    first.drop()
    await sim.until(lambda: sim.records and sim.records[0].closed)
    sim.faults.greet_delay = 1.0  # the recognizer is slow to say Connected: `ready` waits for it
    pending = await Speaker.open(f"{url}?resume={token}", cookie, wait=False)
    await sim.until(lambda: len(sim.records) == 2)
    taker = await Speaker.open(f"{url}?resume={token}", cookie, wait=False)  # the old socket is still open
    assert (await pending.until(lambda m: m["type"] == "closed"))["reason"] == "client_gone"  # taken over
    await sim.until(lambda: len(sim.records) == 3)
    taker.drop()  # lost before its `ready` too
    await sim.until(lambda: all(r.closed for r in sim.records))
    sim.faults.greet_delay = 0.0
    last = await Speaker.open(f"{url}?resume={token}", cookie)
    assert last.ready["type"] == "ready" and last.ready["resumed"]
    assert last.ready["session_id"] == first.ready["session_id"]
    await last.ws.send(json.dumps({"type": "CloseStream"}))
    await last.until(lambda m: m["type"] == "closed")
    assert await refused(f"{url}?resume={token}", cookie)  # this one got its `ready`: the token is spent


async def test_a_spent_token_stays_spent_after_a_restart(simulator, session_tmp):
    """The nonce a token carries is kept with the session (SQLite here; Redis in test_redis), so a restart does
    not revive a spent token, and the owner resumes with the newest one."""
    simulator.reset()
    env = flux_env(simulator)
    app = start_app(env, session_tmp, "credentials-restart")
    try:
        url = f"{app.ws}/ws/listen"
        cookie = {"Cookie": owner_cookie(app)}
        first = await Speaker.open(url, cookie)
        token0 = first.ready["resume_token"]
        first.drop()
        await simulator.until(lambda: simulator.records and simulator.records[0].closed)
        second = await Speaker.open(f"{url}?resume={token0}", cookie)
        assert second.ready["resumed"]
        second.drop()
        await simulator.until(lambda: len(simulator.records) == 2 and simulator.records[1].closed)
        stop_app(app)
        app = start_app(env, session_tmp, "credentials-restart", port=app.port)
        assert await refused(f"{url}?resume={token0}", cookie)
        resumed = await run_capture(f"{url}?resume={second.ready['resume_token']}", tone_pcm(0.4), headers=cookie)
        assert resumed[0]["type"] == "ready" and resumed[0]["session_id"] == first.ready["session_id"]
    finally:
        stop_app(app)


# ---- item 6: Host names (DNS rebinding) ------------------------------------------------------------------


def get(app, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


HOSTS = [
    ("evil.example:{port}", False), ("evil.example", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example:{port}", False), ("lan.example", False), ("[::2]:{port}", False), ("10.1.2.3", False),
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("LOCALHOST", True), ("[::1]:{port}", True),
    ("app.localhost:{port}", True), ("captions.example", True), ("captions.example:443", True),
    ("church.example", True), ("a.lan.example:{port}", True),
]


@pytest.mark.parametrize("host, ok", HOSTS)
async def test_host_names_that_are_not_this_servers_are_refused(app, sim, host, ok):
    host = host.format(port=app.port)
    assert get(app, host) == (200 if ok else 403)
    assert get(app, host, "/static/app.js") == (200 if ok else 403)
    # The rebinding page itself: its Origin matches the Host it sends, which passed the Origin check before.
    uri = f"ws://{host}/ws/listen"
    origin = f"http://{host}"
    if ok:
        async with connect(uri, host="127.0.0.1", port=app.port, origin=origin, compression=None) as ws:
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert (await collect_until_closed(ws))[0]["type"] in ("ready", "error")
    else:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(uri, host="127.0.0.1", port=app.port, origin=origin):
                pass
        assert exc.value.response.status_code == 403
    assert sim.records == [] or ok


@pytest.mark.parametrize("value, ok", [
    ("captions.example, *.lan.example 10.0.0.1 [::1]", ("captions.example", "*.lan.example", "10.0.0.1", "::1")),
    ("*", ("*",)), ("https://captions.example", None), ("captions.example:443", None), ("a/b", None), ("a..b", None),
])
def test_allowed_hosts_setting(value, ok):
    from webapp import config
    if ok is None:
        with pytest.raises(config.ConfigError, match="ALLOWED_HOSTS"):
            config.load({"ALLOWED_HOSTS": value})
    else:
        assert config.load({"ALLOWED_HOSTS": value}).allowed_hosts == ok


def test_healthz_answers_any_host(app):
    assert get(app, "lb-probe.internal", "/healthz") == 200


# ---- item 6: the client address behind trusted proxies ---------------------------------------------------


async def test_client_address_is_the_rightmost_untrusted_of_every_forwarded_line(app, sim):
    """MAX_STREAMS_PER_CLIENT=1 shows which address the server took. A client behind the proxy (127.0.0.1,
    trusted) writes its own X-Forwarded-For line with made-up addresses; the proxy adds a line with the real one."""
    url = f"{app.ws}/ws/listen"
    spoofed = [("X-Forwarded-For", "198.51.100.1, 198.51.100.2"), ("X-Forwarded-For", "203.0.113.5")]
    held = await Speaker.open(url, spoofed)
    assert held.ready["type"] == "ready"
    for lines, same_client in [
        ([("X-Forwarded-For", "203.0.113.5")], True),
        ([("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.5, 127.0.0.1")], True),
        ([("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", "192.0.2.44")], False),
        ([("X-Forwarded-For", "198.51.100.1, 198.51.100.2")], False),
    ]:
        msgs = await run_capture(url, b"", headers=lines, close=not same_client)
        assert (msgs[0].get("code") == "too_many_streams") is same_client, (lines, msgs[0])
    await held.ws.send(json.dumps({"type": "CloseStream"}))
    await held.until(lambda m: m["type"] == "closed")


# ---- spent tokens with several instances (Redis) ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis", "memory"])
async def store(request, tmp_path, redis_url):
    s = {"sqlite": lambda: SqliteStore(tmp_path / "claims.sqlite3"), "memory": MemoryStore,
         "redis": lambda: RedisStore(redis_url, prefix=f"claims{time.monotonic_ns()}:")}[request.param]()
    await s.start()
    yield s
    await s.close()


async def test_claim_resume_is_compare_and_set(store):
    await store.create_session({"id": "s1", "owner": "o1", "backend": "deepgram", "started_at": time.time(),
                                "share_version": 0, "resume_nonce": "n0"})
    claims = await asyncio.gather(*(store.claim_resume("s1", "n0", f"n{i}") for i in range(1, 6)))
    assert sorted(claims) == [False] * 4 + [True]  # five sockets with one token: one wins
    winner = f"n{claims.index(True) + 1}"
    assert (await store.get_session("s1"))["resume_nonce"] == winner
    assert await store.claim_resume("s1", "n0", "n9") is False
    assert await store.claim_resume("nope", "n0", "n9") is None


async def test_a_token_spent_on_one_instance_is_refused_on_another(simulator, session_tmp, redis_url):
    simulator.reset()
    env = {**flux_env(simulator), "REDIS_URL": redis_url, "SECRET_KEY": "shared-secret-for-both-instances-42"}
    with running_app(env, session_tmp, "claims-a") as a, running_app(env, session_tmp, "claims-b") as b:
        cookie = {"Cookie": owner_cookie(a)}
        first = await Speaker.open(f"{a.ws}/ws/listen", cookie)
        first.drop()
        await simulator.until(lambda: simulator.records and simulator.records[0].closed)
        on_b = await Speaker.open(f"{b.ws}/ws/listen?resume={first.ready['resume_token']}", cookie)
        assert on_b.ready["resumed"] and on_b.ready["session_id"] == first.ready["session_id"]
        on_b.drop()
        await simulator.until(lambda: len(simulator.records) == 2 and simulator.records[1].closed)
        assert await refused(f"{a.ws}/ws/listen?resume={first.ready['resume_token']}", cookie)
        assert await refused(f"{b.ws}/ws/listen?resume={on_b.ready['resume_token']}", {"Cookie": owner_cookie(b)})
        back = await run_capture(f"{a.ws}/ws/listen?resume={on_b.ready['resume_token']}", tone_pcm(0.4), headers=cookie)
        assert back[0]["type"] == "ready" and back[0]["session_id"] == first.ready["session_id"]
