"""Sessions that outlive their socket, a graceful restart, the limits that protect the key's bill, and hostile
input. All against real app processes and the upstream simulator."""
from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.asyncio.client import connect

from client import collect_until_closed, finals, frames, run_capture, tone_pcm, types
from conftest import TEST_DG_KEY, running_app, start_app, stop_app
from simulator import DEFAULT_SCRIPT

KNOWN_CODES = {"frame_too_large", "bad_audio", "bad_message", "unknown_message"}


def flux_env(sim, **extra) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "0", **{k: str(v) for k, v in extra.items()}}


@pytest.fixture(scope="module")
def app(simulator, session_tmp):
    with running_app(flux_env(simulator), session_tmp, "limits") as a:
        yield a


async def open_session(url: str, pcm: bytes, **headers):
    """Connect, send pcm, return (socket, messages so far, reader task)."""
    ws = await connect(url, compression=None, additional_headers=headers)
    reader = asyncio.create_task(collect_until_closed(ws, timeout=30))
    for chunk in frames(pcm):
        await ws.send(chunk)
    return ws, reader


# ---- resume -------------------------------------------------------------------------------------

async def test_a_dropped_socket_resumes_the_same_session(app, sim):
    url = f"{app.ws}/ws/listen"
    ws = await connect(url, compression=None)
    got: list[dict] = []
    first_final = asyncio.Event()

    async def read():
        async for raw in ws:
            got.append(json.loads(raw))
            if got[-1].get("event") == "EndOfTurn":
                first_final.set()
    reader = asyncio.create_task(read())
    for chunk in frames(tone_pcm(3.2)):   # turn 0 final at 2.5 s, turn 1 open ("Second turn")
        await ws.send(chunk)
    await asyncio.wait_for(first_final.wait(), 10)
    ws.transport.abort()  # a network drop: no close frame, no CloseStream
    reader.cancel()
    ready = got[0]
    assert ready["type"] == "ready" and ready["resume_token"]
    # The relay noticed, finalized the open turn upstream, and recorded where the session stands.
    await sim.until(lambda: sim.records[0].closed)
    assert "ForceEndTurn" in sim.records[0].controls

    resumed = await run_capture(f"{url}?resume={ready['resume_token']}", tone_pcm(3.0))
    assert resumed[0]["type"] == "ready" and resumed[0]["session_id"] == ready["session_id"] and resumed[0]["resumed"]
    starts = [m["turn"] for m in resumed if m["type"] == "turn" and m["event"] == "StartOfTurn"]
    assert starts and starts[0] == 2  # turns 0 and 1 were final before the drop: numbering continues
    first = next(m for m in resumed if m["type"] == "transcript")
    assert first["start"] >= 3.2  # the session's timeline continues too


async def test_a_stopped_or_forged_session_is_never_resumed(app, sim):
    url = f"{app.ws}/ws/listen"
    done = await run_capture(url, tone_pcm(1.0))
    token = done[0]["resume_token"]
    for candidate in (token, token[:-2] + "xx", "not-a-token"):
        sim.reset()
        refused = await run_capture(f"{url}?resume={candidate}", b"", close=False)
        assert types(refused) == ["error", "closed"] and refused[0]["code"] == "resume_refused"
        assert sim.records == []


# ---- graceful restart ----------------------------------------------------------------------------

async def test_sigterm_finalizes_open_turns_and_tells_pages_to_reconnect(simulator, session_tmp):
    simulator.reset()
    app = start_app(flux_env(simulator), session_tmp, "sigterm")
    try:
        ws, reader = await open_session(f"{app.ws}/ws/listen", tone_pcm(1.2))  # a turn is open, words heard
        await simulator.until(lambda: simulator.records and len(simulator.records[0].audio) >= len(tone_pcm(1.2)))
        app.proc.send_signal(signal.SIGTERM)
        messages = await reader
        assert finals(messages) == ["Hello world, this is"]  # the open turn was finalized, not lost
        assert messages[-1] == {"type": "closed", "reason": "server_restart"}
        assert ws.close_code == 1012
        assert app.proc.wait(15) is not None
    finally:
        stop_app(app)


# ---- quotas ---------------------------------------------------------------------------------------

async def test_stream_limits_per_client_and_global(simulator, session_tmp):
    simulator.reset()
    env = flux_env(simulator, MAX_STREAMS=2, MAX_STREAMS_PER_CLIENT=1, TRUSTED_PROXIES="127.0.0.1")
    with running_app(env, session_tmp, "streams") as app:
        url = f"{app.ws}/ws/listen"
        a, ra = await open_session(url, tone_pcm(0.2), **{"X-Forwarded-For": "203.0.113.5"})
        again = await run_capture(url, b"", headers={"X-Forwarded-For": "203.0.113.5"}, close=False)
        assert again[0]["code"] == "too_many_streams" and again[0]["retry_after"] > 0
        b, rb = await open_session(url, tone_pcm(0.2), **{"X-Forwarded-For": "198.51.100.7, 203.0.113.6"})
        full = await run_capture(url, b"", headers={"X-Forwarded-For": "192.0.2.9"}, close=False)
        assert full[0]["code"] == "too_many_streams" and "limit of 2" in full[0]["message"]
        for ws, reader in ((a, ra), (b, rb)):
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert (await reader)[0]["type"] == "ready"
        # Freed: a new client gets in.
        ok = await run_capture(url, tone_pcm(0.2), headers={"X-Forwarded-For": "192.0.2.9"})
        assert ok[0]["type"] == "ready"


