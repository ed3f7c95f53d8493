"""The embeddable widget (/embed, webapp/embed.py, docs/embed.md): embed keys and their CLI, the framing
headers, revocation, per-key limits, and in headless Chromium the widget inside a page on another origin
(http://localhost:<host port> framing http://127.0.0.1:<app port>), with a speech WAV as the microphone."""
from __future__ import annotations

import asyncio
import functools
import html
import http.server as http_server
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect
from websockets.asyncio.client import connect

from browser import browser
from client import frames, tone_pcm
from conftest import ARTIFACTS, ROOT, TEST_DG_KEY, free_port, running_app
from simulator import DEFAULT_SCRIPT
from speech import espeak_wav
from test_sharing import Socket, http

sys.path.insert(0, str(ROOT))
from webapp.embed import EmbedKeys, EmbedParamError, parse_query  # noqa: E402

FIRST = " ".join(DEFAULT_SCRIPT[0])
SECOND = " ".join(DEFAULT_SCRIPT[1])
STATIC = ROOT / "static"


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(flux_app, session_tmp) -> Path:
    return session_tmp / "data-flux"  # the app's DATA_DIR (conftest.start_app)


@pytest.fixture(scope="module")
def keys(data_dir) -> EmbedKeys:
    """Mints keys as the CLI does, with the app's own signing key."""
    return EmbedKeys((data_dir / "secret_key").read_text().strip(), data_dir)


class Host:
    """A plain http.server on another port: the site that embeds the widget (origin http://localhost:<port>)."""

    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        (root / "embed-demo.js").write_text((STATIC / "embed-demo.js").read_text())

    def page(self, name: str, widget_src: str, allow: bool = True) -> str:
        """The demo host page (static/embed-demo.html) with its iframe pointed at `widget_src`."""
        doc = (STATIC / "embed-demo.html").read_text()
        doc = doc.replace("https://captions.example.org/embed?key=PASTE_YOUR_KEY", html.escape(widget_src))
        if not allow:
            doc = doc.replace('allow="microphone; screen-wake-lock"', "")
        (self.root / name).write_text(doc)
        return f"{self.origin}/{name}"


class _QuietHandler(http_server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("host"))
    yield h
    h.server.shutdown()


@pytest.fixture(scope="module")
def speech_wav() -> Path:
    return espeak_wav("Hello world, this is a caption test. Second turn here.", ARTIFACTS / "embed-speech.wav")


@pytest.fixture(scope="module")
def chromium(speech_wav):
    with browser(speech_wav) as b:
        yield b


