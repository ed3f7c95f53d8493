"""Sessions, share links, viewers and exports against a real app process (SQLite store in its DATA_DIR),
the upstream simulator, and real WebSocket and HTTP clients; one test drives two Chromium pages."""
from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client import frames, tone_pcm
from conftest import ARTIFACTS, TEST_DG_KEY, running_app, start_app, stop_app
from simulator import DEFAULT_SCRIPT

SCRIPT_FINALS = [" ".join(turn) for turn in DEFAULT_SCRIPT]
FIRST_TURN_AUDIO = 2.6  # seconds: the simulator finalizes the first turn after 7 words x 0.3 s + 0.4 s


# ---- helpers (also used by test_redis.py) -------------------------------------------------------


def http(method: str, url: str, headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def owner_cookie(app) -> str:
    """The cr_owner cookie the capture page's response hands a new browser."""
    status, headers, _ = http("GET", app.http + "/")
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("cr_owner=")
    return cookie.split(";")[0]


class Socket:
    """A WebSocket client that records every message and lets a test await a condition on them."""

    def __init__(self, ws):
        self.ws = ws
        self.messages: list[dict] = []
        self.closed = False
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, **kw) -> "Socket":
        return cls(await connect(url, compression=None, **kw))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
                self.changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.changed.set()

    async def until(self, predicate, timeout: float = 15.0):
        async def wait():
            while not (result := predicate(self)):
                if self.closed:
                    raise AssertionError(f"socket closed before the condition held; last: {self.messages[-3:]}")
                self.changed.clear()
                await self.changed.wait()
            return result
        return await asyncio.wait_for(wait(), timeout)

    async def until_closed(self, timeout: float = 20.0) -> list[dict]:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self.messages

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    # speaker side
    def finals(self) -> list[str]:
        return [m["text"] for m in self.messages if m["type"] == "transcript" and m["final"]]

    @property
    def ready(self) -> dict | None:
        return next((m for m in self.messages if m["type"] == "ready"), None)

    # viewer side: the snapshot's turns, then live finals it did not already hold
    def seen_finals(self) -> list[tuple[int, str]]:
        out: dict[int, str] = {}
        for m in self.messages:
            if m["type"] == "snapshot":
                out.update({t["seq"]: t["text"] for t in m["turns"]})
            elif m["type"] == "transcript" and m["final"]:
                assert m["seq"] not in out, f"final {m['seq']} delivered twice"
                out[m["seq"]] = m["text"]
        return sorted(out.items())

    async def send_audio(self, seconds: float, pace: float = 0.0) -> None:
        for chunk in frames(tone_pcm(seconds)):
            await self.ws.send(chunk)
            if pace:
                await asyncio.sleep(pace)  # pacing the audio like a microphone, not synchronisation

    async def close_stream(self) -> list[dict]:
        await self.ws.send(json.dumps({"type": "CloseStream"}))
        return await self.until_closed()


async def start_speaker(app, cookie: str | None = None) -> tuple[Socket, str]:
    """Open a capture socket; return it and its share token once `ready` arrived."""
    headers = {"Cookie": cookie} if cookie else {}
    speaker = await Socket.open(f"{app.ws}/ws/listen", additional_headers=headers)
    ready = await speaker.until(lambda s: s.ready)
    assert ready["share_url"].startswith("/s/")
    return speaker, ready["share_url"][3:]


async def open_viewer(app, token: str) -> Socket:
    viewer = await Socket.open(f"{app.ws}/ws/watch/{token}")
    await viewer.until(lambda v: v.of("snapshot"))
    return viewer


def secret_of(session_tmp: Path, name: str) -> str:
    return (session_tmp / f"data-{name}" / "secret_key").read_text().strip()


# ---- live fan-out -------------------------------------------------------------------------------