async def test_forwarded_for_is_ignored_from_untrusted_peers(simulator, session_tmp):
    simulator.reset()
    with running_app(flux_env(simulator, MAX_STREAMS_PER_CLIENT=1), session_tmp, "untrusted") as app:
        url = f"{app.ws}/ws/listen"
        a, ra = await open_session(url, tone_pcm(0.2), **{"X-Forwarded-For": "203.0.113.5"})
        spoofed = await run_capture(url, b"", headers={"X-Forwarded-For": "203.0.113.99"}, close=False)
        assert spoofed[0]["code"] == "too_many_streams"  # same peer 127.0.0.1, whatever the header says
        await a.send(json.dumps({"type": "CloseStream"}))
        await ra


async def test_session_minutes_and_daily_allowance(simulator, session_tmp):
    simulator.reset()
    env = flux_env(simulator, MAX_SESSION_MINUTES=1, CLIENT_MINUTES_PER_DAY=2)
    with running_app(env, session_tmp, "minutes") as app:
        url = f"{app.ws}/ws/listen"
        first = await run_capture(url, tone_pcm(61.0))
        err = [m for m in first if m["type"] == "error"]
        assert err and err[0]["code"] == "session_limit" and "1 minutes" in err[0]["message"]
        assert first[-1]["reason"] == "session_limit"
        assert finals(first)[:2] == [" ".join(t) for t in DEFAULT_SCRIPT]  # what was said is still delivered
        second = await run_capture(url, tone_pcm(61.0))  # 60 s used; the second minute runs out first
        err = [m for m in second if m["type"] == "error"]
        assert err and err[0]["code"] in ("quota_exceeded", "session_limit")
        third = await run_capture(url, b"", close=False)
        assert third[0]["code"] == "quota_exceeded" and third[0]["retry_after"] > 0 and "midnight UTC" in third[0]["message"]


async def test_idle_session_is_closed_with_a_reason(simulator, session_tmp):
    simulator.reset()
    with running_app(flux_env(simulator, IDLE_TIMEOUT=1), session_tmp, "idle") as app:
        async with connect(f"{app.ws}/ws/listen") as ws:
            await ws.send(tone_pcm(0.2))
            messages = await collect_until_closed(ws, timeout=10)
    assert [m["code"] for m in messages if m["type"] == "error"] == ["idle_timeout"]
    assert messages[-1] == {"type": "closed", "reason": "idle_timeout"}


# ---- hostile input --------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


FRAMES = st.one_of(
    st.binary(min_size=0, max_size=70_000),
    st.text(max_size=6000),
    st.sampled_from([json.dumps({"type": t}) for t in ("Finalize", "KeepAlive", "Configure", "")] + ["null", "{}", "[]",
                     "{\"type\": 5}", "\"CloseStream\"", "[" * 5000, "{\"type\":\"Finalize\"," * 100]),
)


def test_fuzzed_frame_sequences_leave_the_server_healthy(app, sim):
    """Generated frame sequences against /ws/listen while a well-behaved session runs beside them."""
    url = f"{app.ws}/ws/listen"
    rss_before = rss_kb(app.proc.pid)

    async def one(seq: list) -> list[dict]:
        async with connect(url, compression=None, max_size=None) as ws:
            reader = asyncio.create_task(collect_until_closed(ws, timeout=20))
            for item in seq:
                await ws.send(item)
            await ws.send(json.dumps({"type": "CloseStream"}))
            return await reader

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(FRAMES, max_size=25))
    def check(seq):
        messages = asyncio.run(one(seq))
        kinds = [m["type"] for m in messages]
        assert "ready" in kinds and kinds[-1] == "closed" and kinds.count("closed") == 1
        assert {m["code"] for m in messages if m["type"] == "error"} <= KNOWN_CODES

    async def bystander() -> list[dict]:
        return await run_capture(url, tone_pcm(4.0), pace=0.04)

    import threading
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(msgs=asyncio.run(bystander())))
    t.start()
    check()
    t.join(60)
    assert finals(result["msgs"]) == [" ".join(x) for x in DEFAULT_SCRIPT]  # the other session was unaffected
    with urllib.request.urlopen(app.http + "/healthz", timeout=5) as r:
        assert r.status == 200
    assert rss_kb(app.proc.pid) - rss_before < 60_000  # KB: bounded, nothing accumulates per session


async def test_thousands_of_tiny_frames(app, sim):
    """5,000 two-byte frames as fast as the client can send, then ordinary audio: every byte arrives in order,
    the session carries on, and the server stays responsive."""
    tiny = [i.to_bytes(2, "little", signed=True) for i in range(-2500, 2500)]
    pcm = tone_pcm(3.0)
    t0 = asyncio.get_running_loop().time()
    async with connect(f"{app.ws}/ws/listen", compression=None) as ws:
        reader = asyncio.create_task(collect_until_closed(ws, timeout=30))
        for frame in tiny:
            await ws.send(frame)
        for chunk in frames(pcm):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await reader
    assert asyncio.get_running_loop().time() - t0 < 15
    assert not [m for m in messages if m["type"] == "error"]
    rec = sim.records[0]
    assert bytes(rec.audio[: 10000 + len(pcm)]) == b"".join(tiny) + pcm
    with urllib.request.urlopen(app.http + "/healthz", timeout=5) as r:
        assert r.status == 200
