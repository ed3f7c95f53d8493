"""Finals decoded by another worker (webapp/recognizer.py, _FinalDecoder): two real worker processes, real speech.

LOCAL_OFFLOAD_ALWAYS makes every final go to the other worker while its decoder is idle (normally only a final
that would queue behind another decode does), so that the path runs on every turn here."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speech  # noqa: E402
from test_local import SETTINGS, check_turns, feed, silence  # noqa: E402

from webapp import recognizer  # noqa: E402
from webapp.protocol import StreamParams  # noqa: E402
from webapp.upstreams.local import LocalUpstream  # noqa: E402


@pytest.fixture
async def pool(monkeypatch):
    recognizer.shutdown()
    monkeypatch.setenv("LOCAL_OFFLOAD_ALWAYS", "1")  # read by the worker processes this pool starts
    p = recognizer.Pool(max_streams=2, workers=2)
    await asyncio.get_running_loop().run_in_executor(None, p.wait_ready)
    recognizer._pool = p
    yield p
    recognizer.shutdown()


async def start(events: list) -> LocalUpstream:
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    up.listener = events.append  # events as they come, not only at the end
    return up


def other_worker(pool, up: LocalUpstream):
    return next(w for w in pool.workers if w is not up._stream.worker)


async def test_a_final_decoded_by_the_other_worker_comes_back_to_its_stream(pool):
    a, b = speech.clip("lv-0880"), speech.clip("cards-005")
    events: list[dict] = []
    up = await start(events)
    await feed(up, silence(0.3) + a.pcm + silence(1.0) + b.pcm + silence(1.0))
    assert sum(1 for e in events if e["type"] == "turn" and e["event"] == "EndOfTurn") >= 2  # before close
    await up.close()
    finals = check_turns(events)
    assert speech.wer(a.ref + " " + b.ref, " ".join(finals)) <= 0.25, finals
    assert pool.offloads >= 2  # the turns' finals were decoded by the other worker


async def test_a_stuck_worker_costs_a_timeout_not_a_final(pool):
    c = speech.clip("goforward")  # one short phrase: one speculative final, and it goes to the stuck worker
    events: list[dict] = []
    up = await start(events)
    stuck = other_worker(pool, up)
    os.kill(stuck.proc.pid, signal.SIGSTOP)  # alive but not answering: its decodes never come back
    try:
        await feed(up, silence(0.3) + c.pcm + silence(recognizer.OFFLOAD_TIMEOUT + 1.0))
        finals = [e["text"] for e in events if e["type"] == "transcript" and e["final"]]
        assert finals and pool.offloads >= 1  # sent to the stuck worker, then decoded at home
        assert speech.wer(c.ref, " ".join(finals)) <= 0.34, finals
        await feed(up, c.pcm + silence(0.8))  # the session goes on, decoding its own finals meanwhile
        await up.close()
    finally:
        os.kill(stuck.proc.pid, signal.SIGCONT)
    finals = check_turns(events)
    assert len(finals) >= 2 and speech.wer(c.ref + " " + c.ref, " ".join(finals)) <= 0.34, finals