async def test_speaker_and_viewers_see_the_same_finals_in_order(flux_app, sim):
    speaker, token = await start_speaker(flux_app)
    early = [await open_viewer(flux_app, token) for _ in range(3)]
    assert all(v.of("snapshot")[0] == {"type": "snapshot", "live": True, "paused": False, "end_reason": None, "turns": []} for v in early)

    await speaker.send_audio(FIRST_TURN_AUDIO)
    await early[0].until(lambda v: v.seen_finals())  # a viewer has it, so it is stored (stored, then published)
    late = await open_viewer(flux_app, token)  # joins after the first final: gets it from the snapshot
    assert [t["text"] for t in late.of("snapshot")[0]["turns"]] == SCRIPT_FINALS[:1]
    await speaker.send_audio(1.5)
    messages = await speaker.close_stream()
    assert messages[-1]["type"] == "closed"
    assert speaker.finals() == SCRIPT_FINALS

    for viewer in early + [late]:
        await viewer.until_closed()
        assert viewer.seen_finals() == list(enumerate(SCRIPT_FINALS))
        assert viewer.messages[-1]["type"] == "ended" and viewer.messages[-1]["reason"] == "client_closed"
    for viewer in early:
        interims = [m for m in viewer.messages if m["type"] == "transcript" and not m["final"]]
        assert interims and all("words" not in m for m in interims)  # live text, not word lists
        kinds = [(m["turn"], m["final"]) for m in viewer.messages if m["type"] == "transcript"]
        assert kinds == sorted(kinds)  # per turn: interims first, then its final; turns in order


async def test_viewer_page_renders_the_transcript_without_javascript(flux_app, sim):
    speaker, token = await start_speaker(flux_app)
    watcher = await open_viewer(flux_app, token)
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await watcher.until(lambda v: v.seen_finals())  # published only once stored

    # mid-session: what was said so far, marked live
    status, headers, page = http("GET", f"{flux_app.http}/s/{token}")
    assert status == 200
    assert headers["X-Robots-Tag"].startswith("noindex")
    assert '<meta name="robots" content="noindex' in page
    assert SCRIPT_FINALS[0] in page and 'class="badge live"' in page
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", page))  # no inline script
    assert " on" not in " ".join(re.findall(r"<[^>]+>", page)).replace(" one", "")  # no inline handlers
    assert "style=" not in page
    # exports mid-session
    status, headers, txt = http("GET", f"{flux_app.http}/s/{token}/transcript.txt")
    assert status == 200 and txt == SCRIPT_FINALS[0] + "\n" and headers["Content-Type"].startswith("text/plain")
    status, _, srt = http("GET", f"{flux_app.http}/s/{token}/transcript.srt")
    assert status == 200 and srt.startswith("1\n00:00:00,") and "Hello world," in srt
    status, headers, vtt = http("GET", f"{flux_app.http}/s/{token}/transcript.vtt")
    assert status == 200 and vtt.startswith("WEBVTT\n\n1\n00:00:00.") and headers["Content-Type"].startswith("text/vtt")
    status, _, body = http("GET", f"{flux_app.http}/s/{token}/transcript.json")
    doc = json.loads(body)
    assert doc["session"]["live"] is True and doc["session"]["backend"] == "deepgram"
    assert "owner" not in doc["session"] and "share_token" not in doc["session"]
    assert [w["word"] for w in doc["turns"][0]["words"]] == DEFAULT_SCRIPT[0]

    await speaker.send_audio(1.5)
    await speaker.close_stream()
    status, _, page = http("GET", f"{flux_app.http}/s/{token}")
    assert 'class="badge ended"' in page and SCRIPT_FINALS[1] in page
    doc = json.loads(http("GET", f"{flux_app.http}/s/{token}/transcript.json")[2])
    session = doc["session"]
    assert session["live"] is False and session["end_reason"] == "client_closed"
    assert session["ended_at"] >= session["started_at"] and session["duration"] > 0
    assert session["audio_seconds"] == pytest.approx(FIRST_TURN_AUDIO + 1.5, abs=0.1)
    assert [t["text"] for t in doc["turns"]] == SCRIPT_FINALS


