"""The recorder's rule, in process against the memory store and broker: every final is stored before it is
published, once each and in order, whatever fails on the way (the store, or the publish after the store took it)."""
from __future__ import annotations

import asyncio

import pytest

from webapp import recorder as recorder_mod
from webapp.broker import MemoryBroker
from webapp.recorder import Recorder, Recording
from webapp.store import MemoryStore


class FlakyStore(MemoryStore):
    """Refuses its first `fails` writes of finals, and records the ones it took."""

    def __init__(self, fails: int):
        super().__init__()
        self.fails = fails
        self.appended: list[int] = []

    async def append_final(self, session_id, seq, turn):
        if self.fails:
            self.fails -= 1
            raise ConnectionError("store down")
        self.appended.append(seq)
        await super().append_final(session_id, seq, turn)


class CheckingBroker(MemoryBroker):
    """Fails its first `fails` publishes; records what it published and whether the store had it by then."""

    def __init__(self, fails: int, store: MemoryStore):
        super().__init__()
        self.fails = fails
        self.store = store
        self.published: list[tuple[str, int | None, bool]] = []

    async def publish(self, session_id, live):
        if self.fails:
            self.fails -= 1
            raise ConnectionError("broker down")
        if live.kind == "final":
            stored = live.seq in self.store.turns.get(session_id, {})
        else:
            stored = self.store.sessions[session_id]["end_reason"] is not None
        self.published.append((live.kind, live.seq, stored))
        await super().publish(session_id, live)


SESSION = type("Session", (), {"id": "s1", "resumed": False, "audio_seconds": 3.0, "out": None,
                               "settings": type("S", (), {"backend": "deepgram", "model": "m", "cost_per_minute": 0.0}),
                               "params": type("P", (), {"sample_rate": 16000, "name": None})})()


@pytest.mark.parametrize("store_fails, publish_fails", [(0, 0), (2, 0), (0, 1), (3, 2)])
async def test_each_final_is_stored_then_published_once_in_order(monkeypatch, store_fails, publish_fails):
    monkeypatch.setattr(recorder_mod, "backoff", lambda attempt: 0.0)  # retry at once: no waiting in a unit test
    store = FlakyStore(store_fails)
    broker = CheckingBroker(publish_fails, store)
    recording = Recording(store, broker)
    recorder = Recorder(recording, lambda session_id, version: "tok", None)
    feed = broker.subscribe("s1")
    ready = await recorder.opened(SESSION)
    assert ready == {"share_url": "/s/tok", "short_url": f"/v/{store.sessions['s1']['short_id']}"}
    for turn in range(3):
        recorder.event({"type": "transcript", "turn": turn, "text": f"t{turn}", "final": True, "start": turn,
                        "end": turn + 0.5, "words": []})
    await recorder.closed(SESSION, "client_closed")
    await asyncio.wait_for(asyncio.shield(recorder.writer), 5)

    assert store.appended == [0, 1, 2]  # each stored once (a failed publish does not store it again)
    assert broker.published == [("final", 0, True), ("final", 1, True), ("final", 2, True), ("ended", None, True)]
    assert [(m.kind, m.seq) for m in feed.items] == [("final", 0), ("final", 1), ("final", 2), ("ended", None)]
    assert (recording.held, recording.lost, recording.writers) == (0, 0, set())
    assert [t["text"] for t in await store.get_turns("s1")] == ["t0", "t1", "t2"]
    missed = await recording.catch_up("s1", 1)  # what a viewer that saw only seq 0 is sent when its feed was down
    assert [(m.kind, m.seq) for m in missed] == [("final", 1), ("final", 2), ("ended", None)]
