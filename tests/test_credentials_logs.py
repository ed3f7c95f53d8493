"""Credentials (issue 17, item 6): logs hold no bearer credential, cookies are Secure behind a TLS proxy, a new or
turned-off link lets go of its viewers, and access-token guessing is throttled. Real app processes, the upstream
simulator, real HTTP and WebSocket clients, a real redis-server."""
from __future__ import annotations

import json

import pytest

from conftest import TEST_DG_KEY, running_app, start_app, stop_app
from test_sharing import FIRST_TURN_AUDIO, Socket, http, open_viewer, owner_cookie, start_speaker

ACCESS = "door-token-0123456789"


def flux_env(sim, **extra) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "0", **{k: str(v) for k, v in extra.items()}}


def set_cookies(headers) -> dict[str, str]:
    """name -> value of every Set-Cookie of a response."""
    out = {}
    for line in headers.get_all("Set-Cookie") or []:
        name, _, value = line.split(";")[0].partition("=")
        out[name.strip()] = value.strip()
    return out


def login(app, token: str = ACCESS, headers: dict | None = None):
    return http("POST", app.http + "/login", {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
                f"token={token}".encode())


# ---- logs ---------------------------------------------------------------------------------------------------


async def test_debug_logs_hold_no_token_cookie_or_key(simulator, session_tmp):
    """LOG_LEVEL=debug through a day's use: log in, capture, drop and resume, watch through the share link, open
    its export, use Bearer and an embed key. None of those credentials may appear anywhere in the log."""
    from webapp.embed import EmbedKeys
    simulator.reset()
    app = start_app(flux_env(simulator, ACCESS_TOKEN=ACCESS, LOG_LEVEL="debug"), session_tmp, "creds-logs")
    try:
        assert login(app, "wrong-guess-1234")[0] == 401
        status, headers, _ = login(app)
        assert status == 303
        login_cookie = set_cookies(headers)["cr_login"]
        status, headers, _ = http("GET", app.http + "/", {"Cookie": f"cr_login={login_cookie}"})
        owner_cookie = set_cookies(headers)["cr_owner"]
        cookies = f"cr_login={login_cookie}; cr_owner={owner_cookie}"

        speaker, share = await start_speaker(app, cookies)
        first_resume = speaker.ready["resume_token"]
        viewer = await open_viewer(app, share)
        await speaker.send_audio(FIRST_TURN_AUDIO)
        await viewer.until(lambda v: v.seen_finals())
        assert http("GET", f"{app.http}/s/{share}")[0] == 200
        assert http("GET", f"{app.http}/s/{share}/transcript.txt")[0] == 200
        speaker.ws.transport.abort()  # a network drop; the page resumes with ?resume=
        resumed = await Socket.open(f"{app.ws}/ws/listen?resume={first_resume}",
                                    additional_headers={"Cookie": cookies})
        await resumed.until(lambda s: s.ready)
        second_resume = resumed.ready["resume_token"]
        await resumed.send_audio(0.5)
        await resumed.close_stream()
        await viewer.until_closed()

        bearer = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Authorization": f"Bearer {ACCESS}"})
        await bearer.until(lambda s: s.ready)
        await bearer.close_stream()

        data = session_tmp / "data-creds-logs"
        key = EmbedKeys((data / "secret_key").read_text().strip(), data).mint([app.http])
        assert http("GET", f"{app.http}/embed?key={key}")[0] == 200
        widget = await Socket.open(f"{app.ws}/ws/listen?key={key}", origin=app.http)
        await widget.until(lambda s: s.ready)
        await widget.close_stream()
    finally:
        stop_app(app)
    text = app.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["level"] == "debug" for line in lines)  # debug logging was on
    credentials = {"access token": ACCESS, "login cookie": login_cookie, "owner cookie": owner_cookie,
                   "share token": share, "resume token": first_resume, "second resume token": second_resume,
                   "embed key": key}
    # not even a signature alone (the part after the last dot)
    leaked = [what for what, value in credentials.items() if value.rsplit(".", 1)[-1] in text]
    assert leaked == []
    # the socket lines are still there, naming their routes
    assert "/ws/watch/[redacted]" in text and "resume=[redacted]" in text and "key=[redacted]" in text


