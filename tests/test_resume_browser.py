"""The page survives a server restart mid-capture: the app process is killed (SIGTERM: graceful drain with
`closed` reason server_restart; SIGKILL: the socket just drops) and started again on the same port with the
same DATA_DIR (so the resume-token secret persists). The page, never reloaded, reconnects with backoff,
resumes the same session with the token from `ready`, sends the audio it captured while disconnected, and
the transcript simply continues.

The simulator gets no `reference` (browser-resampled audio does not match a WAV byte for byte), so each
upstream connection's audio starts at 0 on its script: the resumed connection recognizes the script again
from its first turn. That makes the expected transcript exact: the finals before the kill, the turn that was
open at the kill (its final, or the page's recovered interim), then the whole script again.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser import browser, hooks
from conftest import ARTIFACTS, TEST_DG_KEY, start_app, stop_app
from speech import espeak_wav

SPEECH_TEXT = ("Good evening everyone and welcome to the weekly meeting. Tonight we hear from the garden committee "
               "and the library volunteers, and then we talk about the summer festival in the park.")  # ~13 s
# Turn 2 is long, so the kill (on its first interim) lands well before its end of turn.
SCRIPT = [["One", "two", "three."], ["Four", "five", "six."],
          ["Seven", "eight", "nine", "ten", "eleven", "twelve."], ["Thirteen", "fourteen."]]
LINES = [" ".join(t) for t in SCRIPT]
BPS = 32000  # 16 kHz 16-bit mono
# Audio the page hands to a socket that is already going away is lost with it (no acknowledgements in the
# protocol): SIGTERM, the frames between the drain's start and the page reading `closed`; SIGKILL, the frames
# written before the browser sees the reset. Both are a few frames on loopback; allow one second.
IN_FLIGHT_MAX = 1 * BPS


@pytest.fixture(scope="module")
def speech_wav() -> Path:
    return espeak_wav(SPEECH_TEXT, ARTIFACTS / "resume-speech.wav")


def app_env(sim) -> dict[str, str]:
    """The deepgram backend pointed at the simulator, retrying upstream outages (a restart is one)."""
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "20"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_page_resumes_the_session_across_an_app_restart(simulator, session_tmp, speech_wav, sig):
    sim = simulator
    sim.reset(script=SCRIPT)
    name = f"resume-{sig.name.lower()}"
    env = app_env(sim)
    app = start_app(env, session_tmp, name)
    try:
        with browser(speech_wav) as b:
            page = b.new_page()
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(app.http + "/")
            page.click("#start")
            state = page.locator("#conn-state")
            expect(state).to_have_attribute("data-state", "live", timeout=15000)
            # Two turns final, the third one open with text: kill the server now.
            expect(page.locator("#transcript .final")).to_have_count(2, timeout=15000)
            expect(page.locator("#transcript .interim:not(.empty)")).to_contain_text("Seven", timeout=15000)
            before = hooks(page)
            assert before["finals"] == LINES[:2]
            session_id = before["sessionId"]
            assert session_id and before["reconnects"] == 0

            app.proc.send_signal(sig)
            app.proc.wait(30)
            expect(state).to_have_attribute("data-state", "reconnecting", timeout=15000)
            # The server is down for a moment; the page keeps capturing into its queue meanwhile.
            page.wait_for_timeout(1500)
            down = hooks(page)
            assert down["queuedBytes"] > 0 and down["state"] == "reconnecting", down
            app = start_app(env, session_tmp, name, port=app.port)

            expect(state).to_have_attribute("data-state", "live", timeout=20000)
            # The whole script again from the resumed connection, after the turn open at the kill.
            expect(page.locator("#transcript .final")).to_have_count(3 + len(SCRIPT), timeout=30000)
            resumed = hooks(page)
            recovered = page.locator("#transcript .final.recovered").all_inner_texts()
            page.screenshot(path=str(ARTIFACTS / f"resume-{sig.name.lower()}.png"), full_page=True)
            page.click("#stop")
            expect(state).to_have_attribute("data-state", "closed", timeout=15000)
            sim.wait_for(lambda: sim.records and sim.records[-1].closed, timeout=15)
            after = hooks(page)
            assert page.url.endswith("/")  # never reloaded: the same page all along

        # Same session, resumed once, indicator live → reconnecting → live.
        assert resumed["sessionId"] == session_id and after["sessionId"] == session_id
        assert after["reconnects"] == 1
        states = after["states"]
        i = states.index("reconnecting")
        assert "live" in states[:i] and "live" in states[i:], states
        conns = after["connections"]
        good = [c for c in conns if c["sessionId"]]
        assert [c["resume"] for c in good] == [False, True] and {c["sessionId"] for c in good} == {session_id}, conns
        assert all(c["bytesSent"] == 0 for c in conns if not c["sessionId"]), conns  # refused tries carry no audio
        closes = [m for m in after["messages"] if m["type"] == "closed"]
        if sig == signal.SIGTERM:
            assert closes[0] == {"type": "closed", "reason": "server_restart"}, closes
            assert conns[0]["closeCode"] == 1012, conns[0]
        else:
            assert conns[0]["closedReason"] is None and conns[0]["closeCode"] == 1006, conns[0]
        assert closes[-1] == {"type": "closed", "reason": "client_closed"}
        assert not [m for m in after["messages"] if m["type"] == "error" and not m.get("retryable")], \
            [m for m in after["messages"] if m["type"] == "error"]

        # The transcript continues: finals before the kill, the turn that was open (delivered by the draining
        # server, or kept by the page as a recovered line), then the resumed connection's turns.
        lines = after["finals"]
        assert lines[:2] == LINES[:2], lines
        assert lines[2].startswith("Seven"), lines
        assert lines[3:] == LINES, lines
        if sig == signal.SIGKILL:
            assert recovered == [lines[2]], recovered  # no final could come: the interim was kept
        else:
            assert recovered in ([], [lines[2]]), recovered
        # Every queued frame was delivered: what the page sent on the resumed socket reached the upstream,
        # byte for byte; on the killed one only the frames in flight at the kill may be missing.
        assert after["queuedBytes"] == 0 and after["droppedBytes"] == 0 and after["queuedPeak"] >= 1.5 * BPS, after
        upstream = [len(r.audio) for r in sim.records]
        assert len(upstream) == 2, upstream
        assert good[1]["bytesSent"] == upstream[1], (good[1], upstream)
        lost = good[0]["bytesSent"] - upstream[0]
        assert 0 <= lost <= IN_FLIGHT_MAX, (good[0], upstream)
        assert after["bytesSent"] == sum(c["bytesSent"] for c in conns)
        assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
    finally:
        stop_app(app)


def test_stop_while_disconnected_ends_the_session_for_good(simulator, session_tmp, speech_wav):
    """Stop pressed while the server is down: the session ends at once (the unsent audio is reported) and is
    not restarted when the server comes back."""
    sim = simulator
    sim.reset(script=SCRIPT)
    name = "resume-stop"
    env = app_env(sim)
    app = start_app(env, session_tmp, name)
    try:
        with browser(speech_wav) as b:
            page = b.new_page()
            page.goto(app.http + "/")
            page.click("#start")
            state = page.locator("#conn-state")
            expect(state).to_have_attribute("data-state", "live", timeout=15000)
            expect(page.locator("#transcript .final")).to_have_count(1, timeout=15000)
            app.proc.kill()
            app.proc.wait(30)
            expect(state).to_have_attribute("data-state", "reconnecting", timeout=15000)
            page.wait_for_timeout(1000)  # some audio waits in the queue
            page.click("#stop")
            expect(state).to_have_attribute("data-state", "closed", timeout=15000)
            expect(page.locator("#messages")).to_contain_text("could not be sent")
            stopped = hooks(page)
            app = start_app(env, session_tmp, name, port=app.port)
            page.wait_for_timeout(6000)  # longer than the backoff cap: a reconnect would have happened
            after = hooks(page)
            assert after["connections"] == stopped["connections"], after["connections"]
            assert after["state"] == "closed" and after["queuedBytes"] == 0
            assert page.locator("#transcript .final").first.inner_text() == LINES[0]
        assert len(sim.records) == 1, [len(r.audio) for r in sim.records]
    finally:
        stop_app(app)
