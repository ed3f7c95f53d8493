"""Text rules end to end (issue 19): a real app process, the Flux simulator, real WebSocket and HTTP clients, the
SQLite file read directly, a real redis-server for its store, and the "Caption text" panel in headless Chromium.

What people see (the speaker's page, viewers, every export) carries the replacements and the mask; the stored
transcript keeps the recognizer's words; rules changed mid-session apply from then on; new key terms reach the
recognizer as one Flux Configure per change on the same connection, and its refusal is told to the page."""
from __future__ import annotations

import json
import signal
import sqlite3

import pytest
from playwright.sync_api import expect

from browser import browser
from conftest import ARTIFACTS, TEST_DG_KEY, running_app, start_app, stop_app
from test_redis import two_apps  # noqa: F401 - the fixture: two app processes sharing a redis-server
from test_sharing import FIRST_TURN_AUDIO, Socket, _fake_mic_wav, http, open_viewer, owner_cookie, start_speaker

from webapp.store import MemoryStore, RedisStore, SqliteStore

SCRIPT = [["Hello", "world,", "this", "is", "a", "caption", "test."], ["Oh", "shit,", "second", "turn."]]
RAW = ["Hello world, this is a caption test.", "Oh shit, second turn."]
FIRST_RULES = {"replacements": [["hello world", "Howdy World"]], "keyterms": ["Caption Relay"]}
SECOND_RULES = {"replacements": [["hello world", "Howdy World"], ["second turn", "2nd turn"]], "profanity": True,
                "keyterms": ["Flux"]}
SHOWN = ["Howdy World, this is a caption test.", "Oh s***, 2nd turn."]


def put_rules(app, session_id: str, cookie: str, body, origin: str | None = None):
    headers = {"Cookie": cookie, "Content-Type": "application/json"}
    if origin:
        headers["Origin"] = origin
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, text = http("PUT", f"{app.http}/api/sessions/{session_id}/rules", headers, data)
    return status, json.loads(text) if text else None


def transcripts(messages, final: bool) -> list[str]:
    return [m["text"] for m in messages if m["type"] == "transcript" and m["final"] is final]