@pytest.mark.parametrize("raw, hidden", [
    ('127.0.0.1:5 - "WebSocket /ws/listen?resume=abc.def.ghi&sample_rate=16000" [accepted]', "abc.def.ghi"),
    ('"WebSocket /ws/watch/WzEsMl0.aGk.c2ln" 403', "WzEsMl0.aGk.c2ln"),
    ('"GET /s/WzEsMl0.aGk.c2ln/transcript.txt HTTP/1.1" 200', "WzEsMl0.aGk.c2ln"),
    ('"GET /v/DhrljKHhMt HTTP/1.1" 404', "DhrljKHhMt"),  # a short link is as good as its token
    ('"GET /embed?theme=dark&key=eyJrIjoxfQ.c2ln HTTP/1.1" 200', "eyJrIjoxfQ.c2ln"),
    ('"GET /embed?share=WzEsMl0.aGk.c2ln HTTP/1.1" 200', "WzEsMl0.aGk.c2ln"),
    ("/x?access_token=t0k3n&api_key=k3y", "t0k3n"),
    ("/x?access_token=t0k3n&api_key=k3y", "k3y"),
    ("< Cookie: cr_owner=b3duZXI.c2ln; cr_login=bG9naW4.c2ln", "b3duZXI.c2ln"),
    ("< Cookie: cr_owner=b3duZXI.c2ln; cr_login=bG9naW4.c2ln", "bG9naW4.c2ln"),
    ("> Set-Cookie: __Host-cr_login=bG9naW4.c2ln; HttpOnly", "bG9naW4.c2ln"),
    ("< Authorization: Bearer s3cr3t-t0k3n", "s3cr3t-t0k3n"),
])
def test_the_log_formatter_redacts_credentials_in_any_line(raw, hidden):
    """The last line of defence, whatever logger wrote the line: URLs' credential parameters and token path
    segments, cookie values and Bearer tokens are replaced."""
    import logging

    from webapp.logs import JsonFormatter
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, raw, (), None)
    line = JsonFormatter().format(record)
    assert hidden not in line and "[redacted]" in line
    assert json.loads(line)["event"].startswith(raw[:8])  # the rest of the line stays readable


# ---- share links: a retired link lets go of its viewers ---------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_env(request) -> dict[str, str]:
    return {"REDIS_URL": request.getfixturevalue("redis_url")} if request.param == "redis" else {}


async def until_revoked(viewer: Socket) -> None:
    messages = await viewer.until_closed(timeout=5)
    assert messages[-1] == {"type": "revoked"} and viewer.ws.close_code == 1000


async def test_new_link_and_turn_off_disconnect_viewers_of_the_old_link(simulator, session_tmp, store_env):
    simulator.reset()
    name = "relink-redis" if store_env else "relink"
    with running_app(flux_env(simulator, **store_env), session_tmp, name) as app:
        cookie = owner_cookie(app)
        speaker, first = await start_speaker(app, cookie)
        old_viewers = [await open_viewer(app, first) for _ in range(2)]
        session_id = json.loads(http("GET", f"{app.http}/api/sessions", {"Cookie": cookie})[2])["sessions"][0]["id"]
        api = f"{app.http}/api/sessions/{session_id}/share"

        status, _, body = http("POST", api, {"Cookie": cookie})  # "New link"
        assert status == 201
        second = json.loads(body)["share_url"][3:]
        for viewer in old_viewers:
            await until_revoked(viewer)
        stale = await Socket.open(f"{app.ws}/ws/watch/{first}")
        assert [m["code"] for m in await stale.until_closed()] == ["not_found"]

        # the new link's viewers stay and go on following
        current = await open_viewer(app, second)
        await speaker.send_audio(FIRST_TURN_AUDIO)
        await current.until(lambda v: v.seen_finals())
        assert not current.closed

        assert http("DELETE", api, {"Cookie": cookie})[0] == 204  # "Turn off link"
        await until_revoked(current)
        await speaker.close_stream()


