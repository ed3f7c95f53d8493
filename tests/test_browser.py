"""End to end in headless Chromium: a speech WAV as the microphone → the page's AudioWorklet → /ws/listen →
the relay → the upstream simulator → captions on the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from browser import browser, hooks, read_wav_pcm, wav_seconds
from conftest import ARTIFACTS
from simulator import DEFAULT_SCRIPT
from speech import espeak_wav, speech_bounds

SPEECH_TEXT = "Welcome everyone. Today we test live captions in the browser."


@pytest.fixture(scope="module")
def speech_wav() -> Path:
    return espeak_wav(SPEECH_TEXT, ARTIFACTS / "browser-speech.wav")


def test_page_shows_interim_then_final_and_upstream_gets_the_audio(flux_app, sim, speech_wav):
    wav_pcm = read_wav_pcm(speech_wav)
    seconds = wav_seconds(speech_wav)
    with browser(speech_wav) as b:
        page = b.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.goto(flux_app.http + "/")
        page.click("#start")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=15000)
        expect(page.locator("#share-link")).to_contain_text(
            flux_app.http + "/v/"
        )  # viewers can follow along (the short link)
        # Interim text appears first, styled apart, and is replaced in place...
        expect(page.locator("#transcript .interim")).to_contain_text("Hello", timeout=15000)
        # ...then settles into the final text of the turn.
        first = " ".join(DEFAULT_SCRIPT[0])
        expect(page.locator("#transcript .final").first).to_have_text(first, timeout=15000)
        assert page.locator("#transcript .turn").count() >= 1
        # Let the whole WAV play (plus margin), measured by what the upstream received.
        needed = int((seconds + 0.5) * 32000)
        sim.wait_for(lambda: sim.records and len(sim.records[0].audio) >= needed, timeout=seconds + 15)
        page.screenshot(path=str(ARTIFACTS / "capture-live.png"), full_page=True)
        page.click("#stop")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed", timeout=15000)
        state = hooks(page)
    rec = sim.records[0]
    assert rec.closed and rec.controls[-1] == "CloseStream"
    # Every byte the page sent reached the upstream (the relay adds nothing while audio flows).
    assert len(rec.audio) == state["bytesSent"], (len(rec.audio), state["bytesSent"])
    assert state["sampleRate"] in (44100, 48000)  # the context's real rate, resampled to 16 kHz by the worklet
    interims = [m for m in state["messages"] if m["type"] == "transcript" and not m["final"]]
    assert interims and state["finals"][0] == first
    # The speech in what the upstream got lasts as long as the speech in the WAV.
    got = bytes(rec.audio)
    assert np.abs(np.frombuffer(got, np.int16)).max() > 1000, "the microphone audio is not silent"
    s0, e0 = speech_bounds(wav_pcm)
    s1, e1 = speech_bounds(got)
    assert abs((e1 - s1) - (e0 - s0)) < 0.15, ((s0, e0), (s1, e1))
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors


def test_upstream_error_is_shown_in_the_page(flux_app, sim, speech_wav):
    sim.faults.handshake_status = 401
    with browser(speech_wav) as b:
        page = b.new_page()
        page.goto(flux_app.http + "/")
        page.click("#start")
        expect(page.locator("#messages")).to_contain_text("refused the server's API key", timeout=15000)
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "error", timeout=15000)
        assert hooks(page)["lastError"]["code"] == "upstream_auth"


def test_microphone_denied_is_explained(flux_app, sim, speech_wav):
    with browser(speech_wav, fake_ui=False) as b:
        context = b.new_context()  # no microphone permission granted, no fake UI to click "allow"
        page = context.new_page()
        page.goto(flux_app.http + "/")
        page.click("#start")
        expect(page.locator("#messages")).to_contain_text("denied", timeout=15000)
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "error")
    assert sim.records == []  # no upstream session was opened for nothing


def test_phone_sized_screen(flux_app, speech_wav):
    with browser(speech_wav) as b:
        page = b.new_page(viewport={"width": 360, "height": 740})
        page.goto(flux_app.http + "/")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
        for sel in ("#start", "#stop", "#transcript", "#conn-state", "#present"):
            box = page.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, sel
        page.screenshot(path=str(ARTIFACTS / "phone.png"))


def test_turns_of_one_sentence_read_as_one_paragraph(flux_app, sim, speech_wav):
    # issue 22: a recognizer ends turns at short pauses, often mid-sentence; the pages (live and reloaded) show
    # those turns as one paragraph and start a new one after a sentence end (static/flow.js)
    sim.script = [["How", "much", "there", "might"], ["be", "in", "his", "power."], ["He", "was", "here."]]
    with browser(speech_wav) as b:
        ctx = b.new_context()
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=flux_app.http)
        page = ctx.new_page()
        page.goto(flux_app.http + "/")
        page.click("#start")
        expect(page.locator("#share-link")).to_contain_text("/v/", timeout=15000)
        viewer = b.new_page()
        viewer.goto(page.locator("#share-link").inner_text().strip())
        for p in (page, viewer):
            expect(p.locator("#transcript .final")).to_have_count(3, timeout=20000)
        page.click("#stop")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed", timeout=15000)
        viewer.reload()  # the server's rendering, grouped by the page
        want = ["How much there might be in his power.", "He was here."]
        for p in (page, viewer):
            assert [t.strip() for t in p.locator("#transcript .para").all_inner_texts()] == want
            first, second = (p.locator("#transcript .final").nth(i).bounding_box() for i in (0, 1))
            assert first and second and abs(first["y"] - second["y"]) < 2  # one line: the second turn follows on
        assert viewer.locator("#transcript .final[data-start][data-end]").count() == 3  # the server's times
        # a turn that starts 1.5 s or more after the last one ended starts a paragraph, also when its interim
        # was shown before its times were known (flow.js settle); the rule itself: tests/js/flow.test.mjs
        paras = viewer.evaluate(GAP_JS)
        assert paras == [["one two", "three"], ["one two three"]], paras
        page.click("#copy")
        copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == "\n".join(want) + "\n"


GAP_JS = """async () => {
  const f = await import('/static/flow.js');
  const box = document.createElement('div');
  const turn = (text, times) => {
    const s = document.createElement('span');
    s.className = 'turn final';
    s.textContent = text;
    f.setTimes(s, times);
    return s;
  };
  const texts = () => [...box.children].map((p) => p.textContent);
  f.appendTurn(box, turn('one two', { start: 0, end: 1 }));
  const next = turn('three', {});
  f.appendTurn(box, next);
  f.setTimes(next, { start: 2.5, end: 3 });
  f.settle(box, next);
  const apart = texts();
  f.setTimes(next, { start: 2.4, end: 3 });
  f.settle(box, next);
  return [apart, texts()];
}"""