def widget_frame(page, app):
    """The widget's Frame (cross-origin: found by URL, driven with frame.locator / frame.evaluate)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for f in page.frames:
            if f.url.startswith(f"{app.http}/embed"):
                return f
        page.wait_for_timeout(50)  # the iframe has not navigated yet: nothing to await on
    raise AssertionError(f"no widget frame among {[f.url for f in page.frames]}")


def host_messages(page) -> list[dict]:
    return page.evaluate("() => window.__host.messages")


def csp(headers) -> str:
    return headers["Content-Security-Policy"]


def run(coro):
    return asyncio.run(coro)


# ---- query validation (no server) ---------------------------------------------------------------------


@pytest.mark.parametrize("query, names", [
    ([("theme", "neon")], "theme"),
    ([("font_size", "9")], "font_size"),
    ([("font_size", "97")], "font_size"),
    ([("font_size", "2e1")], "font_size"),
    ([("lines", "0")], "lines"),
    ([("lines", "11")], "lines"),
    ([("lang", "english!")], "lang"),
    ([("lang", "")], "lang"),
    ([("colour", "red")], "colour"),
    ([("theme", "dark"), ("theme", "light")], "theme"),
    ([("share", "")], "share"),
])
def test_bad_presentation_parameters_are_named(query, names):
    with pytest.raises(EmbedParamError, match=names):
        parse_query(query)


def test_good_presentation_parameters():
    q = parse_query([("key", "k"), ("theme", "transparent"), ("font_size", "96"), ("lines", "1"), ("lang", "pt-BR")])
    assert (q.theme, q.font_size, q.lines, q.lang) == ("transparent", 96, 1, "pt-BR")
    assert parse_query([]).presentation() == []  # the defaults stay out of generated snippets


# ---- headers, keys, CLI (real app process, HTTP and WebSocket clients) ---------------------------------


def test_embed_key_cli_mints_a_key_the_app_honours_and_checks_origins(flux_app, data_dir):
    env = {**os.environ, "DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"}
    env = {k: v for k, v in env.items() if k not in ("STT_BACKEND", "DEEPGRAM_API_KEY", "AIGATEWAY_API_KEY")}
    cli = [sys.executable, "-m", "webapp", "embed-key"]
    bad = subprocess.run(cli + ["--origin", "https://a.example/path"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not an origin" in bad.stderr and not bad.stdout
    out = subprocess.run(cli + ["--origin", "https://A.example:8443/", "--origin", "http://localhost:5000", "--ttl", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    assert key and "\n" not in key and "key id" in out.stderr
    status, headers, body = http("GET", f"{flux_app.http}/embed?key={key}")
    assert status == 200
    assert csp(headers).endswith("frame-ancestors 'self' https://a.example:8443 http://localhost:5000")
    assert "default-src 'self'" in csp(headers) and "script-src 'self'" in csp(headers)
    assert headers["Permissions-Policy"].startswith("microphone=(self)")
    assert headers["Cache-Control"] == "no-store"
    assert 'data-mode="capture"' in body and 'id="start"' in body
    # the page obeys its own CSP: no inline script, style or handlers
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", body))
    assert "style=" not in body and not re.search(r"<style|\son[a-z]+=", body)

    revoked = subprocess.run(cli + ["--revoke", key], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "revoked" in revoked.stderr
    status, headers, body = http("GET", f"{flux_app.http}/embed?key={key}")  # seen without a restart
    assert status == 403 and csp(headers).endswith("frame-ancestors 'none'") and "was revoked" in body


def test_bad_keys_get_403_and_frame_ancestors_none(flux_app, keys):
    good = keys.mint(["https://a.example"])
    payload, sig = good.rsplit(".", 1)
    tampered = f"{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    expired = keys.mint(["https://a.example"], ttl_days=1, now=time.time() - 2 * 86400)
    for query, says in [(f"key={tampered}", "not valid"), ("", "needs an embed key"), (f"key={expired}", "expired")]:
        status, headers, body = http("GET", f"{flux_app.http}/embed?{query}")
        assert status == 403, query
        assert csp(headers).endswith("frame-ancestors 'none'"), query
        assert says in body, (query, body)
    # a bad presentation parameter: 400 naming it, framable by the key's sites so the owner sees it in place
    status, headers, body = http("GET", f"{flux_app.http}/embed?key={good}&font_size=200")
    assert status == 400 and "font_size" in body and csp(headers).endswith("frame-ancestors 'self' https://a.example")


def test_other_pages_keep_frame_ancestors_self(flux_app, keys):
    key = keys.mint(["https://a.example"])
    for path in ("/", "/sessions", f"/embed/snippet?key={key}", "/static/embed-demo.html"):
        status, headers, _ = http("GET", flux_app.http + path)
        assert status == 200, path
        assert csp(headers).endswith("frame-ancestors 'self'"), path


def test_snippet_page_shows_the_exact_tag_and_a_preview(flux_app, keys):
    key = keys.mint(["https://a.example"])
    status, _, body = http("GET", f"{flux_app.http}/embed/snippet?key={key}&theme=dark&lines=2")
    assert status == 200
    code = re.search(r'<code id="snippet">(.*?)</code>', body, re.S).group(1)
    assert "<iframe" not in code  # escaped for display
    assert html.unescape(code) == (  # what the site owner pastes: valid HTML, & escaped in the attribute
        f'<iframe src="{flux_app.http}/embed?key={key}&amp;theme=dark&amp;lines=2" '
        'allow="microphone; screen-wake-lock" style="border:0;width:100%;height:160px" title="Live captions"></iframe>')
    assert 'id="copy"' in body and 'id="preview"' in body and 'allow="microphone; screen-wake-lock"' in body
    assert "style=" not in body.replace(code, "")
    status, _, _ = http("GET", f"{flux_app.http}/embed/snippet?key=nope")
    assert status == 403


async def _listen(app, key: str) -> Socket:
    return await Socket.open(f"{app.ws}/ws/listen?key={key}", origin=app.http)


def test_revoked_key_is_refused_at_embed_and_listen_and_ends_running_sessions(flux_app, sim, keys):
    key = keys.mint(["https://a.example"])

    async def scenario():
        running = await _listen(flux_app, key)
        await running.until(lambda s: s.ready)  # the widget's own socket (same origin, carrying the key)
        await running.ws.send(tone_pcm(0.5))
        keys.revoke(key)
        messages = await running.until_closed(timeout=10)  # the app polls the revocation list
        assert {"type": "error", "code": "embed_key_revoked"}.items() <= next(
            m for m in messages if m["type"] == "error").items()
        assert messages[-1] == {"type": "closed", "reason": "embed_key_revoked"}
        refused = await _listen(flux_app, key)
        messages = await refused.until_closed()
        assert [m["type"] for m in messages] == ["error", "closed"] and messages[0]["code"] == "embed_key_revoked"
        assert "revoked" in messages[0]["message"]
    run(scenario())
    status, headers, body = http("GET", f"{flux_app.http}/embed?key={key}")
    assert status == 403 and csp(headers).endswith("frame-ancestors 'none'")
    assert "this embed key was revoked" in body.lower()


def test_max_streams_and_key_modes_at_the_socket(flux_app, sim, keys):
    key = keys.mint(["https://a.example"], max_streams=1)
    view_key = keys.mint(["https://a.example"], mode="view")
    payload, sig = key.rsplit(".", 1)

    async def scenario():
        first = await _listen(flux_app, key)
        await first.until(lambda s: s.ready)
        second = await _listen(flux_app, key)
        messages = await second.until_closed()
        assert messages[0]["code"] == "too_many_streams" and messages[-1]["type"] == "closed"
        await first.close_stream()
        for _ in range(50):  # the slot is given back just after the first socket closes
            third = await _listen(flux_app, key)
            await third.until(lambda s: s.ready or s.closed)
            if third.ready:
                break
            await asyncio.sleep(0.1)
        assert third.ready
        await third.close_stream()
        for bad, code in [(view_key, "embed_key_view_only"), (f"{payload}x.{sig}", "embed_key_invalid")]:
            messages = await (await _listen(flux_app, bad)).until_closed()
            assert messages[0]["code"] == code and messages[-1]["type"] == "closed"
    run(scenario())


def test_a_capture_key_stands_in_for_the_login(simulator, sim, session_tmp):
    """A frame on another site has no login cookie: with ACCESS_TOKEN set, the key is the widget's permission."""
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "ACCESS_TOKEN": "embed-login-token", "UPSTREAM_RETRY_SECONDS": "0"}
    with running_app(env, session_tmp, "embed-login") as app:
        data = session_tmp / "data-embed-login"
        key = EmbedKeys((data / "secret_key").read_text().strip(), data).mint(["https://a.example"])

        async def scenario():
            messages = await (await Socket.open(f"{app.ws}/ws/listen", origin=app.http)).until_closed()
            assert messages[0]["code"] == "unauthorized"
            widget = await _listen(app, key)
            await widget.until(lambda s: s.ready)
            await widget.close_stream()
        run(scenario())


