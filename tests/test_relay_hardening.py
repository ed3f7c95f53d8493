"""Hostile clients and faulty upstreams cost bounded work (issue 17, items 2, 3, 4 and 8's non-finite times).

- A client that floods bad frames and does not read: errors are coalesced, every put is O(1), the session
  beside it and /healthz are unaffected; a socket whose events wait unread is closed with `slow_client`.
- An upstream that accepts and then fails every connection: UPSTREAM_RETRY_SECONDS bounds the outage, the
  connections and the audio replayed (billed), then the page gets `upstream_unavailable` and `closed`.
- Provider error text (which may echo the credential) never reaches the browser; the log has it redacted.
- NaN/Infinity times make a provider message malformed: it is skipped, the session goes on, no reconnect.
All through a real app process, real sockets and the upstream simulator (tests/simulator.py).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect

from client import (FRAME, collect_until_closed, finals, frames, masked_frame, raw_listen, read_to_eof, run_capture,
                    tone_pcm, types)
from conftest import TEST_AIG_KEY, TEST_DG_KEY, running_app
from test_relay import SCRIPT_FINALS, assert_turn_order

FLOOD = 100_000   # one-byte binary frames: each one bad audio
PACE = 0.02       # 80 ms frames every 20 ms: four times real time


class HealthProbe:
    """Asks /healthz every 50 ms from a thread while it runs; the slowest answer is the event loop's worst stall."""

    def __init__(self, app):
        self.url, self.worst, self.count = app.http + "/healthz", 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                urllib.request.urlopen(self.url, timeout=5).read()
            except OSError:
                pass  # no answer in 5 s: counted as a 5 s stall
            self.worst = max(self.worst, time.monotonic() - t0)
            self.count += 1
            self._stop.wait(0.05)  # the probe's pace, not synchronisation

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


