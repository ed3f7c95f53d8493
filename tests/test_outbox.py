"""The browser's send queue (webapp/browsersocket.py, Outbox) against a fake BrowserSocket, in-process: what is
sent, what waits, what is dropped first, and when a browser is given up on. The real sockets are covered end to end
by test_relay_hardening.py (a flood, a page that does not read) on both socket kinds."""
from __future__ import annotations

import asyncio

import pytest

from webapp.browsersocket import OUTBOX_HARD_LIMIT, OUTBOX_LIMIT, Outbox
from webapp.protocol import transcript


class FakeSocket:
    """A direct socket whose buffer is full (writable False) until the test says otherwise."""

    sending = False

    def __init__(self, writable=True):
        self.writable = writable
        self.sent: list[dict] = []

    def send_event(self, event):
        self.sent.append(event)
        return True


def interim(n):
    return transcript(n, f"t{n}", False, 0.0, 1.0)


def final(n):
    return transcript(n, f"t{n}", True, 0.0, 1.0)


# (name, events put while the browser's buffer is full, what it gets once it has room, given up on)
CASES = [
    ("written in order once there is room", [interim(0), final(0)], [("t0", False), ("t0", True)], False),
    ("over the limit the oldest interims go first, finals stay",
     [final(0)] + [interim(i) for i in range(1, OUTBOX_LIMIT + 1)] + [final(1)],
     [("t0", True)] + [(f"t{i}", False) for i in range(3, OUTBOX_LIMIT + 1)] + [("t1", True)], False),
    ("too many finals: given up on, nothing more is sent", [final(i) for i in range(OUTBOX_HARD_LIMIT + 1)], [], True),
]


@pytest.mark.parametrize("name, events, sent, slow", CASES, ids=[c[0] for c in CASES])
async def test_what_a_slow_browser_gets(name, events, sent, slow):
    sock, why = FakeSocket(writable=False), []
    out = Outbox(sock, why.append, slow_after=60)
    for event in events:
        out.put(event)
    sock.writable = True
    out.flush()
    out.cancel()
    assert [(e["text"], e["final"]) for e in sock.sent] == sent
    assert out.slow is slow and bool(why) is slow


async def test_a_browser_that_takes_nothing_for_slow_after_seconds_is_given_up_on():
    sock, why = FakeSocket(writable=False), []
    out = Outbox(sock, why.append, slow_after=0.05)
    out.put(final(0))
    given_up = asyncio.get_running_loop().create_future()
    out.on_slow = given_up.set_result
    assert await asyncio.wait_for(given_up, 5) == "nothing taken for 0.05 s"
    assert out.slow and out.queued == 0


async def test_bad_input_errors_are_coalesced_per_code():
    sock = FakeSocket()
    out = Outbox(sock, lambda why: None)
    for _ in range(5):
        out.bad_input("bad_audio", "frame dropped")
    out.bad_input("bad_message", "not JSON")
    out.bad_input_summary()  # the session ends before the window does
    assert [(e["code"], e["message"]) for e in sock.sent] == [
        ("bad_audio", "frame dropped"), ("bad_message", "not JSON"),
        ("bad_audio", "frame dropped (4 more like it dropped)")]
