"""The capture socket's fast path (webapp/audiosocket.py) and the server shapes around it: the same session
through caption-relay (direct socket) and through a plain ASGI server (the fallback), fragmented upstream
messages, and `--workers` on one port."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect

from client import collect_until_closed, finals, frames, run_capture, tone_pcm
from conftest import ROOT, TEST_DG_KEY, running_app
from test_relay import SCRIPT_FINALS, assert_turn_order

SERVERS = {
    # as users run it: uvicorn with DirectWebSocketProtocol, messages by callback
    "caption-relay": None,
    # any other ASGI server: the relay falls back to ASGI receive/send
    "plain uvicorn": ["-m", "uvicorn", "webapp.app:create_app", "--factory", "--host", "127.0.0.1",
                      "--port", "{port}", "--ws", "websockets-sansio", "--log-level", "warning"],
}


@pytest.mark.parametrize("server", list(SERVERS))
async def test_same_session_on_the_direct_socket_and_on_plain_asgi(server, simulator, session_tmp):
    simulator.reset()
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen"}
    pcm = tone_pcm(4.0)
    with running_app(env, session_tmp, f"server-{server.replace(' ', '-')}", argv=SERVERS[server]) as app:
        messages = await run_capture(f"{app.ws}/ws/listen", pcm)
    assert_turn_order(messages)
    assert finals(messages) == SCRIPT_FINALS
    assert messages[-1] == {"type": "closed", "reason": "client_closed"}
    rec = simulator.records[0]
    assert bytes(rec.audio[: len(pcm)]) == pcm  # every byte, in order
    assert rec.controls[-2:] == ["ForceEndTurn", "CloseStream"]


async def test_fragmented_upstream_messages_are_reassembled(flux_app, sim):
    sim.faults.fragment = True  # every TurnInfo arrives as three frames (a text frame and two continuations)
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(4.0))
    assert_turn_order(messages)
    assert finals(messages) == SCRIPT_FINALS


@pytest.mark.parametrize("env, says", [
    ({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY}, "REDIS_URL"),
    ({"STT_BACKEND": "local", "REDIS_URL": "redis://127.0.0.1:1/0"}, "LOCAL_MAX_STREAMS"),
])
def test_workers_refused_where_they_would_misbehave(env, says, tmp_path):
    full = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEEPGRAM_API_KEY", "STT_BACKEND")}
    full.update(env, DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "webapp", "--workers", "2", "--port", "1"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert says in proc.stderr and "--workers" in proc.stderr


async def test_two_workers_on_one_port_serve_sessions_and_stop_on_sigterm(simulator, session_tmp, redis_url):
    simulator.reset()
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "REDIS_URL": redis_url}
    argv = ["-m", "webapp", "--workers", "2", "--host", "127.0.0.1", "--port", "{port}"]
    with running_app(env, session_tmp, "workers", argv=argv) as app:
        # /healthz answers once one child serves; the other may still be importing (a cold first run took >1 s)
        deadline = time.monotonic() + 30
        while app.log_text().count("Application startup complete.") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling a log file: there is no event to await
        results = await asyncio.gather(*(run_capture(f"{app.ws}/ws/listen", tone_pcm(4.0)) for _ in range(6)))
        for messages in results:
            assert finals(messages) == SCRIPT_FINALS
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(20) == 0  # the supervisor passed the signal on and both workers stopped
    assert app.log_text().count("Started server process") == 2  # two uvicorn servers on the shared port


async def test_a_browser_that_stops_reading_loses_no_final(flux_app, sim):
    """The page's socket stops reading (a frozen tab) while the recognizer keeps talking: once the browser's
    buffers are full the relay holds events (dropping interims first, never finals) and sends them when it
    reads again."""
    # 200 turns of 16 long words: each interim repeats its turn's words (interim_words=true), ~6 MB of events, more than the
    # kernel buffers between the relay and the page hold (up to 4 MB on loopback)
    script = [[f"w{t}x{i}" + "a" * 150 for i in range(16)] for t in range(200)]
    sim.reset(script=script, word_ms=100, eot_ms=400)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no window autotuning
    sock.connect(("127.0.0.1", flux_app.port))
    pcm = tone_pcm(410.0)  # the script spans 400 s
    async with connect(f"{flux_app.ws}/ws/listen?interim_words=true", sock=sock, compression=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"  # live: the audio goes straight through
        ws.transport.pause_reading()  # the frozen tab: nothing more is read from the socket
        for chunk in frames(pcm):  # 80 ms frames, sent as fast as the relay takes them; nothing is read
            await ws.send(chunk)
        ended = lambda: sim.records and sum(1 for m in sim.records[0].sent if m.get("event") == "EndOfTurn")  # noqa: E731
        await sim.until(lambda: ended() == len(script), 60)
        await ws.send(json.dumps({"type": "CloseStream"}))
        ws.transport.resume_reading()  # the tab wakes up
        messages = await collect_until_closed(ws, timeout=60)
    assert finals(messages) == [" ".join(t) for t in script]
    assert messages[-1]["type"] == "closed"
    assert '"browser_slow"' in flux_app.log_text()  # the relay did hold events for this page
    interims = sum(1 for m in messages if m["type"] == "transcript" and not m["final"])
    assert interims < sum(len(turn) for turn in script)  # ... and let interims go to keep the finals


def test_upstream_frame_masks_differ_between_processes():
    """picows masks client frames with libc rand() (picows.pyx: `mask = <uint32_t>rand()`), which is the same
    sequence in every process unless seeded: two relays must not mask their upstream audio alike (RFC 6455 §5.3)."""
    probe = ("import ctypes, webapp.upstreams.wsclient\n"  # loading the upstream client seeds the masks
             "libc = ctypes.CDLL(None)\n"
             "print([libc.rand() for _ in range(4)])\n")
    unseeded = "import ctypes; libc = ctypes.CDLL(None); print([libc.rand() for _ in range(4)])"
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
            for code in (probe, probe, unseeded, unseeded)]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    first, second, plain1, plain2 = (run.stdout.strip() for run in runs)
    assert plain1 == plain2  # what picows would use without the seed: the same keys in every process
    assert first != second and first != plain1