def test_share_only_view_mode_may_be_framed_by_this_site_only(flux_app, sim):
    async def speaker():
        s = await Socket.open(f"{flux_app.ws}/ws/listen")
        ready = await s.until(lambda s: s.ready)
        await s.close_stream()
        return ready["share_url"][3:]
    token = run(speaker())
    status, headers, body = http("GET", f"{flux_app.http}/embed?share={token}")
    assert status == 200 and csp(headers).endswith("frame-ancestors 'self'")
    assert headers["Permissions-Policy"].startswith("microphone=()")
    assert 'data-mode="view"' in body and 'id="start"' not in body
    status, headers, _ = http("GET", f"{flux_app.http}/embed?share=not-a-token")
    assert status == 404 and csp(headers).endswith("frame-ancestors 'self'")


# ---- in the browser ------------------------------------------------------------------------------------


def test_widget_on_another_site_captions_and_reports_to_the_host(flux_app, sim, keys, host, chromium):
    key = keys.mint([host.origin])
    url = host.page("capture.html", f"{flux_app.http}/embed?key={key}&theme=dark&lines=2&font_size=18")
    context = chromium.new_context()
    context.grant_permissions(["microphone"], origin=host.origin)  # the top-level origin delegates to the frame
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    frame = widget_frame(page, flux_app)
    expect(page.locator("#state")).to_have_text("idle")  # the widget announced itself to its host
    assert frame.evaluate("() => getComputedStyle(document.documentElement).getPropertyValue('--lines')") == "2"
    assert frame.evaluate("() => window.__embed.targets") == [host.origin]  # never "*"

    page.click("#start")  # the host's button: a {command: "start"} message
    expect(frame.locator("#status")).to_have_attribute("data-state", "live", timeout=15000)
    expect(frame.locator("#captions .final").first).to_have_text(FIRST, timeout=15000)
    expect(page.locator("#text p").first).to_have_text(FIRST)  # the host got the transcript messages
    page.screenshot(path=str(ARTIFACTS / "embed-host.png"))

    page.click("#stop")
    expect(frame.locator("#status")).to_have_attribute("data-state", "closed", timeout=15000)
    messages = host_messages(page)
    assert all(m["source"] == "caption-relay" for m in messages)
    finals = [m["text"] for m in messages if m["type"] == "transcript" and m["final"]]
    assert finals and finals[0] == FIRST
    assert any(m["type"] == "transcript" and not m["final"] for m in messages)
    live = next(m for m in messages if m["type"] == "state" and m["state"] == "live")
    assert live["share_url"].startswith(f"{flux_app.http}/s/")
    assert [m["state"] for m in messages if m["type"] == "state"][-1] == "closed"
    rec = sim.records[0]
    assert rec.closed and rec.controls[-1] == "CloseStream"
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
    context.close()


