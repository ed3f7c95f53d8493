"""Flows a person clicks through in headless Chromium (issue 17, item 7): the /sessions link buttons, the login
form's error and Logout, a viewer across a server restart, and the page when the recognizer cannot be reached.
Screenshots go to tests/.artifacts/."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser import browser, hooks
from conftest import ARTIFACTS, TEST_DG_KEY, free_port, running_app, start_app, stop_app
from speech import espeak_wav
from test_sharing import FIRST_TURN_AUDIO, Socket, http

SCRIPT = [["One", "two", "three."], ["Four", "five", "six."], ["Seven", "eight."]]


@contextlib.contextmanager
def static_site(html: str):
    """A page on another site (http://localhost:<port>/, while the app is at 127.0.0.1)."""
    body = html.encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def flux_env(sim, **extra: str) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "0", **extra}


def in_thread(coro):
    """Run a coroutine to completion on its own event loop (the sync Playwright API owns this thread's)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def speak(app, cookie: str | None, seconds: float) -> tuple[str, str]:
    """One short capture over /ws/listen (a final, then CloseStream); returns (session id, share path)."""
    speaker = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Cookie": cookie} if cookie else {})
    ready = await speaker.until(lambda s: s.ready)
    await speaker.send_audio(seconds)
    await speaker.until(lambda s: s.finals())
    await speaker.close_stream()
    return ready["session_id"], ready["share_url"]


# ---- /sessions: "Turn off link" and "New link" -------------------------------------------------


def test_sessions_buttons_turn_the_link_off_and_make_a_new_one(flux_app, sim):
    with browser(None) as b:
        ctx = b.new_context()
        page = ctx.new_page()
        page.goto(flux_app.http + "/")  # the capture page hands this browser its owner cookie
        owner = next(c for c in ctx.cookies() if c["name"] == "cr_owner")
        session_id, share = in_thread(speak(flux_app, f"cr_owner={owner['value']}", FIRST_TURN_AUDIO))
        assert http("GET", flux_app.http + share)[0] == 200

        page.goto(flux_app.http + "/sessions")
        row = page.locator(f'tr[data-session="{session_id}"]')
        expect(row.locator("a.share-link")).to_have_attribute("href", share)
        row.get_by_role("button", name="Turn off link").click()
        expect(row.locator(".muted")).to_have_text("off")
        expect(page.locator("#notice")).to_contain_text("turned off")
        page.screenshot(path=str(ARTIFACTS / "sessions-link-off.png"), full_page=True)
        assert http("GET", flux_app.http + share)[0] == 404  # the old link is dead

        row.get_by_role("button", name="New link").click()
        expect(page.locator("#notice")).to_contain_text("new share link")
        fresh = row.locator("a.share-link").get_attribute("href")
        assert fresh and fresh.startswith("/s/") and fresh != share
        page.screenshot(path=str(ARTIFACTS / "sessions-new-link.png"), full_page=True)
        assert http("GET", flux_app.http + fresh)[0] == 200
        assert http("GET", flux_app.http + share)[0] == 404


def test_sessions_form_post_from_another_site_is_refused_with_a_page(flux_app, sim):
    """A page elsewhere cannot drive the owner's forms: what browsers send for a cross-site post (Sec-Fetch-Site:
    cross-site; a foreign Origin) or a post without the page's signed token is refused with a page that says so."""
    with browser(None) as b:
        ctx = b.new_context()
        page = ctx.new_page()
        page.goto(flux_app.http + "/")
        owner = next(c for c in ctx.cookies() if c["name"] == "cr_owner")
        cookie = f"cr_owner={owner['value']}"
        session_id, share = in_thread(speak(flux_app, cookie, FIRST_TURN_AUDIO))
        page.goto(flux_app.http + "/sessions")
        token = page.locator(f'tr[data-session="{session_id}"] input[name="csrf"]').first.get_attribute("value")
        assert token
        # Another site's page (localhost is another site than 127.0.0.1) posting the form, as a person would see
        # it. The SameSite=Lax owner cookie is not sent then, so the server would refuse it anyway; the page shown
        # is the form check's.
        attack = f'<form method="post" action="{flux_app.http}/sessions/{session_id}/revoke"><button>go</button></form>'
        with static_site(attack) as elsewhere:
            page.goto(elsewhere)
            with page.expect_request(f"**/sessions/{session_id}/revoke") as sent:
                page.click("button")
            assert sent.value.header_value("sec-fetch-site") == "cross-site"
            expect(page.locator("h1")).to_have_text("That request was refused")
        page.screenshot(path=str(ARTIFACTS / "sessions-cross-site-refused.png"), full_page=True)
    url = f"{flux_app.http}/sessions/{session_id}/revoke"
    form = f"csrf={token}".encode()
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    for extra, body in (({"Sec-Fetch-Site": "cross-site"}, form),   # a browser's cross-site post, even with a token
                        ({"Sec-Fetch-Site": "same-site"}, form),    # a sibling subdomain is another party too
                        ({"Origin": "http://evil.example"}, form),  # an older browser: a foreign Origin
                        ({"Sec-Fetch-Site": "same-origin"}, b""),   # no token
                        ({"Sec-Fetch-Site": "same-origin"}, b"csrf=forged"),
                        ({}, b"")):                                  # neither
        status, _, text = http("POST", url, {**headers, **extra}, body)
        assert status == 403 and "That request was refused" in text, (extra, body, status)
        assert http("GET", flux_app.http + share)[0] == 200, extra  # still on
    # Another owner's token does not work for this owner's session.
    stranger = http("GET", flux_app.http + "/")[1]["Set-Cookie"].split(";")[0]
    status, _, _ = http("POST", url, {**headers, "Cookie": stranger, "Sec-Fetch-Site": "same-origin"}, form)
    assert status == 403 and http("GET", flux_app.http + share)[0] == 200
    # What a browser sends from the page itself (Origin: null under Referrer-Policy: no-referrer) works.
    status, hdrs, _ = http("POST", url, {**headers, "Sec-Fetch-Site": "same-origin", "Origin": "null"}, form)
    assert status == 303 and hdrs["Location"].startswith("/sessions")
    assert http("GET", flux_app.http + share)[0] == 404