@pytest.mark.parametrize("link_version, announced, why", [
    (2, 3, "revoked"), (3, 3, "ended"), (None, 3, "revoked"),
    (5, None, "revoked"),  # as an older process announces it: every link is retired
])
async def test_a_revocation_retires_only_older_links(link_version, announced, why):
    """A viewer that joined through the new link is not cut off by the announcement of that very link (it can
    arrive after the viewer registered: Redis delivers it later, to every process)."""
    from webapp.broker import Feed
    from webapp.live import Live, Viewer, live_ended, live_revoked

    async def send(_text):
        pass
    feed = Feed()
    feed.put(Live.decode(live_revoked(announced).text))  # as another process hears it through Redis
    feed.put(live_ended("client_closed", 1.0))
    assert await Viewer(feed, send, link_version).run() == why


# ---- cookies behind a TLS proxy -----------------------------------------------------------------------------


def cookie_lines(headers) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in headers.get_all("Set-Cookie") or []}


def flags(line: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in line.split(";")[1:]}


async def test_cookies_are_secure_host_cookies_behind_a_trusted_tls_proxy(simulator, session_tmp):
    simulator.reset()
    tls = {"X-Forwarded-Proto": "https"}  # what the proxy in front (TRUSTED_PROXIES) says of the browser's scheme
    env = flux_env(simulator, ACCESS_TOKEN=ACCESS, TRUSTED_PROXIES="127.0.0.1")
    with running_app(env, session_tmp, "tls-proxy") as app:
        # over HTTPS: __Host- names, Secure, Path=/, no Domain
        owner_line = cookie_lines(http("GET", app.http + "/", tls)[1])["__Host-cr_owner"]
        status, headers, _ = login(app, headers=tls)
        assert status == 303
        login_line = cookie_lines(headers)["__Host-cr_login"]
        for line in (owner_line, login_line):
            assert {"secure", "httponly", "path"} <= flags(line) and "domain" not in flags(line)
            assert "path=/;" in line.lower().replace(" ", "") + ";"
        owner = owner_line.split(";")[0]
        cookies = f"{login_line.split(';')[0]}; {owner}"
        speaker, share = await start_speaker(app, cookies)  # the capture socket takes both __Host- cookies
        await speaker.close_stream()
        mine = json.loads(http("GET", f"{app.http}/api/sessions", {"Cookie": owner, **tls})[2])["sessions"]
        assert [s["share_url"] for s in mine] == [f"/s/{share}"]
        assert http("GET", app.http + "/", {"Cookie": owner, **tls})[1].get("Set-Cookie") is None  # kept as it is

        # an owner cookie from before (plain name) keeps its sessions, and moves to the __Host- name
        legacy = set_cookies(http("GET", app.http + "/")[1])["cr_owner"]  # plain http: the bare name, not Secure
        assert "secure" not in flags(cookie_lines(http("GET", app.http + "/")[1])["cr_owner"])
        login_cookie = set_cookies(login(app)[1])["cr_login"]
        speaker, old_share = await start_speaker(app, f"cr_login={login_cookie}; cr_owner={legacy}")
        await speaker.close_stream()
        moved = cookie_lines(http("GET", app.http + "/", {"Cookie": f"cr_owner={legacy}", **tls})[1])
        new_line = moved["__Host-cr_owner"]
        assert new_line.startswith(f"__Host-cr_owner={legacy};") and "secure" in flags(new_line)  # the same owner id
        assert "max-age=0" in moved["cr_owner"].lower().replace(" ", "")  # the old name is cleared
        moved_cookie = {"Cookie": f"__Host-cr_owner={legacy}"}
        mine = json.loads(http("GET", f"{app.http}/api/sessions", moved_cookie)[2])["sessions"]
        assert [s["share_url"] for s in mine] == [f"/s/{old_share}"]

        # logging out over HTTPS clears both names
        status, headers, _ = http("POST", app.http + "/logout", {"Cookie": cookies, **tls})
        cleared = cookie_lines(headers)
        assert status == 303 and {"cr_login", "__Host-cr_login"} <= set(cleared)
        assert all("max-age=0" in line.lower().replace(" ", "") for line in cleared.values())