def test_site_the_key_does_not_name_cannot_show_the_widget(flux_app, keys, host, chromium):
    key = keys.mint(["https://elsewhere.example"])
    url = host.page("wrong.html", f"{flux_app.http}/embed?key={key}")
    page = chromium.new_page()
    page.goto(url)  # waits for the load event, which waits for the frame (loaded or refused)
    frames = [f for f in page.frames if f is not page.main_frame]
    assert len(frames) == 1 and not frames[0].url.startswith(flux_app.http), frames[0].url  # Chromium refused it
    assert frames[0].locator("#status").count() == 0 and frames[0].locator("#captions").count() == 0
    assert host_messages(page) == []
    _, headers, _ = http("GET", f"{flux_app.http}/embed?key={key}")
    assert csp(headers).endswith("frame-ancestors 'self' https://elsewhere.example")
    page.close()


def test_without_allow_microphone_the_widget_explains(flux_app, sim, keys, host, chromium):
    key = keys.mint([host.origin])
    url = host.page("noallow.html", f"{flux_app.http}/embed?key={key}", allow=False)
    page = chromium.new_page()
    page.goto(url)
    frame = widget_frame(page, flux_app)
    expect(page.locator("#state")).to_have_text("idle")
    frame.locator("#start").click()
    expect(frame.locator("#error")).to_contain_text('allow="microphone"', timeout=10000)
    expect(frame.locator("#status")).to_have_attribute("data-state", "error")
    errors = [m for m in host_messages(page) if m["type"] == "error"]
    assert errors and errors[0]["code"] == "NotAllowedError" and 'allow="microphone"' in errors[0]["message"]
    assert sim.records == []  # no recognizer session was opened for nothing
    page.close()


