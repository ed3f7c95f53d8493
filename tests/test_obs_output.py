"""The OBS output (webapp/outputs/obs.py) against the obs-websocket simulator (tests/fake_obs.py): a real
WebSocket server on loopback that checks the auth challenge and answers as obs-websocket 5 does.

Table-driven where the cases share a shape: authentication, 608 formatting, refused captions.
"""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fake_obs import FakeObs

from webapp.logs import JsonFormatter
from webapp.outputs.base import Caption, DeliveryError
from webapp.outputs.obs import MAX_BYTES, NOT_STREAMING, ROW_CHARS, ObsDestination, format_608


def cap(text: str, turn: int = 0, final: bool = True) -> Caption:
    return Caption(session_id="s1", turn=turn, text=text, start=0.0, end=1.0, spoken_at=1.79e9, final=final,
                   seq=turn if final else None)


@pytest.fixture
def fake():
    made: list[FakeObs] = []

    def make(**kw) -> FakeObs:
        made.append(sim := FakeObs(**kw).start())
        return sim

    yield make
    for sim in made:
        sim.stop()


@pytest.fixture
async def dests():
    made: list[ObsDestination] = []

    def make(url: str, password: str | None = None, **kw) -> ObsDestination:
        made.append(dest := ObsDestination(url, password, **kw))
        return dest

    yield make
    for dest in made:
        await dest.close()


# ---- authentication ------------------------------------------------------------------------------
AUTH = [
    # (OBS's password, the output's password, error expected in start(), close codes OBS sent)
    ("no password either side", None, None, None, []),
    ("right password", "s3cret-obs-pw", "s3cret-obs-pw", None, []),
    ("non-ASCII password", "pässwörd-ÿ", "pässwörd-ÿ", None, []),
    ("OBS without auth ignores a given password", None, "unused-pw", None, []),
    ("wrong password", "s3cret-obs-pw", "not-the-pw", "OBS refused the password", [4009]),
    ("password missing", "s3cret-obs-pw", None, "OBS asks for a password", []),
]


@pytest.mark.parametrize("label, server_pw, client_pw, error, closes", AUTH, ids=[a[0] for a in AUTH])
async def test_authentication(fake, dests, label, server_pw, client_pw, error, closes):
    sim = fake(password=server_pw)
    dest = dests(sim.url, client_pw)
    if error is None:
        assert await dest.start() is None  # OBS keeps no caption sequence
        assert sim.identified == 1 and sim.auth_failures == 0
        assert await dest.deliver(cap("Hello OBS."), 1) is True
        assert sim.texts() == ["Hello OBS."]
        return
    with pytest.raises(DeliveryError) as info:
        await dest.start()
    assert error in info.value.message and info.value.retryable is False
    assert sim.wait_for(lambda: sim.closes == closes)
    assert sim.identified == 0
    # A refused output does not knock again: the next call fails at once, without a connection.
    attempts = sim.auth_failures
    with pytest.raises(DeliveryError) as again:
        await dest.deliver(cap("Hello"), 1)
    assert again.value.retryable is False and sim.auth_failures == attempts