async def test_rules_reach_page_viewers_and_exports_while_the_store_keeps_the_original(flux_app, sim, session_tmp):
    sim.reset(script=SCRIPT)
    cookie = owner_cookie(flux_app)
    speaker, token = await start_speaker(flux_app, cookie)
    session_id = speaker.ready["session_id"]

    status, body = put_rules(flux_app, session_id, cookie, FIRST_RULES)
    assert status == 200 and body == {"rules": {"replacements": [["hello world", "Howdy World"]], "profanity": False,
                                                "keyterms": ["Caption Relay"]}, "keyterms": "sent"}
    applied = await speaker.until(lambda s: [m for m in s.of("notice") if m["code"] == "keyterms_applied"])
    assert applied[0]["keyterms"] == ["Caption Relay"]
    viewer = await open_viewer(flux_app, token)

    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.until(lambda s: s.finals())
    await viewer.until(lambda v: v.seen_finals())
    # Mid-session: new rules from now on (the first turn was shown under the first ones), new key terms.
    status, body = put_rules(flux_app, session_id, cookie, SECOND_RULES)
    assert status == 200 and body["keyterms"] == "sent" and body["rules"]["profanity"] is True
    await speaker.until(lambda s: len([m for m in s.of("notice") if m["code"] == "keyterms_applied"]) == 2)
    sim.faults.configure_failure = "INVALID_KEYTERMS"  # the recognizer refuses the next change
    status, body = put_rules(flux_app, session_id, cookie, {**SECOND_RULES, "keyterms": ["Refused"]})
    assert status == 200
    refused = await speaker.until(lambda s: [m for m in s.of("notice") if m["code"] == "keyterms_refused"])
    assert "INVALID_KEYTERMS" in refused[0]["message"] and "keeps the previous" in refused[0]["message"]

    await speaker.send_audio(2.0)
    await speaker.close_stream()
    await viewer.until_closed()

    # The speaker's page: every interim and final under the rules of its moment; nothing raw leaked.
    assert speaker.finals() == SHOWN
    interims = transcripts(speaker.messages, False)
    assert interims and not [t for t in interims if "Hello world" in t or "shit" in t]
    assert any(t.startswith("Howdy World") for t in interims)
    final_words = [m["words"] for m in speaker.messages if m["type"] == "transcript" and m["final"]]
    assert [" ".join(w["word"] for w in ws) for ws in final_words] == SHOWN  # the word list says the same
    # A viewer's live messages, and a late viewer's snapshot.
    assert [text for _, text in viewer.seen_finals()] == SHOWN
    assert not [t for t in transcripts(viewer.messages, False) if "Hello world" in t or "shit" in t]
    late = await open_viewer(flux_app, token)
    assert [t["text"] for t in late.of("snapshot")[0]["turns"]] == SHOWN
    # One upstream connection, one Configure per change, with the whole list each time.
    assert sim.connection_count == 1
    assert [c["keyterms"] for c in sim.records[0].configures] == [["Caption Relay"], ["Flux"], ["Refused"]]

    # Every export format, by the share link and by the owner API: rendered with the rules as they are now.
    for base in (f"{flux_app.http}/s/{token}", f"{flux_app.http}/api/sessions/{session_id}"):
        exports = {fmt: http("GET", f"{base}/transcript.{fmt}", {"Cookie": cookie})[2]
                   for fmt in ("txt", "srt", "vtt", "json")}
        assert exports["txt"] == "".join(t + "\n" for t in SHOWN)
        for fmt in ("srt", "vtt"):
            flat = " ".join(exports[fmt].split())
            assert "Howdy World," in flat and "Oh s***, 2nd turn." in flat and "Hello" not in flat
        doc = json.loads(exports["json"])
        assert [t["text"] for t in doc["turns"]] == SHOWN
        assert [" ".join(w["word"] for w in t["words"]) for t in doc["turns"]] == SHOWN
        times = [x for t in doc["turns"] for w in t["words"] for x in (w["start"], w["end"])]
        assert times == sorted(times)

    # The stored transcript keeps what the recognizer said (the SQLite file, read directly).
    db = sqlite3.connect(session_tmp / "data-flux" / "sessions.sqlite3")
    try:
        rows = db.execute("SELECT text, words FROM turns WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()
        stored_rules = json.loads(db.execute("SELECT text_rules FROM sessions WHERE id = ?", (session_id,)).fetchone()[0])
    finally:
        db.close()
    assert [r[0] for r in rows] == RAW
    assert [" ".join(w["word"] for w in json.loads(r[1])) for r in rows] == RAW
    assert stored_rules["keyterms"] == ["Refused"] and stored_rules["profanity"] is True

    # GET answers the stored rules once the session has ended.
    status, _, text = http("GET", f"{flux_app.http}/api/sessions/{session_id}/rules", {"Cookie": cookie})
    assert status == 200 and json.loads(text) == {"rules": stored_rules, "running": False}


async def test_the_rules_api_refuses_bad_hostile_and_foreign_requests(flux_app, sim):
    cookie = owner_cookie(flux_app)
    speaker, _ = await start_speaker(flux_app, cookie)
    session_id = speaker.ready["session_id"]
    cases = [
        (b"{not json", 400, "send JSON"),
        (b"x" * (65 * 1024), 400, "over 64 KiB"),
        ({"replacements": [["a", "b"]] * 201}, 400, "at most 200 replacements"),
        ({"replacements": [["x" * 101, "y"]]}, 400, "1 to 100 printable characters"),
        ({"keyterms": [f"t{i}" for i in range(101)]}, 400, "at most 100 key terms"),
        ({"profanity": "yes"}, 400, "true or false"),
    ]
    for body, status, needle in cases:
        got, answer = put_rules(flux_app, session_id, cookie, body)
        assert got == status and answer["error"] == "bad_rules" and needle in answer["message"], (got, answer)
    assert put_rules(flux_app, session_id, cookie, {}, origin="http://evil.example")[0] == 403  # another site
    stranger = owner_cookie(flux_app)  # another browser: not the owner
    assert put_rules(flux_app, session_id, stranger, {"profanity": True})[0] == 404
    assert put_rules(flux_app, "no-such-session", cookie, {"profanity": True})[0] == 404
    status, _, text = http("GET", f"{flux_app.http}/api/sessions/{session_id}/rules", {"Cookie": cookie})
    assert status == 200 and json.loads(text)["rules"] == {"replacements": [], "profanity": False, "keyterms": []}
    assert sim.records[-1].configures == []  # nothing refused reached the recognizer
    await speaker.close_stream()


async def test_the_gateway_takes_key_terms_by_configure_on_its_flux_passthrough(gateway_app, sim):
    sim.reset(script=SCRIPT, gateway_shape="turninfo")
    cookie = owner_cookie(gateway_app)
    speaker, _ = await start_speaker(gateway_app, cookie)
    status, body = put_rules(gateway_app, speaker.ready["session_id"], cookie, FIRST_RULES)
    assert status == 200 and body["keyterms"] == "sent"  # its model (deepgram/flux) is a Flux model
    await speaker.until(lambda s: [m for m in s.of("notice") if m["code"] == "keyterms_applied"])
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.until(lambda s: s.finals())
    assert speaker.finals() == [SHOWN[0]]
    await speaker.close_stream()
    assert sim.connection_count == 1 and [c["keyterms"] for c in sim.records[0].configures] == [["Caption Relay"]]


async def test_new_key_terms_ride_the_next_connection_after_a_reconnect(simulator, session_tmp):
    simulator.reset(script=SCRIPT)
    simulator.faults.drop_after_bytes, simulator.faults.connections = 40000, 1  # the first connection drops once
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "10"}
    try:
        with running_app(env, session_tmp, "rules-reconnect") as app:
            cookie = owner_cookie(app)
            speaker, _ = await start_speaker(app, cookie)
            status, body = put_rules(app, speaker.ready["session_id"], cookie, {"keyterms": ["Caption Relay", "Flux"]})
            assert status == 200 and body["keyterms"] == "sent"
            await speaker.send_audio(FIRST_TURN_AUDIO)
            await speaker.until(lambda s: s.finals())
            await speaker.close_stream()
        assert simulator.connection_count == 2
        first, second = simulator.records
        assert [c["keyterms"] for c in first.configures] == [["Caption Relay", "Flux"]]
        assert [v for k, v in second.query if k == "keyterm"] == ["Caption Relay", "Flux"]  # in its URL
        assert second.configures == []  # nothing to re-send
    finally:
        simulator.reset()