async def test_bad_links_reveal_nothing(flux_app, session_tmp, sim):
    from webapp.links import ShareLinks
    speaker, token = await start_speaker(flux_app)
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.close_stream()  # the session's end is recorded before `closed` is sent
    session_id = json.loads(http("GET", f"{flux_app.http}/s/{token}/transcript.json")[2])["session"]["id"]
    links = ShareLinks(secret_of(session_tmp, "flux"), 30)

    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    unknown = links.mint("no-such-session", 0)  # correctly signed, names nothing
    wrong_version = links.mint(session_id, 7)
    foreign = ShareLinks("some other server's key", 30).mint(session_id, 0)
    expired = links.mint(session_id, 0, now=time.time() - 31 * 86400)
    bodies = {}
    for name, bad in [("tampered", tampered), ("unknown", unknown), ("version", wrong_version), ("foreign", foreign),
                      ("garbage", "x" * 500)]:
        for suffix in ("", "/transcript.txt", "/transcript.json"):
            status, headers, body = http("GET", f"{flux_app.http}/s/{bad}{suffix}")
            assert status == 404, (name, suffix)
            assert headers["X-Robots-Tag"].startswith("noindex")
            assert SCRIPT_FINALS[0] not in body and session_id not in body
            bodies[(name, suffix)] = body
    assert len(set(bodies.values())) == 1  # every kind of bad link gets the very same page
    assert "does not work" in next(iter(bodies.values()))
    status, _, body = http("GET", f"{flux_app.http}/s/{expired}")
    assert status == 410 and "expired" in body and SCRIPT_FINALS[0] not in body
    assert http("GET", f"{flux_app.http}/s/{expired}/transcript.srt")[0] == 410
    assert http("GET", f"{flux_app.http}/s/{token}/transcript.doc")[0] == 404

    for bad, code in ((tampered, "not_found"), (expired, "expired")):
        viewer = await Socket.open(f"{flux_app.ws}/ws/watch/{bad}")
        messages = await viewer.until_closed()
        assert [m["type"] for m in messages] == ["error"] and messages[0]["code"] == code


