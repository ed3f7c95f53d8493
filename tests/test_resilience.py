"""Nothing lost: upstream faults heal by themselves, every audio byte reaches the recognizer once the link
is back, and the transcript has no duplicated or missing turn. Measured by what the upstream simulator
received across all of its connections."""
from __future__ import annotations

import numpy as np
import pytest

from client import FRAME, finals, run_capture
from conftest import TEST_AIG_KEY, TEST_DG_KEY, running_app
from test_relay import assert_turn_order

SCRIPT = [["Good", "morning", "everyone."], ["Welcome", "to", "the", "service."],
          ["Please", "take", "a", "seat."], ["We", "begin", "with", "a", "reading."]]
SECONDS = 7.6   # the four turns end at 1.3, 2.9, 4.5, 6.4 s of speaker audio
PACE = 0.02     # 80 ms frames every 20 ms: four times real time


def speaker_audio(seconds: float = SECONDS) -> bytes:
    """Noise-like PCM: any 64 bytes of it occur once, so the simulator can place a replay on the timeline."""
    return np.random.default_rng(7).integers(-3000, 3000, int(seconds * 16000), dtype=np.int16).tobytes()


def coverage(pcm: bytes, records) -> list[tuple[int, int]]:
    """Where each connection's audio sits in the speaker's audio; checks it is an exact, in-order slice."""
    spans = []
    for rec in records:
        audio = bytes(rec.audio)
        if not audio:
            continue
        start = pcm.find(audio[:64])
        assert start >= 0 and pcm[start:start + len(audio)] == audio, "a connection got audio out of order or altered"
        spans.append((start, start + len(audio)))
    return spans


def union(spans):
    merged = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