# ---- login -------------------------------------------------------------------------------------


def test_wrong_access_token_is_explained_and_logout_returns_to_the_form(simulator, session_tmp):
    with running_app(flux_env(simulator, ACCESS_TOKEN="correct-horse-battery"), session_tmp, "login") as app:
        with browser(None) as b:
            page = b.new_page()
            page.goto(app.http + "/")
            page.fill("#token", "wrong-token")
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("#login-error")).to_have_text("That access token is not right.")
            expect(page.locator("#token")).to_be_visible()  # the form is still there to try again
            page.screenshot(path=str(ARTIFACTS / "login-wrong-token.png"), full_page=True)

            page.fill("#token", "correct-horse-battery")
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("#start")).to_be_visible()
            logout = page.get_by_role("button", name="Log out")
            expect(logout).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "login-logged-in.png"), full_page=True)
            logout.click()
            expect(page.locator("#token")).to_be_visible()
            expect(page.locator("#start")).to_have_count(0)
            expect(page.locator("#login-error")).to_have_count(0)
            page.reload()
            expect(page.locator("#token")).to_be_visible()  # the login cookie is gone, not just the view


# ---- a viewer across a server restart ----------------------------------------------------------


def test_viewer_keeps_following_across_a_server_restart(simulator, session_tmp):
    """SIGTERM the app while a viewer page watches: the page says it is reconnecting (not Ended), and once the
    app is back and the speaker resumed with its token, it shows the turns spoken after the restart. A page
    (and a socket) opened while the speaker is still away waits the same way."""
    sim = simulator
    sim.reset(script=SCRIPT)
    name = "viewer-restart"
    env = flux_env(sim, UPSTREAM_RETRY_SECONDS="20")
    app = start_app(env, session_tmp, name)
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    run = lambda coro: pool.submit(loop.run_until_complete, coro).result()  # noqa: E731
    try:
        with browser(None) as b:
            async def first_part():
                speaker = await Socket.open(f"{app.ws}/ws/listen")
                ready = await speaker.until(lambda s: s.ready)
                return speaker, ready

            async def first_final(speaker):
                await speaker.send_audio(2.0)  # turn 0 final at 1.3 s, turn 1 still open (its interims)
                await speaker.until(lambda s: s.finals())
                return speaker.finals()[0]

            speaker, ready = run(first_part())
            viewer = b.new_page()
            viewer.goto(app.http + ready["share_url"])
            badge = viewer.locator("#badge")
            expect(badge).to_have_text("Live")
            widget = b.new_page()  # the /embed widget's view mode follows the same feed
            widget.goto(f"{app.http}/embed?share={ready['share_url'][3:]}")
            widget_state = widget.locator("#status")
            expect(widget_state).to_have_attribute("data-state", "live")
            first = run(first_final(speaker))
            expect(viewer.locator("#transcript .final").first).to_have_text(first)

            app.proc.send_signal(signal.SIGTERM)
            messages = run(speaker.until_closed())
            assert messages[-1] == {"type": "closed", "reason": "server_restart"}
            before = speaker.finals()  # with the open turn, if the draining server could finalize it
            app.proc.wait(30)
            expect(badge).to_have_text("Reconnecting…")
            assert viewer.evaluate("window.__viewer.state") == "reconnecting"
            expect(widget_state).to_have_attribute("data-state", "reconnecting")
            viewer.screenshot(path=str(ARTIFACTS / "viewer-restart-reconnecting.png"), full_page=True)
            app = start_app(env, session_tmp, name, port=app.port)
            # Arriving while the speaker is still away: the page and the socket say "reconnecting", not Ended.
            late = b.new_page()
            late.goto(app.http + ready["share_url"])
            expect(late.locator("#badge")).to_have_text("Reconnecting…")
            expect(late.locator("#transcript .final")).to_have_text(before)

            async def watch():
                watcher = await Socket.open(f"{app.ws}/ws/watch/{ready['share_url'][3:]}")
                await watcher.until(lambda v: v.of("snapshot"))
                return watcher

            watcher = run(watch())
            snap = watcher.of("snapshot")[0]
            assert snap["live"] is False and snap["paused"] is True and snap["end_reason"] == "server_restart", snap

            async def resume():
                again = await Socket.open(f"{app.ws}/ws/listen?resume={ready['resume_token']}")
                back = await again.until(lambda s: s.ready)
                assert back["session_id"] == ready["session_id"] and back["resumed"] is True
                await again.send_audio(FIRST_TURN_AUDIO)  # the resumed upstream hears its script from the top
                await again.until(lambda s: s.finals())
                await again.close_stream()
                return again.finals()

            after = run(resume())
            assert after, "the resumed session produced no final"
            expect(viewer.locator("#transcript .final")).to_have_text(before + after, timeout=20000)
            expect(badge).to_have_text("Ended", timeout=15000)  # the speaker pressed Stop this time
            viewer.screenshot(path=str(ARTIFACTS / "viewer-restart-after.png"), full_page=True)
            state = viewer.evaluate("JSON.parse(JSON.stringify(window.__viewer))")
            assert state["finals"] == before + after and state["state"] == "ended", state
            expect(late.locator("#transcript .final")).to_have_text(before + after)
            expect(late.locator("#badge")).to_have_text("Ended")
            expect(widget.locator("#captions .final")).to_have_text(before + after)
            expect(widget_state).to_have_attribute("data-state", "ended")
            seen = run(watcher.until_closed())
            assert [m["type"] for m in seen][:2] == ["snapshot", "resumed"], seen
            assert [t for _, t in watcher.seen_finals()] == before + after
            assert seen[-1]["type"] == "ended" and seen[-1]["reason"] == "client_closed", seen[-1]
    finally:
        pool.submit(loop.close).result()
        pool.shutdown()
        stop_app(app)