async def timed_capture(url: str, pcm: bytes) -> tuple[list[dict], float]:
    """A normal page: paced audio, CloseStream; returns its messages and the worst delay of a final (from
    sending the audio where the turn ends to receiving its final)."""
    sent_at: list[float] = []
    got: list[tuple[float, dict]] = []
    async with connect(url, compression=None) as ws:
        async def read():
            async for raw in ws:
                got.append((time.monotonic(), json.loads(raw)))
        reader = asyncio.create_task(read())
        for chunk in frames(pcm):
            await ws.send(chunk)
            sent_at.append(time.monotonic())
            await asyncio.sleep(PACE)  # real-time pacing of the audio
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, 20)
    worst = 0.0
    for t, m in got:
        if m["type"] == "transcript" and m["final"]:
            frame = min(-(-round(m["end"] * 32000) // FRAME) - 1, len(sent_at) - 1)  # the frame the turn ends in
            worst = max(worst, t - sent_at[frame])
    return [m for _, m in got], worst


# ---- item 2: a client that does not read ------------------------------------------------------------------

async def test_a_flood_from_a_client_that_does_not_read_leaves_other_sessions_alone(flux_app, sim):
    reader, writer = await raw_listen(flux_app.port)
    started = time.monotonic()
    with HealthProbe(flux_app) as probe:
        async def flood():
            writer.write(masked_frame(b"\x01") * FLOOD)  # 700 kB of one-byte frames; never reads a reply
            await writer.drain()
        normal = asyncio.create_task(timed_capture(f"{flux_app.ws}/ws/listen", tone_pcm(4.0)))
        await asyncio.wait_for(flood(), 30)
        messages, worst_final = await asyncio.wait_for(normal, 30)
    print(f"\n/healthz worst {probe.worst * 1000:.0f} ms over {probe.count} probes; "
          f"worst final delay {worst_final * 1000:.0f} ms")
    assert probe.worst < 1.0, f"/healthz took {probe.worst:.2f} s: the event loop stalled"
    assert finals(messages) == SCRIPT_FINALS and worst_final < 1.0, worst_final
    assert_turn_order(messages)
    # The flooder is told, in few messages, and every bad frame is accounted for.
    writer.write(masked_frame(json.dumps({"type": "CloseStream"}).encode(), opcode=0x1))
    events, close = await read_to_eof(reader, 20)
    writer.close()
    errors = [e for e in events if e["type"] == "error"]
    assert {e["code"] for e in errors} == {"bad_audio"}
    assert len(errors) <= 3 + 2 * (time.monotonic() - started), len(errors)
    counted = sum(int(e["message"].rsplit("(", 1)[1].split()[0]) if "more like it" in e["message"] else 1
                  for e in errors)  # an error, or a count of those dropped since
    assert counted == FLOOD, errors
    assert events[-1] == {"type": "closed", "reason": "client_closed"} and close[0] == 1000


SERVERS = {
    "caption-relay": None,  # the direct socket
    "plain uvicorn": ["-m", "uvicorn", "webapp.app:create_app", "--factory", "--host", "127.0.0.1",
                      "--port", "{port}", "--ws", "websockets-sansio", "--log-level", "info"],  # the ASGI fallback
}


@pytest.mark.parametrize("server", list(SERVERS))
async def test_a_socket_whose_events_wait_unread_is_closed_as_slow_client(server, simulator, session_tmp):
    """Long turns of long words with interim words (~6 MB of events, more than loopback's socket buffers hold)
    for a page that never reads: after SLOW_CLIENT_SECONDS without taking anything, the session is finalized
    and the socket closed with the reason."""
    script = [[f"w{i}.{j}-" + "x" * 500 for j in range(60)] for i in range(3)]
    simulator.reset(script=script, word_ms=80, eot_ms=100)  # a word per 80 ms frame: an interim per frame
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "SLOW_CLIENT_SECONDS": "1", "UPSTREAM_RETRY_SECONDS": "0"}
    with running_app(env, session_tmp, f"slow-{server.replace(' ', '-')}", argv=SERVERS[server]) as app:
        reader, writer = await raw_listen(app.port, "/ws/listen?interim_words=true")
        started = time.monotonic()
        writer.write(b"".join(masked_frame(f) for f in frames(tone_pcm(15.0))))
        await writer.drain()
        # The relay gives up on it: it finalizes the turn and closes the upstream (an event the simulator sees).
        await simulator.until(lambda: simulator.records and simulator.records[0].closed, timeout=15)
        gave_up_s = time.monotonic() - started
        events, close = await read_to_eof(reader, 15)
        writer.close()
        log = app.log_text()
    print(f"\n{server}: given up on after {gave_up_s:.2f} s; {len(events)} events read afterwards; close {close}")
    assert gave_up_s < 10
    assert close == (1008, "slow_client")
    assert "browser_not_reading" in log
    if server == "caption-relay":  # the direct socket writes its last events behind the queue
        assert events[-2]["code"] == "slow_client" and events[-1] == {"type": "closed", "reason": "slow_client"}
        assert '"reason": "slow_client"' in log  # session_end (plain uvicorn logs warnings only, not as JSON)


# ---- item 3: an upstream that accepts and fails every connection -------------------------------------------

async def test_a_flapping_upstream_is_given_up_on_within_the_retry_budget(simulator, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "3"}
    pcm = tone_pcm(3.0)
    simulator.reset()
    simulator.flap(after_bytes=32000)  # each connection fails after 1 s of audio, before any final
    with running_app(env, session_tmp, "flapping") as app:
        started = time.monotonic()
        messages = await run_capture(f"{app.ws}/ws/listen", pcm, pace=PACE, close=False)
        wall = time.monotonic() - started
    print(f"\nflapping upstream: {simulator.connection_count} connections, {simulator.audio_bytes} bytes received "
          f"for {len(pcm)} spoken ({simulator.audio_bytes / len(pcm):.1f}x), given up after {wall:.1f} s")
    assert simulator.connection_count <= 10
    assert simulator.audio_bytes <= 4 * len(pcm)
    assert wall < 3 + 6  # the budget, and one capped backoff
    assert types(messages)[-2:] == ["error", "closed"]
    assert messages[-2]["code"] == "upstream_unavailable" and messages[-2]["retryable"] is True
    assert messages[-1] == {"type": "closed", "reason": "upstream_error"}
    assert "reconnecting" in [m.get("state") for m in messages if m["type"] == "status"]


# ---- item 4: provider error text -------------------------------------------------------------------------

@pytest.mark.parametrize("app_name, key", [("flux_app", TEST_DG_KEY), ("gateway_app", TEST_AIG_KEY)])
async def test_provider_error_text_echoing_the_key_never_reaches_the_browser(request, sim, app_name, key):
    app = request.getfixturevalue(app_name)
    sim.faults.error_after_bytes = 10 * FRAME
    sim.faults.error_text = "invalid credentials: {auth} was refused by upstream-gw-7"
    messages = await run_capture(f"{app.ws}/ws/listen", tone_pcm(2.0), close=False)
    shown = json.dumps(messages)
    assert key not in shown and "upstream-gw-7" not in shown and "invalid credentials" not in shown
    err = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in err] == ["upstream_auth"] and err[0]["retryable"] is False and err[0]["message"]
    assert messages[-1] == {"type": "closed", "reason": "upstream_error"}
    log = app.log_text()
    assert key not in log
    assert "upstream-gw-7" in log and "[redacted]" in log  # the operator still sees what the provider said


# ---- item 8: non-finite times ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", '"NaN"', '"Infinity"', '"-Infinity"'])
async def test_non_finite_times_are_a_malformed_message_not_a_reconnect_loop(flux_app, sim, value):
    sim.faults.nonfinite = value  # in every Update: StartOfTurn and EndOfTurn are well-formed
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(4.0))
    assert finals(messages) == SCRIPT_FINALS
    assert not [m for m in messages if m["type"] in ("error", "status")], messages
    assert len(sim.records) == 1  # no reconnect
    times = [t for m in messages if m["type"] == "transcript" for t in (m["start"], m["end"])]
    assert all(isinstance(t, float) and t - t == 0 for t in times), times
    assert messages[-1] == {"type": "closed", "reason": "client_closed"}