async def test_unreachable_obs_is_retryable_with_a_clear_message(fake, dests):
    sim = fake()
    url = sim.url
    sim.stop()  # nothing listens on that port now
    dest = dests(url, None, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        await dest.start()
    assert info.value.retryable is True and "cannot reach OBS" in info.value.message
    assert url not in info.value.message and str(sim.port) not in info.value.message
    assert time.monotonic() - t0 < 2.0


async def test_a_bad_address_is_not_retried(dests):
    with pytest.raises(DeliveryError) as info:
        await dests("http://127.0.0.1:4455", None).start()
    assert info.value.retryable is False and "ws://host:4455" in info.value.message


NOT_OBS = [
    # (what answers at the address, words in the error)
    ("an HTTP server, not WebSocket", "http", "not obs-websocket"),
    ("WebSocket, but its first message is not Hello", '{"op": 2, "d": {}}', "not as obs-websocket 5 does"),
    ("WebSocket, not JSON", "hello there", "not as obs-websocket 5 does"),
    ("JSON nested 5000 deep", "[" * 5000 + "]" * 5000, "not as obs-websocket 5 does"),  # json's recursion limit
    ("a first message over 1 MiB", '{"op": 0, "d": "' + "x" * 2**20 + '"}', "closed the connection while"),
]


@pytest.mark.parametrize("label, first, words", NOT_OBS, ids=[n[0][:40] for n in NOT_OBS])
async def test_something_else_at_the_address(fake, dests, label, first, words):
    if first == "http":
        server = await asyncio.start_server(http_404, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    else:
        sim = fake()
        sim.hello_text = first
        url = sim.url
    with pytest.raises(DeliveryError) as info:
        await dests(url, None, timeout=2.0).start()
    assert words in info.value.message and info.value.retryable is True
    if first == "http":
        server.close()


async def test_a_redirect_is_not_followed(fake, dests):
    """An allowed address that redirects elsewhere (here: to a real obs-websocket) is refused, not followed."""
    sim = fake()

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: {sim.url}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    try:
        with pytest.raises(DeliveryError) as info:
            await dests(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", None).start()
        assert "not obs-websocket" in info.value.message
        assert sim.connections == 0
    finally:
        server.close()


async def test_a_kicked_output_does_not_come_back(fake, dests):
    """4011 SessionInvalidated (OBS's Kick button): the protocol says not to reconnect automatically."""
    sim = fake()
    dest = dests(sim.url, None)
    await dest.start()
    sim.kick()
    assert await poll(lambda: dest._ws is None)
    with pytest.raises(DeliveryError) as info:
        await dest.deliver(cap("Hello."), 1)
    assert info.value.retryable is False and "Kick" in info.value.message
    assert sim.identified == 1  # no new connection


# ---- streaming or not ----------------------------------------------------------------------------
async def test_not_streaming_skips_with_the_detail_and_events_switch_it(fake, dests):
    sim = fake(streaming=False)
    dest = dests(sim.url, None, status_ttl=60.0)  # a long cache: only the events can change what it knows
    await dest.start()
    assert dest.detail() == NOT_STREAMING
    assert await dest.deliver(cap("Nobody sees this."), 1) is False
    assert sim.texts() == [] and "SendStreamCaption" not in sim.requests

    sim.set_streaming(True)  # StreamStateChanged {outputActive: true}
    assert await poll(lambda: dest.detail() is None)
    assert await dest.deliver(cap("Now they do."), 2) is True
    assert sim.texts() == ["Now they do."]
    assert sim.requests.count("GetStreamStatus") == 1  # the event was enough, no second status request

    sim.set_streaming(False)
    assert await poll(lambda: dest.detail() == NOT_STREAMING)
    assert await dest.deliver(cap("Gone again."), 3) is False
    assert sim.texts() == ["Now they do."]


async def test_the_stream_status_is_refreshed_after_its_ttl(fake, dests):
    sim = fake(streaming=True)
    dest = dests(sim.url, None, status_ttl=0.2)
    await dest.start()
    assert await dest.deliver(cap("One."), 1) is True
    sim.streaming = False  # changed without an event (one the output missed): only a new status request tells
    assert await poll(lambda: dest._status_at < time.monotonic() - 0.2)
    assert await dest.deliver(cap("Two."), 2) is False
    assert dest.detail() == NOT_STREAMING and sim.texts() == ["One."]
    assert sim.requests.count("GetStreamStatus") == 2


async def test_a_stream_that_stopped_unseen_is_a_skip_not_an_error(fake, dests):
    """The cached status still says streaming; OBS answers 501 and a fresh status says it stopped."""
    sim = fake(streaming=True)
    dest = dests(sim.url, None, status_ttl=60.0)
    await dest.start()
    sim.streaming = False  # no event
    assert await dest.deliver(cap("Late."), 1) is False
    assert dest.detail() == NOT_STREAMING and sim.requests[-2:] == ["SendStreamCaption", "GetStreamStatus"]


# ---- what goes on screen --------------------------------------------------------------------------
LONG = ("This is a long turn that goes on and on well past what two rows of a caption can hold at once, "
        "so only its end is shown.")
FORMAT = [
    ("short", "Hello world.", "Hello world."),
    ("exactly one row", "x" * 32, "x" * 32),
    ("wraps at a word", "The quick brown fox jumps over the lazy dog.",
     "The quick brown fox jumps over\nthe lazy dog."),
    ("keeps the last two rows", LONG, "of a caption can hold at once,\nso only its end is shown."),
    ("spaces and newlines collapse", "  Hello \n\t world  ", "Hello world"),
    ("control characters go", "Hel\x00lo\x07 there", "Hel lo there"),
    ("a word longer than a row is cut", "a" * 40, "a" * 32 + "\n" + "a" * 8),
    ("hyphens are not break points", "state-of-the-art " * 3, "state-of-the-art\nstate-of-the-art"),
    ("nothing to show", "   ", ""),
]


@pytest.mark.parametrize("label, text, expected", FORMAT, ids=[f[0] for f in FORMAT])
def test_format_608(label, text, expected):
    out = format_608(text)
    assert out == expected
    rows = out.split("\n") if out else []
    assert len(rows) <= 2 and all(len(r) <= ROW_CHARS for r in rows)
    assert len(out.encode()) <= MAX_BYTES


def test_format_608_fits_libobs_bytes_with_wide_characters():
    out = format_608("🎤" * 60)  # 4 bytes each: two rows would be 256 bytes, libobs keeps 128
    assert out == "🎤" * 28 and len(out.encode()) <= MAX_BYTES


def test_format_608_rows_are_stable_as_a_turn_grows():
    """Early captions of one turn carry its growing beginning: a row on screen keeps its words, so the screen
    rolls up a row at a time (the new top row is the old bottom one) instead of re-wrapping."""
    words = LONG.split()
    shown = [format_608(" ".join(words[:n])).split("\n") for n in range(1, len(words) + 1)]
    for before, after in zip(shown, shown[1:], strict=False):
        assert after[0] in (before[0], before[-1]) or (len(before) == 1 and after[0].startswith(before[0]))


async def test_streaming_captions_arrive_in_order_formatted(fake, dests):
    sim = fake(password="pw-1234")
    dest = dests(sim.url, "pw-1234")
    await dest.start()
    texts = [f"Caption number {i}: " + "words " * (i % 9) for i in range(30)] + [LONG]
    for seq, text in enumerate(texts, 1):
        assert await dest.deliver(cap(text, turn=seq), seq) is True
    assert sim.texts() == [format_608(t) for t in texts]
    assert sim.texts()[-1] == "of a caption can hold at once,\nso only its end is shown."
    assert sim.identified == 1  # one connection for all of them
    assert await dest.deliver(cap(" \n "), 99) is False  # an empty caption would clear the screen: skipped


# ---- OBS says no ----------------------------------------------------------------------------------
REFUSED = [
    # (code OBS answers SendStreamCaption with, comment, retryable, retry_after, words in the message)
    ("not ready (scene collection change)", 207, None, True, 1, "code 207"),
    ("invalid field, with comment", 400, "Parameter: captionText", False, None, "Parameter: captionText"),
    ("unknown request type", 204, "Your request type is not valid.", False, None, "code 204"),
]


@pytest.mark.parametrize("label, code, comment, retryable, retry_after, words", REFUSED, ids=[r[0] for r in REFUSED])
async def test_refused_captions(fake, dests, label, code, comment, retryable, retry_after, words):
    sim = fake()
    dest = dests(sim.url, None)
    await dest.start()
    sim.caption_code, sim.comment = code, comment
    with pytest.raises(DeliveryError) as info:
        await dest.deliver(cap("Hello."), 1)
    assert info.value.retryable is retryable and info.value.retry_after == retry_after
    assert words in info.value.message and "OBS refused the caption" in info.value.message
    sim.caption_code = None
    assert await dest.deliver(cap("Hello."), 1) is True  # the same connection still works


async def test_501_while_streaming_is_retried_then_fails_with_the_known_fault(fake, dests):
    """obsproject/obs-websocket#1048: 501 to SendStreamCaption although GetStreamStatus says active."""
    sim = fake(streaming=True)
    dest = dests(sim.url, None)
    await dest.start()
    sim.caption_code = 501
    errors = []
    for _ in range(3):
        with pytest.raises(DeliveryError) as info:
            await dest.deliver(cap("Hello."), 1)
        errors.append(info.value)
    assert [e.retryable for e in errors] == [True, True, False]
    assert errors[0].retry_after == 2
    assert "#1048" in errors[-1].message and "overlay" in errors[-1].message
    assert sim.texts() == []


# ---- a stalled, dropped or restarted OBS ---------------------------------------------------------
STALLS = [("requests never answered", "stall"), ("Hello never sent", "mute_hello")]


@pytest.mark.parametrize("label, fault", STALLS, ids=[s[0] for s in STALLS])
async def test_a_stalled_obs_bounds_each_call(fake, dests, label, fault):
    sim = fake()
    dest = dests(sim.url, None, timeout=0.8)
    if fault == "stall":
        await dest.start()
    setattr(sim, fault, True)
    for call in (dest.start, lambda: dest.deliver(cap("Hello."), 1)):
        t0 = time.monotonic()
        with pytest.raises(DeliveryError) as info:
            await call()
        elapsed = time.monotonic() - t0
        assert info.value.retryable is True and "did not answer within 0.8 s" in info.value.message
        assert 0.7 < elapsed < 1.5, elapsed
    setattr(sim, fault, False)
    assert await dest.deliver(cap("Hello."), 1) is True  # a fresh connection once OBS answers again
    assert sim.texts() == ["Hello."]


async def test_obs_restart_reconnects_and_continues(fake, dests):
    sim = fake(password="pw-restart")
    dest = dests(sim.url, "pw-restart", timeout=1.0)
    await dest.start()
    delivered, errors = [], []
    for seq in range(1, 4):
        assert await dest.deliver(cap(f"Before {seq}.", seq), seq) is True
        delivered.append(f"Before {seq}.")
    restarting = asyncio.create_task(sim.arestart(down_for=0.8))
    assert await poll(lambda: sim.closes == [1001])  # OBS is going down: captions meet a closed or refused socket
    # Each caption is retried as the manager would (same seq), until OBS is back: bounded in count and time.
    for seq in range(4, 8):
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await dest.deliver(cap(f"After {seq}.", seq), seq) is True
                break
            except DeliveryError as exc:
                assert exc.retryable, exc.message
                errors.append(exc.message)
                assert time.monotonic() < deadline, errors
                await asyncio.sleep(0.05)  # the manager's backoff
        delivered.append(f"After {seq}.")
    await restarting
    assert sim.texts() == delivered  # in order, none lost, none twice
    assert sim.identified == 2 and sim.closes == [1001]
    assert errors and all("OBS" in e for e in errors)
    assert any("cannot reach OBS" in e or "closed the connection" in e for e in errors)


async def test_a_dropped_connection_is_one_retryable_error(fake, dests):
    sim = fake()
    dest = dests(sim.url, None)
    await dest.start()
    sim.drop()  # TCP cut, no close frame
    assert await poll(lambda: dest._ws is None)
    with pytest.raises(DeliveryError) as info:  # not reconnected behind the caller's back: the next call does
        await dest._request("GetStreamStatus")
    assert info.value.retryable is True
    assert await dest.deliver(cap("Back."), 1) is True
    assert sim.identified == 2 and sim.texts() == ["Back."]


# ---- logs ----------------------------------------------------------------------------------------
async def test_the_password_is_never_logged(fake, dests, caplog):
    password = "hunter2-obs-Password"
    caplog.set_level(logging.DEBUG)  # every logger, the websockets library's frame dumps included
    sim = fake(password=password)
    good = dests(sim.url, password, timeout=0.8)
    await good.start()
    assert await good.deliver(cap("Logged?"), 1) is True
    sim.drop()
    assert await poll(lambda: good._ws is None)
    assert await good.deliver(cap("Again."), 2) is True
    sim.stall = True
    with pytest.raises(DeliveryError):
        await good.deliver(cap("Stalled."), 3)
    sim.stall = False
    with pytest.raises(DeliveryError):
        await dests(sim.url, password + "x").start()
    events = [r.getMessage() for r in caplog.records]
    assert {"obs_connected", "obs_disconnected", "obs_stalled", "obs_refused"} <= set(events)
    rendered = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for text in (caplog.text, rendered):
        assert password not in text and password[:8] not in text


# ---- helpers -------------------------------------------------------------------------------------
async def http_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def poll(predicate, timeout: float = 3.0) -> bool:
    """True once predicate() holds (checked every 10 ms), False after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_sentence_over_several_captions_rolls_up(fake, dests):
    """Issue 22 item 1: each caption replaces the one on screen, so a final that goes on from the previous
    caption's sentence (Caption.continues) is shown after it: the sentence rolls up instead of its beginning
    vanishing. A caption that does not continue starts the screen afresh."""
    from dataclasses import replace

    sim = fake()
    dest = dests(sim.url)
    await dest.start()
    steps = [("He was not an", False), ("ill-disposed young man,", True), ("unless to be rather cold-hearted", True),
             ("Good night.", False)]
    for seq, (text, continues) in enumerate(steps, 1):
        assert await dest.deliver(replace(cap(text, turn=seq), continues=continues), seq) is True
    assert sim.texts() == [
        "He was not an",
        "He was not an ill-disposed young\nman,",
        "man, unless to be rather\ncold-hearted",  # the last two rows of the running sentence
        "Good night.",
    ]