async def test_rules_set_through_another_process_reach_the_running_session(two_apps, sim):  # noqa: F811
    """Behind Redis the API call may land on another process than the session's: it stores the rules and says so
    on the session's rules topic; the session's process reads them and applies them (key terms: a Configure)."""
    a, b, _ = two_apps
    sim.reset(script=SCRIPT)
    cookie = owner_cookie(a)
    speaker, token = await start_speaker(a, cookie)
    viewer = await open_viewer(b, token)
    status, body = put_rules(b, speaker.ready["session_id"], cookie, FIRST_RULES)
    assert status == 200 and body["keyterms"] == "not_running"  # not in b
    await speaker.until(lambda s: [m for m in s.of("notice") if m["code"] == "keyterms_applied"])
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.until(lambda s: s.finals())
    await viewer.until(lambda v: v.seen_finals())
    assert speaker.finals() == [SHOWN[0]] and [t for _, t in viewer.seen_finals()] == [SHOWN[0]]
    assert [c["keyterms"] for c in sim.records[0].configures] == [["Caption Relay"]]
    await speaker.close_stream()


async def test_rules_go_on_when_the_session_resumes_after_a_server_restart(simulator, session_tmp):
    """SIGTERM mid-session, start the app again, resume with the token: the stored rules apply to the resumed
    session's captions, and its new upstream connection gets the key terms (a Configure) without the page asking."""
    simulator.reset(script=SCRIPT)
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "20"}
    app = start_app(env, session_tmp, "rules-restart")
    try:
        cookie = owner_cookie(app)
        speaker, _ = await start_speaker(app, cookie)
        ready = speaker.ready
        assert put_rules(app, ready["session_id"], cookie, SECOND_RULES)[0] == 200
        await speaker.until(lambda s: [m for m in s.of("notice") if m["code"] == "keyterms_applied"])
        app.proc.send_signal(signal.SIGTERM)
        assert (await speaker.until_closed())[-1] == {"type": "closed", "reason": "server_restart"}
        app.proc.wait(30)
        app = start_app(env, session_tmp, "rules-restart", port=app.port)
        again = await Socket.open(f"{app.ws}/ws/listen?resume={ready['resume_token']}",
                                  additional_headers={"Cookie": cookie})
        assert (await again.until(lambda s: s.ready))["resumed"] is True
        await again.until(lambda s: [m for m in s.of("notice") if m["code"] == "keyterms_applied"])
        await again.send_audio(FIRST_TURN_AUDIO + 2.0)
        await again.until(lambda s: len(s.finals()) == 2)
        await again.close_stream()
        assert again.finals() == SHOWN
        resumed = simulator.records[-1]
        assert [c["keyterms"] for c in resumed.configures] == [["Flux"]]
    finally:
        stop_app(app)
        simulator.reset()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_every_store_keeps_rules_beside_the_session(kind, tmp_path, request):
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        store = SqliteStore(tmp_path / "s.sqlite3")
    else:
        store = RedisStore(request.getfixturevalue("redis_url"), prefix=f"rules-test-{tmp_path.name}:")
    await store.start()
    try:
        rules = {"replacements": [["caption relay", "Caption Relay"]], "profanity": True, "keyterms": ["Flux"]}
        assert await store.set_rules("missing", rules) is False
        assert await store.get_rules("missing") is None
        await store.create_session({"id": "s1", "owner": "o", "backend": "local", "started_at": 1.0, "share_version": 0})
        assert await store.get_rules("s1") is None
        assert await store.set_rules("s1", rules) is True
        assert await store.get_rules("s1") == rules
        meta = await store.get_session("s1")
        assert meta is not None and "text_rules" not in meta  # not a session field: exports and lists leave it out
    finally:
        await store.close()