async def test_owner_revokes_lists_and_relinks(flux_app, sim):
    cookie = owner_cookie(flux_app)
    assert "HttpOnly" in http("GET", flux_app.http + "/")[1]["Set-Cookie"]
    assert "samesite=lax" in http("GET", flux_app.http + "/")[1]["Set-Cookie"].lower()
    # A browser that already has the cookie keeps its identity.
    assert http("GET", flux_app.http + "/", {"Cookie": cookie})[1].get("Set-Cookie") is None
    stranger = owner_cookie(flux_app)

    speaker, token = await start_speaker(flux_app, cookie)
    viewer = await open_viewer(flux_app, token)
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await viewer.until(lambda v: v.seen_finals())
    session_id = json.loads(http("GET", f"{flux_app.http}/s/{token}/transcript.json")[2])["session"]["id"]

    status, _, page = http("GET", f"{flux_app.http}/sessions", {"Cookie": cookie})
    assert status == 200 and f"/s/{token}" in page and f'data-session="{session_id}"' in page
    status, _, page = http("GET", f"{flux_app.http}/sessions", {"Cookie": stranger})
    assert session_id not in page and token not in page
    mine = json.loads(http("GET", f"{flux_app.http}/api/sessions", {"Cookie": cookie})[2])["sessions"]
    assert mine[0]["id"] == session_id and mine[0]["share_url"] == f"/s/{token}" and mine[0]["live"] is True

    api = f"{flux_app.http}/api/sessions/{session_id}/share"
    assert http("DELETE", api)[0] == 404                                   # no credential
    assert http("DELETE", api, {"Cookie": stranger})[0] == 404             # someone else's
    assert http("DELETE", api, {"Cookie": "cr_owner=forged.sig"})[0] == 404
    assert http("DELETE", api, {"Cookie": cookie, "Origin": "http://evil.example"})[0] == 403
    assert http("GET", f"{flux_app.http}/s/{token}")[0] == 200              # still on after all that
    assert http("DELETE", api, {"Cookie": cookie})[0] == 204

    await viewer.until_closed()
    assert viewer.messages[-1] == {"type": "revoked"}  # an open viewer is told and let go
    for suffix in ("", "/transcript.txt"):
        assert http("GET", f"{flux_app.http}/s/{token}{suffix}")[0] == 404
    # The owner still has the transcript, and can make a new link; the old one stays dead.
    status, _, txt = http("GET", f"{flux_app.http}/api/sessions/{session_id}/transcript.txt", {"Cookie": cookie})
    assert status == 200 and txt.startswith(SCRIPT_FINALS[0])
    assert http("GET", f"{flux_app.http}/api/sessions/{session_id}/transcript.txt", {"Cookie": stranger})[0] == 404
    status, _, body = http("POST", api, {"Cookie": cookie})
    new_url = json.loads(body)["share_url"]
    assert status == 201 and new_url != f"/s/{token}"
    assert http("GET", f"{flux_app.http}{new_url}")[0] == 200
    assert http("GET", f"{flux_app.http}/s/{token}")[0] == 404
    # The no-JavaScript form on /sessions does the same, with the page's signed token (tests/test_browser_flows.py
    # clicks it in Chromium and tries it from another site).
    csrf = re.search(r'name="csrf" value="([^"]+)"', http("GET", f"{flux_app.http}/sessions", {"Cookie": cookie})[2]).group(1)
    status, headers, _ = http("POST", f"{flux_app.http}/sessions/{session_id}/revoke", {"Cookie": cookie}, f"csrf={csrf}".encode())
    assert status == 303 and headers["Location"] == "/sessions?done=off"
    assert http("GET", f"{flux_app.http}{new_url}")[0] == 404
    await speaker.close_stream()


async def test_turns_survive_sigkill(simulator, session_tmp):
    """Every final a viewer saw is on disk: SIGKILL the server mid-session, restart it, read them back."""
    simulator.reset()
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen"}
    app = start_app(env, session_tmp, "crash")
    try:
        speaker, token = await start_speaker(app)
        viewer = await open_viewer(app, token)
        await speaker.send_audio(FIRST_TURN_AUDIO + 0.6)  # first turn final, second one under way
        await viewer.until(lambda v: v.seen_finals() and [m for m in v.messages if m["type"] == "transcript"
                                                           and not m["final"] and m["turn"] == 1])
        app.proc.kill()  # SIGKILL: no shutdown code runs
        app.proc.wait(10)
        await viewer.until_closed()
        await speaker.until_closed()
    finally:
        stop_app(app)
    app = start_app(env, session_tmp, "crash")  # same DATA_DIR: same database and signing key
    try:
        doc = json.loads(http("GET", f"{app.http}/s/{token}/transcript.json")[2])
        assert [t["text"] for t in doc["turns"]] == SCRIPT_FINALS[:1]
        assert [w["word"] for w in doc["turns"][0]["words"]] == DEFAULT_SCRIPT[0]
        assert doc["session"]["live"] is False and doc["session"]["end_reason"] == "interrupted"
        page = http("GET", f"{app.http}/s/{token}")[2]  # just after the crash its speaker's page may resume it
        assert SCRIPT_FINALS[0] in page and 'class="badge reconnecting"' in page and 'data-paused="true"' in page
        assert '"event": "sessions_interrupted"' in app.log_text()
    finally:
        stop_app(app)