async def test_forwarded_proto_from_an_untrusted_peer_is_ignored(simulator, session_tmp):
    simulator.reset()
    env = flux_env(simulator, ACCESS_TOKEN=ACCESS, TRUSTED_PROXIES="10.0.0.0/8")  # 127.0.0.1 is no proxy of ours
    with running_app(env, session_tmp, "tls-untrusted") as app:
        lines = cookie_lines(http("GET", app.http + "/", {"X-Forwarded-Proto": "https"})[1])
        assert set(lines) == {"cr_owner"} and "secure" not in flags(lines["cr_owner"])
        lines = cookie_lines(login(app, headers={"X-Forwarded-Proto": "https"})[1])
        assert set(lines) == {"cr_login"} and "secure" not in flags(lines["cr_login"])


# ---- access-token guessing ----------------------------------------------------------------------------------


def http_from(source: str, method: str, url: str, headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) of a request sent from the loopback address `source` (another client)."""
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, parts.path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode()
    finally:
        conn.close()


def login_from(source: str, app, token: str):
    return http_from(source, "POST", app.http + "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                     f"token={token}".encode())


async def bearer_from(source: str, app, token: str) -> list[dict]:
    """Open /ws/listen from `source` with a Bearer token; the messages until it closes (or `ready`)."""
    sock = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Authorization": f"Bearer {token}"},
                             local_addr=(source, 0))
    await sock.until(lambda s: s.ready or s.closed)
    if sock.ready:
        await sock.close_stream()
    return sock.messages


async def test_failed_logins_lock_the_client_out_and_no_one_else(simulator, session_tmp):
    simulator.reset()
    with running_app(flux_env(simulator, ACCESS_TOKEN=ACCESS), session_tmp, "throttle") as app:
        guesser, other, bearer_guesser = "127.0.0.2", "127.0.0.3", "127.0.0.4"
        cookie = set_cookies(login_from(guesser, app, ACCESS)[1])["cr_login"]  # logged in before it went wrong
        assert [login_from(guesser, app, f"guess-{i}")[0] for i in range(4)] == [401] * 4
        status, headers, page = login_from(guesser, app, "guess-4")  # the fifth in a minute
        assert status == 429 and headers["Retry-After"] == "60"
        # locked: the right token is refused too, over the form and as a Bearer token
        status, headers, page = login_from(guesser, app, ACCESS)
        assert status == 429 and 0 < int(headers["Retry-After"]) <= 60 and "Set-Cookie" not in headers
        refused = await bearer_from(guesser, app, ACCESS)
        assert refused[0]["code"] == "login_throttled" and 0 < refused[0]["retry_after"] <= 60
        assert refused[-1] == {"type": "closed", "reason": "login_throttled"}
        # its login cookie is proof of an earlier login, not a guess: still good
        capture = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Cookie": f"cr_login={cookie}"},
                                    local_addr=(guesser, 0))
        await capture.until(lambda s: s.ready)
        await capture.close_stream()

        # another client is not affected
        assert login_from(other, app, "a-typo")[0] == 401
        assert login_from(other, app, ACCESS)[0] == 303
        assert (await bearer_from(other, app, ACCESS))[0]["type"] == "ready"

        # Bearer guesses count the same way
        codes = [(await bearer_from(bearer_guesser, app, f"guess-{i}"))[0]["code"] for i in range(5)]
        assert codes == ["unauthorized"] * 4 + ["login_throttled"]
        assert login_from(bearer_guesser, app, ACCESS)[0] == 429
    assert ACCESS not in app.log_text() and "guess-" not in app.log_text()  # nor the guesses


def test_lockouts_grow_and_the_table_stays_bounded():
    from webapp.security import LoginThrottle
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])

    def guess(client: str, times: int) -> list[int | None]:
        return [throttle.failed(client) for _ in range(times)]

    lockouts = []
    for _ in range(8):
        assert guess("198.51.100.7", 4) == [None] * 4  # four wrong ones in a minute are a typist's
        lockouts.append(throttle.failed("198.51.100.7"))
        assert throttle.locked("198.51.100.7") == lockouts[-1]
        now[0] += lockouts[-1]
        assert throttle.locked("198.51.100.7") is None
    assert lockouts == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    # failures spread out (fewer than five a minute) never lock
    for _ in range(20):
        assert throttle.failed("198.51.100.8") is None
        now[0] += 16
    assert throttle.locked("198.51.100.8") is None
    # a right token clears the record; an hour's quiet forgets a client
    throttle.passed("198.51.100.8")
    assert "198.51.100.8" not in throttle.clients
    # one IPv6 /64 is one client
    guess("2001:db8:1:2::1", 3)
    assert guess("2001:db8:1:2:ffff::9", 2) == [None, 60]
    assert throttle.locked("2001:db8:1:2::77") == 60 and throttle.locked("2001:db8:1:3::1") is None
    # bounded: a flood of addresses keeps at most MAX_CLIENTS entries
    for i in range(LoginThrottle.MAX_CLIENTS + 5000):
        throttle.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(throttle.clients) == LoginThrottle.MAX_CLIENTS
    now[0] += LoginThrottle.MAX_LOCKOUT + 1
    throttle.failed("192.0.2.1")
    assert list(throttle.clients) == ["192.0.2.1"]  # the quiet ones are forgotten


def test_browser_logs_in_and_captures_with_host_cookies_behind_a_tls_proxy_and_over_plain_http(simulator, session_tmp):
    """Chromium through the login form, a capture and the owner's /sessions page: with the TLS proxy's header it
    holds __Host-, Secure cookies; over plain http://127.0.0.1 the bare names, as before."""
    from playwright.sync_api import expect

    from browser import browser
    simulator.reset()
    env = flux_env(simulator, ACCESS_TOKEN=ACCESS, TRUSTED_PROXIES="127.0.0.1")
    with running_app(env, session_tmp, "tls-browser") as app, browser(None) as b:
        for proxied, names in ((True, {"__Host-cr_login", "__Host-cr_owner"}), (False, {"cr_login", "cr_owner"})):
            context = b.new_context(extra_http_headers={"X-Forwarded-Proto": "https"} if proxied else {})
            page = context.new_page()
            page.goto(app.http + "/")
            page.fill("#token", ACCESS)
            with page.expect_navigation():  # to / once its scripts ran (waits for "load")
                page.press("#token", "Enter")
            expect(page.locator("#start")).to_be_visible(timeout=10000)
            jar = {c["name"]: c for c in context.cookies()}
            assert set(jar) == names and all(jar[n]["secure"] is proxied and jar[n]["path"] == "/" for n in names)
            page.click("#start")
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=15000)
            share = page.locator("#share-link").inner_text()
            page.click("#stop")
            expect(page.locator("#conn-state")).not_to_have_attribute("data-state", "live", timeout=15000)
            page.goto(app.http + "/sessions")
            assert share.split(app.http)[-1] in page.content()  # the owner cookie found its session
            context.close()