def test_the_caption_text_panel_in_chromium(flux_app, sim):
    """A person types rules and key terms into the panel, presses Apply, then Start: the page shows the replaced
    words, the recognizer got the key terms (one Configure), and a bad line is refused with a clear message."""
    sim.reset(script=SCRIPT)
    wav = _fake_mic_wav(ARTIFACTS / "textrules-fake-mic.wav")
    with browser(wav) as b:
        page = b.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(flux_app.http + "/")
        page.fill("#textrules-replacements", "caption test")
        page.click("#textrules-apply")
        expect(page.locator("#textrules-status")).to_contain_text('needs "=>"')
        page.fill("#textrules-replacements", "hello world => Howdy World\ncaption test => Caption Relay check")
        page.fill("#textrules-keyterms", "Caption Relay")
        page.click("#textrules-apply")
        expect(page.locator("#textrules-status")).to_contain_text("apply when you press Start")
        page.click("#start")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=15000)
        expect(page.locator("#textrules-status")).to_contain_text("1 key term", timeout=10000)
        expect(page.locator("#transcript .final").first).to_have_text(
            "Howdy World, this is a Caption Relay check.", timeout=15000)
        # Mid-session, by the panel: mask profanity from now on.
        page.check("#textrules-profanity")
        page.click("#textrules-apply")
        expect(page.locator("#textrules-status")).to_contain_text("profanity masked")
        expect(page.locator("#transcript .final").nth(1)).to_have_text("Oh s***, second turn.", timeout=15000)
        page.screenshot(path=str(ARTIFACTS / "textrules-panel.png"), full_page=True)
        page.click("#stop")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed", timeout=15000)
    assert errors == []
    assert sim.connection_count == 1 and [c["keyterms"] for c in sim.records[0].configures] == [["Caption Relay"]]