async def test_retention_removes_old_sessions_at_startup(session_tmp):
    from webapp.links import ShareLinks
    from webapp.store import SqliteStore
    data = session_tmp / "data-retention"
    secret = "retention-test-secret-0123456789"
    store = SqliteStore(data / "sessions.sqlite3")
    await store.start()
    now = time.time()
    for session_id, age_days in (("old-one", 3), ("fresh-one", 0.5)):
        await store.create_session({"id": session_id, "owner": None, "backend": "deepgram", "started_at": now - age_days * 86400,
                                    "share_version": 0})
        final = {"type": "transcript", "turn": 0, "text": f"said in {session_id}", "final": True, "start": 0.1, "end": 0.5}
        await store.append_final(session_id, 0, final)
        await store.end_session(session_id, {"ended_at": now - age_days * 86400 + 60})
    await store.close()

    links = ShareLinks(secret, 30)
    with running_app({"SECRET_KEY": secret, "RETENTION_DAYS": "2"}, session_tmp, "retention") as app:
        assert http("GET", f"{app.http}/s/{links.mint('old-one', 0)}")[0] == 404
        status, _, txt = http("GET", f"{app.http}/s/{links.mint('fresh-one', 0)}/transcript.txt")
        assert status == 200 and txt == "said in fresh-one\n"
        sweeps = [json.loads(l) for l in app.log_text().splitlines() if '"retention_sweep"' in l]
        assert sweeps and sweeps[0]["removed"] == 1


# ---- the per-viewer queue -----------------------------------------------------------------------


async def test_a_slow_viewer_skips_interims_never_finals_and_blocks_no_one():
    """A viewer whose socket is stuck: the publisher never waits on it, its queue stays bounded, and when
    it drains it gets every final in order and only the newest interim."""
    from webapp.broker import VIEWER_QUEUE, MemoryBroker
    from webapp.live import Viewer, live_transcript
    gate = asyncio.Event()
    stuck_got, fast_got = [], []

    async def stuck_send(text):
        await gate.wait()
        stuck_got.append(json.loads(text))

    async def fast_send(text):
        fast_got.append(json.loads(text))

    broker = MemoryBroker()
    stuck, fast = broker.subscribe("s"), broker.subscribe("s")
    tasks = [asyncio.create_task(Viewer(stuck, stuck_send).run()), asyncio.create_task(Viewer(fast, fast_send).run())]
    seq = 0
    for turn in range(40):
        for n in range(1, 30):
            await broker.publish("s", live_transcript({"turn": turn, "text": "w " * n, "final": False}))
            await asyncio.sleep(0)  # let the fast viewer's sender run, as the event loop would
        await broker.publish("s", live_transcript({"turn": turn, "text": f"final {turn}", "final": True}, seq))
        seq += 1
        assert len(stuck.items) <= VIEWER_QUEUE + 1
    await asyncio.sleep(0)
    assert [m["seq"] for m in fast_got if m["final"]] == list(range(40))
    gate.set()
    while stuck.items:
        await asyncio.sleep(0)  # draining a queue: each step hands the sender one message
    assert [m["text"] for m in stuck_got if m["final"]] == [f"final {t}" for t in range(40)]
    assert len([m for m in stuck_got if not m["final"]]) < 40 * 29 / 10  # it skipped most interims
    for t in tasks:
        t.cancel()


# ---- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("env, needle", [
    ({"SHARE_TTL": "thirty"}, "SHARE_TTL"),
    ({"SHARE_TTL": "0"}, "SHARE_TTL"),
    ({"RETENTION_DAYS": "-1"}, "RETENTION_DAYS"),
    ({"RETENTION_DAYS": "inf"}, "RETENTION_DAYS"),
    ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
])
def test_sharing_settings_are_validated(env, needle):
    from webapp import config
    with pytest.raises(config.ConfigError, match=needle):
        config.load(env)
    settings = config.load({"SHARE_TTL": "7", "RETENTION_DAYS": "0.5"})
    assert (settings.share_ttl_days, settings.retention_days) == (7.0, 0.5)
    assert config.load({}).share_ttl_days == 30 and config.load({}).retention_days == 30


# ---- browser: one page captures, another follows the share link ---------------------------------