def grace_app_argv(seconds: float) -> list[str]:
    """`python -m webapp` with a shorter PAUSE_GRACE, so a test can wait it out."""
    return ["-c", f"import sys, webapp.live as s; s.PAUSE_GRACE = {seconds}; from webapp.cli import main; "
            "sys.exit(main(sys.argv[1:]))", "--host", "127.0.0.1", "--port", "{port}"]


def test_viewer_hears_ended_when_the_speaker_does_not_come_back(simulator, session_tmp):
    """After a restart the speaker never resumes: viewers wait PAUSE_GRACE (here 5 s), then the session is over."""
    sim = simulator
    sim.reset(script=SCRIPT)
    name = "viewer-gone"
    env, argv = flux_env(sim), grace_app_argv(5.0)
    app = start_app(env, session_tmp, name, argv=argv)
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    run = lambda coro: pool.submit(loop.run_until_complete, coro).result()  # noqa: E731
    try:
        with browser(None) as b:
            async def speak_then_wait():
                speaker = await Socket.open(f"{app.ws}/ws/listen")
                ready = await speaker.until(lambda s: s.ready)
                await speaker.send_audio(2.0)
                await speaker.until(lambda s: s.finals())
                return speaker, ready

            speaker, ready = run(speak_then_wait())
            viewer = b.new_page()
            viewer.goto(app.http + ready["share_url"])
            badge = viewer.locator("#badge")
            expect(badge).to_have_text("Live")
            app.proc.send_signal(signal.SIGTERM)
            run(speaker.until_closed())
            app.proc.wait(30)
            expect(badge).to_have_text("Reconnecting…")
            app = start_app(env, session_tmp, name, port=app.port, argv=argv)

            async def watch():
                watcher = await Socket.open(f"{app.ws}/ws/watch/{ready['share_url'][3:]}")
                await watcher.until(lambda v: v.of("snapshot"))
                return watcher

            watcher = run(watch())
            assert watcher.of("snapshot")[0]["paused"] is True
            seen = run(watcher.until_closed(timeout=15))
            assert [m["type"] for m in seen] == ["snapshot", "ended"] and seen[-1]["reason"] == "server_restart", seen
            expect(badge).to_have_text("Ended", timeout=20000)
            state = viewer.evaluate("JSON.parse(JSON.stringify(window.__viewer))")
            assert state["state"] == "ended" and state["finals"] == speaker.finals(), state
            viewer.screenshot(path=str(ARTIFACTS / "viewer-not-resumed.png"), full_page=True)
    finally:
        pool.submit(loop.close).result()
        pool.shutdown()
        stop_app(app)