@pytest.fixture(scope="module")
def resilient_app(simulator, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_PING_SECONDS": "1", "UPSTREAM_RETRY_SECONDS": "20"}
    with running_app(env, session_tmp, "resilient") as app:
        yield app


FAULTS = [
    ("connection dropped", dict(drop_after_bytes=40 * FRAME, connections=1)),
    ("upstream stalls", dict(stall_after_bytes=40 * FRAME, connections=1)),
    ("Error message", dict(error_after_bytes=40 * FRAME, connections=1)),
    ("429 with Retry-After", dict(handshake_status=429, retry_after="1", connections=1)),
    ("503 then OK", dict(handshake_status=503, connections=2)),
    ("drop, then 503 on reconnect", dict(drop_after_bytes=30 * FRAME, connections=1)),
]


@pytest.mark.parametrize("label, faults", FAULTS, ids=[f[0] for f in FAULTS])
async def test_upstream_fault_heals_without_losing_audio(resilient_app, sim, label, faults):
    pcm = speaker_audio()
    sim.reset(script=SCRIPT, reference=pcm)
    for k, v in faults.items():
        setattr(sim.faults, k, v)
    messages = await run_capture(f"{resilient_app.ws}/ws/listen", pcm, pace=PACE)

    assert len(sim.records) >= 2, "the relay reconnected"
    states = [m["state"] for m in messages if m["type"] == "status"]
    assert states[:2] == ["reconnecting", "live"], states
    assert not [m for m in messages if m["type"] in ("error", "gap")], messages
    # Every byte the browser sent reached the recognizer, in order, once the link healed.
    assert union(coverage(pcm, sim.records)) == [(0, len(pcm))]
    # Each turn exactly once, in order, numbered on, and timed on the session's timeline.
    assert finals(messages) == [" ".join(t) for t in SCRIPT]
    assert_turn_order([m for m in messages if m["type"] != "status"])
    ends = [m["end"] for m in messages if m["type"] == "transcript" and m["final"]]
    assert all(abs(e - want) < 0.25 for e, want in zip(ends, (1.3, 2.9, 4.5, 6.4))), ends
    assert messages[-1] == {"type": "closed", "reason": "client_closed"}


async def test_word_times_after_a_reconnect_move_onto_the_session_timeline_once(simulator, session_tmp):
    """A new connection's times are shifted onto the session's timeline. The gateway's v1 shape settles long turns
    in is_final segments whose words come again in every later interim of the turn and in its final: they must
    be shifted once, not once per event."""
    env = {"STT_BACKEND": "aigateway", "AIGATEWAY_API_KEY": TEST_AIG_KEY,
           "AIGATEWAY_REALTIME_URL": f"{simulator.url}/v1/realtime", "UPSTREAM_RETRY_SECONDS": "20"}
    pcm = speaker_audio()
    simulator.reset(script=SCRIPT, reference=pcm, segment_words=2)
    simulator.faults.drop_after_bytes, simulator.faults.connections = 20 * FRAME, 1
    with running_app(env, session_tmp, "gateway-resilient") as app:
        messages = await run_capture(f"{app.ws}/ws/listen?interim_words=true", pcm, pace=PACE)
    assert [m["state"] for m in messages if m["type"] == "status"][:2] == ["reconnecting", "live"]
    turns = [m for m in messages if m["type"] == "transcript" and m["final"]]
    assert [m["text"] for m in turns] == [" ".join(t) for t in SCRIPT]
    assert all(abs(m["end"] - want) < 0.25 for m, want in zip(turns, (1.3, 2.9, 4.5, 6.4))), turns
    for m in turns:  # each word inside its own turn, on the session's timeline
        assert m["words"] and all(m["start"] - 0.3 <= w["start"] <= w["end"] <= m["end"] + 0.01 for w in m["words"]), m


async def test_outage_longer_than_the_buffer_reports_the_gap(simulator, session_tmp):
    """Replay buffer 1 s; the upstream is down for ~1.7 s of wall time = ~7 s of audio at 4x pace."""
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "20", "REPLAY_SECONDS": "1"}
    pcm = speaker_audio(12.0)
    simulator.reset(script=SCRIPT, reference=pcm)
    simulator.faults.drop_after_bytes, simulator.faults.connections = 10 * FRAME, 1
    with running_app(env, session_tmp, "small-buffer") as app:
        # Refuse the reconnects for a while: the second to fourth connection attempts get 503.
        simulator.faults.handshake_status = 503
        simulator.faults.connections = 4
        messages = await run_capture(f"{app.ws}/ws/listen", pcm, pace=PACE)
    gaps = [m for m in messages if m["type"] == "gap"]
    assert gaps and all(g["end"] > g["start"] for g in gaps) and "could not be transcribed" in gaps[0]["message"]
    lost = [(int(g["start"] * 32000), int(g["end"] * 32000)) for g in gaps]
    got = coverage(pcm, simulator.records)
    # What reached the recognizer plus what was reported lost is the whole session, nothing unaccounted.
    assert union(got + lost) == [(0, len(pcm))]
    assert messages[-1]["type"] == "closed"
    assert [m["state"] for m in messages if m["type"] == "status"][-1] == "live"


async def test_a_turn_longer_than_the_buffer_on_a_healthy_link_loses_nothing(simulator, session_tmp):
    """REPLAY_SECONDS=1 while the first turn takes 2.5 s: the buffer overflows on a healthy link, which has every
    byte, so a later reconnect (a drop at 3.0 s, after that turn's final) must not report a gap."""
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "REPLAY_SECONDS": "1", "UPSTREAM_RETRY_SECONDS": "20"}
    pcm = speaker_audio(4.0)
    simulator.reset(reference=pcm)
    simulator.faults.drop_after_bytes, simulator.faults.connections = 3 * 32000, 1
    with running_app(env, session_tmp, "long-turn") as app:
        messages = await run_capture(f"{app.ws}/ws/listen", pcm, pace=PACE)
    assert [m["state"] for m in messages if m["type"] == "status"] == ["reconnecting", "live"]
    assert not [m for m in messages if m["type"] in ("gap", "error")], messages
    assert finals(messages) == ["Hello world, this is a caption test.", "Second turn here."]
    assert union(coverage(pcm, simulator.records)) == [(0, len(pcm))]