def _fake_mic_wav(path: Path, seconds: float = 4.0, rate: int = 48000) -> Path:
    """A tone with silent pads (the fake device drops its first ~0.3 s); the simulator only counts bytes."""
    n_pad, n_tone = rate // 2, int(seconds * rate)
    samples = [0] * n_pad + [int(9000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(n_tone)] + [0] * n_pad
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(s.to_bytes(2, "little", signed=True) for s in samples))
    return path


def test_browser_viewer_follows_a_capture_live(flux_app, sim):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/lib/chromium/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium is not installed (scripts/test installs it)")
    wav = _fake_mic_wav(ARTIFACTS / "sharing-fake-mic.wav")
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--autoplay-policy=no-user-gesture-required"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=args)
        try:
            ctx = browser.new_context()
            ctx.grant_permissions(["microphone"], origin=flux_app.http)
            capture = ctx.new_page()
            errors = []
            capture.on("pageerror", lambda e: errors.append(str(e)))
            capture.goto(flux_app.http + "/")
            capture.evaluate("window.captionRelay.start()")
            share_url = capture.wait_for_function(
                "() => (window.__captionRelay.messages.find(m => m.type === 'ready') || {}).share_url", timeout=15000).json_value()

            viewer = browser.new_context().new_page()  # another person: no cookies, no microphone
            viewer.on("pageerror", lambda e: errors.append(str(e)))
            viewer.goto(flux_app.http + share_url)
            viewer.wait_for_function("() => window.__viewer.state === 'live'", timeout=10000)
            assert viewer.locator("#badge").inner_text() == "Live"
            # Words appear on the viewer while the speaker is still capturing.
            viewer.wait_for_function("() => document.querySelector('#transcript').textContent.includes('Hello')", timeout=15000)
            assert capture.evaluate("window.__captionRelay.state") == "live"
            viewer.wait_for_function(f"() => window.__viewer.finals.includes({json.dumps(SCRIPT_FINALS[0])})", timeout=15000)
            assert viewer.locator("#transcript .final").first.inner_text() == SCRIPT_FINALS[0]

            capture.evaluate("window.captionRelay.stop()")
            viewer.wait_for_function("() => window.__viewer.state === 'ended'", timeout=15000)
            assert viewer.locator("#badge").inner_text() == "Ended"
            assert viewer.evaluate("window.__viewer.finals")[0] == SCRIPT_FINALS[0]
            capture_finals = capture.evaluate("window.__captionRelay.finals")
            assert [f if isinstance(f, str) else f.get("text") for f in capture_finals][0] == SCRIPT_FINALS[0]
            viewer.locator("#present").click()  # presentation mode (tests/test_overlay.py checks it in depth)
            assert "presenting" in viewer.evaluate("document.body.className")
            viewer.screenshot(path=str(ARTIFACTS / "sharing-viewer.png"))
            assert errors == []
        finally:
            browser.close()


@pytest.mark.parametrize("other_wins", [False, True])
def test_the_generated_secret_key_is_one_key_when_workers_start_together(tmp_path, monkeypatch, other_wins):
    """`--workers` starts processes on a fresh DATA_DIR at once. One of them crashed with FileExistsError when
    another created the key file between its read and its write (seen in a fresh-machine run). Here the other
    process writes its key at that moment: this one must use it, and leave no file of its own behind."""
    from webapp import config, security
    settings = config.load({"DATA_DIR": str(tmp_path)})
    real = security.secrets.token_urlsafe

    def token(n):
        if other_wins:
            (tmp_path / "secret_key").write_text("the-other-workers-key")
        return real(n)

    monkeypatch.setattr(security.secrets, "token_urlsafe", token)
    key = security.load_secret_key(settings)
    assert key == ("the-other-workers-key" if other_wins else (tmp_path / "secret_key").read_text())
    assert security.load_secret_key(settings) == key  # and it is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret_key"]