# ---- the recognizer cannot be reached ----------------------------------------------------------


@pytest.fixture(scope="module")
def speech_wav() -> Path:
    return espeak_wav("Testing one two three, can anybody hear me.", ARTIFACTS / "flows-speech.wav")


def test_unreachable_recognizer_shows_the_reason_then_an_error_that_says_what_to_do(session_tmp, speech_wav):
    closed = free_port()  # nothing listens here: every upstream connect is refused
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"ws://127.0.0.1:{closed}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "10"}
    with running_app(env, session_tmp, "unreachable") as app, browser(speech_wav) as b:
        page = b.new_page()
        page.goto(app.http + "/")
        page.click("#start")
        state = page.locator("#conn-state")
        expect(state).to_have_attribute("data-state", "reconnecting", timeout=10000)
        status = next(m for m in hooks(page)["messages"] if m["type"] == "status" and m["state"] == "reconnecting")
        assert status.get("message"), status
        # The server's reason is on the page while it retries, not after.
        expect(page.locator("#messages")).to_contain_text(status["message"], timeout=3000)
        assert hooks(page)["state"] == "reconnecting"
        page.screenshot(path=str(ARTIFACTS / "unreachable-retrying.png"), full_page=True)
        # Then it gives up: an error state, and a message that says what to do next.
        expect(state).to_have_attribute("data-state", "error", timeout=30000)
        expect(state).to_have_text("Error")  # the label people read; data-state keeps "error"
        expect(page.locator("#messages")).to_contain_text("Press Start to try again")
        page.screenshot(path=str(ARTIFACTS / "unreachable-error.png"), full_page=True)
        final = hooks(page)
        assert final["lastError"]["code"] == "upstream_unavailable", final["lastError"]
        expect(page.locator("#start")).to_be_enabled()  # ready for another try
        # One message, the retry notice turned into the error: not one per attempt, and the reason kept.
        texts = page.locator("#messages .msg").all_inner_texts()
        assert len(texts) == 1 and status["message"].rstrip(".") in texts[0], texts
        assert texts[0].count("Press Start") == 1, texts
        assert [m["type"] for m in final["messages"]][-2:] == ["error", "closed"], final["messages"]