FILL_CAPTIONS = """() => {
    for (const text of ['Hello world, this is a caption test.',
                        'Supercalifragilisticexpialidociousandevenlongerwords wrap too.', 'A third line of captions.']) {
        const p = document.createElement('p');
        p.className = 'final';
        p.textContent = text;
        document.getElementById('captions').append(p);
    }
}"""


def test_small_frame_and_phone(flux_app, keys, chromium):
    key = keys.mint(["https://a.example"])
    for (width, height), theme in zip(((320, 120), (390, 844), (320, 120)), ("light", "dark", "transparent")):
        page = chromium.new_page(viewport={"width": width, "height": height})
        page.goto(f"{flux_app.http}/embed?key={key}&theme={theme}")
        page.evaluate(FILL_CAPTIONS)  # long captions must neither widen the page nor push the controls out
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        for sel in ("#start", "#status", "#level", "#captions"):
            box = page.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (sel, box)
            assert box["y"] >= 0 and box["y"] + box["height"] <= height, (sel, box)
        page.screenshot(path=str(ARTIFACTS / f"embed-{width}x{height}-{theme}.png"))
        page.close()


def test_view_mode_follows_a_live_session_in_a_host_page(flux_app, sim, keys, host, chromium):
    view_key = keys.mint([host.origin], mode="view")
    tokens: queue.Queue = queue.Queue()
    go = threading.Event()
    result: dict = {}

    async def speak():
        async with connect(f"{flux_app.ws}/ws/listen", compression=None) as ws:
            ready = json.loads(await ws.recv())
            tokens.put(ready["share_url"][3:])
            await asyncio.get_running_loop().run_in_executor(None, go.wait, 20)
            for chunk in frames(tone_pcm(4.5)):  # the simulator hears both scripted turns in 4.5 s of audio
                await ws.send(chunk)
            await ws.send(json.dumps({"type": "CloseStream"}))
            result["messages"] = [json.loads(m) async for m in ws]

    speaker = threading.Thread(target=lambda: asyncio.run(speak()), daemon=True)
    speaker.start()
    token = tokens.get(timeout=15)
    page = chromium.new_page()
    page.goto(host.page("view.html", f"{flux_app.http}/embed?key={view_key}&share={token}&theme=transparent"))
    frame = widget_frame(page, flux_app)
    expect(frame.locator("#status")).to_have_attribute("data-state", "live", timeout=10000)
    assert frame.locator("#start").count() == 0  # no microphone in view mode
    go.set()
    expect(frame.locator("#captions .final")).to_have_text([FIRST, SECOND], timeout=15000)
    expect(frame.locator("#status")).to_have_attribute("data-state", "ended", timeout=15000)
    finals = [m["text"] for m in host_messages(page) if m["type"] == "transcript" and m["final"]]
    assert finals == [FIRST, SECOND]
    speaker.join(10)
    assert result["messages"][-1]["type"] == "closed"
    page.close()


def test_a_host_that_listens_late_still_learns_the_widgets_state(flux_app, keys, host, chromium):
    """The widget announces its state once, when it loads; a host page whose listener comes later (here: attached
    after the frame has loaded) asks with the `state` command and gets it."""
    key = keys.mint([host.origin])
    url = host.page("late.html", f"{flux_app.http}/embed?key={key}")
    page = chromium.new_page()
    page.goto(url)
    frame = widget_frame(page, flux_app)
    expect(frame.locator("#status")).to_have_attribute("data-state", "idle")
    got = page.evaluate("""(origin) => new Promise((resolve) => {
        const frame = document.getElementById('captions');
        window.addEventListener('message', (e) => {
            if (e.origin === origin && e.data?.source === 'caption-relay' && e.data.type === 'state') resolve(e.data);
        });
        frame.contentWindow.postMessage({ source: 'caption-relay-host', command: 'state' }, origin);
    })""", flux_app.http)
    assert got == {"source": "caption-relay", "type": "state", "state": "idle"}
    page.close()
