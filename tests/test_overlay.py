"""The OBS overlay /s/<token>/overlay, its builder, presentation mode and colour contrast (issue 19, item 2) in
headless Chromium, against the real app process with a session spoken through the upstream simulator:
parameters applied (computed styles), invalid ones falling back, a see-through background (PNG alpha),
whole caption lines (no line cut at an edge), controls hidden until the pointer moves, interim text distinct
from finals and never announced, and the WCAG ratio of every text/background pair the pages show.
Screenshots go to tests/.artifacts/."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import struct
import zlib
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser import browser
from conftest import ARTIFACTS
from test_sharing import Socket, http

# Three short turns, then a long one left open: its words are the interim text the pages show. The relay
# bridges a quiet microphone with silence, which the simulator hears as time going on, so the open turn
# keeps growing by about 3 words a second: 90 words keep it open for the length of a test.
LONG = ("We begin with a song that everyone here knows well and then we read from the book of the week "
        "before the news of the parish and the notices for the coming days").split()
SCRIPT = [["Good", "morning", "everyone."], ["Welcome", "to", "the", "service."], ["Please", "find", "a", "seat."],
          (LONG * 3)[:90]]
FINALS = ["Good morning everyone.", "Welcome to the service.", "Please find a seat."]
AUDIO = 6.0  # seconds: the three finals (by 4.5 s), then five words of the open fourth turn
VIEWPORT = {"width": 1280, "height": 720}


@contextlib.contextmanager
def live_session(app, simulator, script=SCRIPT):
    """A session that said FINALS and is mid-way through a fourth turn (its interim shown), kept open; with
    `script=SCRIPT[:3]`, one that said FINALS and then nothing more."""
    simulator.reset(script=script)
    open_turn = len(script) > 3
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    run = lambda coro: pool.submit(loop.run_until_complete, coro).result()  # noqa: E731

    async def speak():
        speaker = await Socket.open(f"{app.ws}/ws/listen")
        ready = await speaker.until(lambda s: s.ready)
        await speaker.send_audio(AUDIO)
        await speaker.until(lambda s: len(s.finals()) == 3 and (not open_turn or any(
            m["type"] == "transcript" and not m["final"] and m["text"].startswith("We begin") for m in s.messages)))
        return speaker, ready["share_url"]

    speaker, share = run(speak())
    try:
        yield share
    finally:
        with contextlib.suppress(Exception):
            run(speaker.close_stream())
        pool.submit(loop.close).result()
        pool.shutdown()


def png_rgba(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGBA bytes) of an 8-bit RGBA PNG, as Chromium writes them (no Pillow here)."""
    data = path.read_bytes()
    bpp = 4
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), "expected 8-bit RGB or RGBA"
            bpp = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 4 else b"".join(bytes(line[x:x + 3]) + b"\xff" for x in range(0, stride, 3)))
        prev = line
    return width, height, rows


# Every line box of the caption lines inside `box`: each must be wholly inside the box (and the viewport) or
# wholly outside it (scrolled off the top): a line cut at an edge fails.
LINE_BOXES = """([box, sel]) => {
  const b = document.querySelector(box).getBoundingClientRect();
  const out = [];
  const els = [...document.querySelectorAll(sel)].filter((el) => el.textContent.trim());
  for (const el of els) {
    const r = document.createRange();
    r.selectNodeContents(el);
    // one box per line: a turn's spans (an interim's stable part and its tail) give a rect each on the same line
    const rects = [...r.getClientRects()].filter((q) => q.height >= 1)
      .filter((q, i, all) => all.findIndex((o) => Math.abs(o.top - q.top) < 1 && Math.abs(o.bottom - q.bottom) < 1) === i);
    rects.forEach((q, i) => out.push({text: el.textContent.slice(0, 30), top: q.top, bottom: q.bottom,
      boxTop: b.top, boxBottom: b.bottom, vh: innerHeight, cls: el.className,
      newest: el === els.at(-1) && i === rects.length - 1}));
  }
  return out;
}"""


def visible_lines(page, box: str, sel: str) -> list[dict]:
    lines = page.evaluate(LINE_BOXES, [box, sel])
    shown = []
    for q in lines:
        inside = q["top"] >= q["boxTop"] - 0.5 and q["bottom"] <= q["boxBottom"] + 0.5
        outside = q["bottom"] <= q["boxTop"] + 0.5 or q["top"] >= q["boxBottom"] - 0.5
        assert inside or outside, f"a line is cut at the edge of {box}: {q}"
        if inside:
            assert 0 <= q["top"] and q["bottom"] <= q["vh"] + 0.5, f"a shown line is outside the viewport: {q}"
            shown.append(q)
    return shown


def style(page, sel: str, *props: str) -> dict:
    return page.evaluate("([s, ps]) => { const c = getComputedStyle(document.querySelector(s));"
                         " return Object.fromEntries(ps.map(p => [p, c.getPropertyValue(p)])); }", [sel, list(props)])


# ---- the overlay -------------------------------------------------------------------------------


def test_overlay_applies_its_parameters_keeps_whole_lines_and_is_see_through(flux_app, simulator):
    with live_session(flux_app, simulator) as share, browser(None) as b:
        page = b.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        query = "font=serif&size=40&color=%23ffe45c&align=left&position=top&lines=2&box=%23000000cc&outline=none"
        page.goto(f"{flux_app.http}{share}/overlay?{query}")
        expect(page.locator("#captions .line.interim")).to_contain_text("We begin")
        got = style(page, "#captions", "font-size", "color", "text-align", "font-family", "line-height", "max-height")
        assert got["font-size"] == "40px" and got["color"] == "rgb(255, 228, 92)" and got["text-align"] == "left", got
        assert got["font-family"].startswith("Georgia") and got["line-height"] == "50px", got
        assert got["max-height"] == "100px", got  # 2 lines of 50 px
        assert style(page, "#box", "background-color")["background-color"] == "rgba(0, 0, 0, 0.8)"
        box = page.locator("#box").bounding_box()
        assert box and box["y"] < 40, box  # position=top
        shown = visible_lines(page, "#captions", "#captions .line")
        assert len(shown) == 2 and "interim" in shown[-1]["cls"].split() and shown[-1]["newest"], shown  # lines=2
        final, interim = (style(page, f"#captions .line.{k}", "font-style", "opacity") for k in ("final", "interim"))
        assert final["font-style"] == "normal" and interim["font-style"] == "italic", (final, interim)
        assert float(interim["opacity"]) < float(final["opacity"])
        # Finals only reach screen readers: the lines are hidden from them, the live region has the last final.
        assert page.get_attribute("#captions", "aria-hidden") == "true"
        expect(page.locator("#announcer")).to_have_text(FINALS[2])
        assert page.get_attribute("#announcer", "aria-live") == "polite"
        page.screenshot(path=str(ARTIFACTS / "overlay-styled.png"))

        # interims hidden when asked; defaults otherwise: see-through page, white text, two lines at the bottom.
        page.goto(f"{flux_app.http}{share}/overlay?interim=0")
        expect(page.locator("#captions .line.final")).to_have_count(3)
        assert page.locator("#captions .line.interim").count() == 0
        assert page.evaluate("window.__overlay.rejected") == []
        got = style(page, "#captions", "font-size", "color", "text-align")
        assert got == {"font-size": "48px", "color": "rgb(255, 255, 255)", "text-align": "center"}, got
        for sel in ("html", "body", "#box"):
            assert style(page, sel, "background-color")["background-color"] == "rgba(0, 0, 0, 0)", sel
        assert [q["text"] for q in visible_lines(page, "#captions", "#captions .line")] == FINALS[1:]
        box = page.locator("#box").bounding_box()
        assert box and box["y"] + box["height"] > VIEWPORT["height"] - 40, box  # position=bottom
        shot = ARTIFACTS / "overlay-transparent.png"
        page.screenshot(path=str(shot), omit_background=True)
        width, height, rgba = png_rgba(shot)
        alpha = [row[3::4] for row in rgba]
        assert (width, height) == (1280, 720)
        clear = sum(a == 0 for row in alpha for a in row)
        inked = sum(a == 255 for row in alpha for a in row)
        assert all(a == 0 for a in alpha[10]) and all(a == 0 for a in alpha[height // 2]), "the background is not see-through"
        assert clear > 0.9 * width * height and inked > 2000, (clear, inked)  # see-through, and the text is drawn
        assert all(row[5] == 0 for row in alpha), "left edge"
        assert errors == []


def test_overlay_bad_parameters_fall_back_to_the_defaults(flux_app, simulator):
    hostile = ("size=9999&color=red;background:url(//x)&bg=expression(alert(1))&lines=abc&align=justify"
               "&font=Comic%20Sans%22%3B%7D&outline=huge&clear=-1&interim=maybe&box=%23zzz&position=%7D%7B")
    with live_session(flux_app, simulator) as share, browser(None) as b:
        page = b.new_page(viewport=VIEWPORT)
        csp_violations: list[str] = []
        page.on("console", lambda m: "Content Security Policy" in m.text and csp_violations.append(m.text))
        page.goto(f"{flux_app.http}{share}/overlay?{hostile}")
        expect(page.locator("#captions .line.interim")).to_contain_text("We begin")
        rejected = page.evaluate("window.__overlay.rejected")
        assert sorted(rejected) == sorted(["size", "color", "bg", "lines", "align", "font", "outline", "clear",
                                           "interim", "box", "position"]), rejected
        got = style(page, "#captions", "font-size", "color", "text-align", "max-height")
        assert got == {"font-size": "48px", "color": "rgb(255, 255, 255)", "text-align": "center",
                       "max-height": "120px"}, got
        assert style(page, "body", "background-color")["background-color"] == "rgba(0, 0, 0, 0)"
        set_styles = page.evaluate("[...document.querySelectorAll('[style]')].map(e => e.getAttribute('style'))")
        assert set_styles and not any(re.search(r"url|expression|alert|;\\s*;|[{}]", s) for s in set_styles), set_styles
        assert csp_violations == []
        page.screenshot(path=str(ARTIFACTS / "overlay-bad-params.png"))
    # A bad link gets the same generic page as the viewer's.
    status, _, text = http("GET", f"{flux_app.http}/s/not-a-token/overlay")
    assert status == 404 and "noindex" in text


def test_overlay_fades_after_silence(flux_app, simulator):
    """The speaker's page is still live but nothing more is said: after `clear` seconds the lines fade out."""
    with live_session(flux_app, simulator, SCRIPT[:3]) as share, browser(None) as b:
        page = b.new_page(viewport=VIEWPORT)
        page.goto(f"{flux_app.http}{share}/overlay?clear=1")
        expect(page.locator("#captions .line.final")).to_have_count(3)
        assert page.evaluate("window.__overlay.state") == "live"
        expect(page.locator("#stage")).to_have_class(re.compile(r"\bfaded\b"), timeout=5000)
        expect(page.locator("#captions .line")).to_have_count(0, timeout=5000)
        expect(page.locator("#box")).to_be_hidden()


def test_builder_previews_and_builds_the_overlay_address(flux_app, simulator):
    with live_session(flux_app, simulator) as share, browser(None) as b:
        # A dark system scheme: the see-through preview frame must stay see-through over the dark page.
        page = b.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark")
        page.goto(flux_app.http + share)
        page.get_by_role("button", name="OBS overlay…").click()
        dialog = page.locator("#overlay-builder")
        expect(dialog).to_be_visible()
        page.fill("#ov-size", "64")
        page.select_option("#ov-align", "right")
        page.fill("#ov-box", "#000000aa")
        page.uncheck("#ov-interim")
        url = page.locator("#overlay-url")
        expect(url).to_have_value(re.compile(r"/overlay\?size=64&box=%23000000aa&align=right&interim=0$"))
        preview = page.frame_locator("#overlay-preview")
        expect(preview.locator("#captions .line.final").last).to_have_text(FINALS[2])
        expect(preview.locator("#captions .line.interim")).to_have_count(0)
        page.fill("#ov-size", "500")  # out of range: flagged, and left out of the address
        expect(page.locator("#ov-size")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#overlay-warn")).to_contain_text("size")
        expect(url).to_have_value(re.compile(r"/overlay\?box=%23000000aa&align=right&interim=0$"))
        page.fill("#ov-size", "64")
        page.locator(".builder-params summary").click()
        assert page.locator("#overlay-params tr").count() == 14
        page.wait_for_timeout(600)  # the preview frame reloads 200 ms after the last change; let it paint
        page.screenshot(path=str(ARTIFACTS / "overlay-builder.png"))
        # The checkerboard shows through the preview's empty top-left corner (not a white frame).
        page.locator(".preview").screenshot(path=str(ARTIFACTS / "overlay-builder-preview.png"))
        _, _, rgba = png_rgba(ARTIFACTS / "overlay-builder-preview.png")
        corner = {tuple(rgba[y][x * 4:x * 4 + 3]) for y in range(4, 40) for x in range(4, 40)}
        assert corner <= {(0x5a, 0x5a, 0x5a), (0x3a, 0x3a, 0x3a)} | {(v, v, v) for v in range(0x3a, 0x5b)}, corner
        # The address works as a browser source on its own.
        other = b.new_page(viewport=VIEWPORT)
        other.goto(url.input_value())
        expect(other.locator("#captions .line.final").last).to_have_text(FINALS[2])
        assert style(other, "#captions", "font-size")["font-size"] == "64px"
        # The /sessions page has no share link for this browser's sessions; its link form is checked in markup.
        assert "#overlay" in Path("templates/sessions.html").read_text()


# ---- presentation mode -------------------------------------------------------------------------


def check_presentation(page, box: str, button: str, name: str) -> None:
    page.locator(button).click()
    expect(page.locator("body")).to_have_class(re.compile(r"\bpresenting\b"))
    expect(page.locator(".present-status")).to_be_hidden()  # live: nothing but the captions
    assert page.evaluate("document.fullscreenElement === document.documentElement")  # the Fullscreen API
    bar = page.locator("#present-bar")
    expect(bar).to_have_css("opacity", "0", timeout=6000)  # the pointer rests: the controls go
    for hidden in ("h1", button):
        expect(page.locator(hidden).first).to_be_hidden()
    state = page.evaluate("JSON.parse(JSON.stringify(window.__present))")
    assert state["on"] and state["rows"] >= 1, state
    assert style(page, "#announcer", "visibility")["visibility"] == "visible"  # finals still reach screen readers
    height = page.locator(box).bounding_box()["height"]
    assert abs(height - state["rows"] * state["lineHeight"]) < 0.5, (height, state)  # whole lines
    shown = visible_lines(page, box, f"{box} .turn")
    assert shown and len(shown) <= state["rows"], shown
    assert shown[-1]["newest"] and shown[-1]["text"].startswith("We begin"), shown  # the newest line is shown whole
    page.screenshot(path=str(ARTIFACTS / f"present-{name}.png"))
    page.mouse.move(200, 200)
    expect(bar).to_have_css("opacity", "1")
    page.screenshot(path=str(ARTIFACTS / f"present-{name}-controls.png"))
    # Bigger text, remembered; still whole lines, the newest one shown.
    page.get_by_role("button", name="Larger text").click()
    page.get_by_role("button", name="Larger text").click()
    page.get_by_role("button", name="Fewer lines").click()
    state = page.evaluate("JSON.parse(JSON.stringify(window.__present))")
    assert state["settings"]["size"] == 88 and state["settings"]["lines"] == 2, state
    shown = visible_lines(page, box, f"{box} .turn")
    assert 1 <= len(shown) <= 2 and shown[-1]["newest"], shown
    for _ in range(5):  # 7 lines of 80 px: taller than the page's usual 60vh transcript box
        page.get_by_role("button", name="More lines").click()
    page.get_by_role("button", name="Smaller text").click()
    page.get_by_role("button", name="Smaller text").click()
    state = page.evaluate("JSON.parse(JSON.stringify(window.__present))")
    assert state["rows"] == 7 and state["lineHeight"] == 80, state
    assert abs(page.locator(box).bounding_box()["height"] - 560) < 0.5
    shown = visible_lines(page, box, f"{box} .turn")
    assert 4 <= len(shown) <= 7 and shown[-1]["newest"], shown
    page.screenshot(path=str(ARTIFACTS / f"present-{name}-7-lines.png"))
    page.keyboard.press("Escape")
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bpresenting\b"))
    expect(page.locator(button)).to_be_visible()
    page.keyboard.press("p")  # the shortcut
    expect(page.locator("body")).to_have_class(re.compile(r"\bpresenting\b"))
    expect(bar).to_have_css("opacity", "0", timeout=6000)
    page.keyboard.press("Tab")  # keyboard focus brings the controls back
    expect(bar).to_have_css("opacity", "1")
    page.keyboard.press("Escape")


def test_presentation_mode_on_the_viewer_page(flux_app, simulator):
    with live_session(flux_app, simulator) as share, browser(None) as b:
        page = b.new_page(viewport=VIEWPORT)
        page.goto(flux_app.http + share)
        expect(page.locator("#transcript .turn.interim")).to_contain_text("We begin")
        check_presentation(page, "#transcript", "#present", "viewer")
        page.reload()  # the style choices are remembered
        expect(page.locator("#transcript .turn.interim")).to_contain_text("We begin")
        assert page.evaluate("window.__present.settings") == {"theme": "dark", "size": 64, "lines": 7, "font": "sans"}


def test_presentation_mode_on_the_capture_page_and_finals_only_announced(flux_app, simulator):
    simulator.reset(script=SCRIPT)
    with browser(None) as b:  # Chromium's fake microphone (a beep): the simulator's words are clocked by it
        ctx = b.new_context(viewport=VIEWPORT)
        ctx.grant_permissions(["microphone"], origin=flux_app.http)
        page = ctx.new_page()
        page.goto(flux_app.http + "/")
        page.click("#start")
        expect(page.locator("#transcript .turn.final")).to_have_count(3, timeout=20000)
        expect(page.locator("#transcript .turn.interim")).to_contain_text("We begin", timeout=10000)
        final, interim = (style(page, f"#transcript .turn.{k}", "font-style", "color") for k in ("final", "interim"))
        assert final != interim and interim["font-style"] == "italic", (final, interim)
        assert page.get_attribute("#transcript", "aria-live") == "off"
        expect(page.locator("#announcer")).to_have_text(FINALS[2])  # the last final, never the interim
        check_presentation(page, "#transcript", "#present", "capture")
        page.locator("#present").click()
        page.evaluate("window.captionRelay.stop()")  # the session stops: the audience sees it is not live
        expect(page.locator("#conn-state")).to_be_visible()
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed", timeout=10000)
        expect(page.locator("#conn-state")).to_have_text("Stopped")  # the label people read (static/labels.js)
        page.screenshot(path=str(ARTIFACTS / "present-capture-stopped.png"))
        table: list[tuple] = []
        measure(page, "present-capture", ["#conn-state"], table)
        assert table and table[0][3] >= 4.5, table


# ---- contrast ----------------------------------------------------------------------------------

# Every text element a page shows, with the background it is drawn on (the first opaque ancestor's,
# alpha-blended), as computed by the browser. Colours come back as rgb()/rgba() or color(srgb …).
PAIRS = """(sels) => {
  const parse = (c) => {
    let m = c.match(/rgba?\\(([\\d.]+),?\\s*([\\d.]+),?\\s*([\\d.]+)(?:[,/]\\s*([\\d.]+))?\\)/);
    if (m) return [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]];
    m = c.match(/color\\(srgb ([\\d.]+) ([\\d.]+) ([\\d.]+)(?: \\/ ([\\d.]+))?\\)/);
    if (m) return [m[1] * 255, m[2] * 255, m[3] * 255, m[4] === undefined ? 1 : +m[4]];
    return null;
  };
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let out = [255, 255, 255];
    for (const c of layers.reverse()) out = out.map((v, i) => c[i] * c[3] + v * (1 - c[3]));
    return out;
  };
  const out = [];
  for (const sel of sels) {
    for (const el of document.querySelectorAll(sel)) {
      const cs = getComputedStyle(el);
      const r = el.getBoundingClientRect();
      // WCAG exempts inactive controls: a disabled button is measured where the page shows it enabled
      if (cs.visibility !== 'visible' || r.width === 0 || !el.textContent.trim() || el.disabled) continue;
      let fg = parse(cs.color);
      let opacity = 1;
      for (let e = el; e; e = e.parentElement) opacity *= +getComputedStyle(e).opacity;
      const bg = behind(el);
      const a = fg[3] * opacity;
      fg = fg.slice(0, 3).map((v, i) => v * a + bg[i] * (1 - a));
      out.push({sel, text: el.textContent.trim().slice(0, 24), fg, bg});
      break;
    }
  }
  return out;
}"""


def ratio(fg, bg) -> float:
    def lum(c):
        ch = [v / 255 for v in c]
        ch = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in ch]
        return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2]
    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


CAPTURE = ["h1", "#conn-state", ".field label", ".hint", "#start", "#stop", "#finalize", "#present", "#copy",
           "#transcript .turn.final", "#transcript .turn.interim", ".foot p", ".share", ".share a", ".msg span"]
VIEWER = ["h1", "#badge", ".meta span:not(.badge)", ".meta time", ".exports a", "#present", "#overlay-open",
          "#transcript .turn.final", "#transcript .turn.interim", ".empty-note"]
PRESENT = ["#transcript .turn.final", "#transcript .turn.interim", "#present-bar button", "#present-bar label",
           ".present-status"]
BUILDER = ["#overlay-heading", ".builder-hint", ".builder-field label", ".builder-help", "#overlay-url",
           "#overlay-copy", ".builder-label", ".builder-params summary"]
SESSIONS = ["h1", ".bar a", "th", "td", ".badge.live", ".badge.ended", "a.share-link", "a.overlay-link",
            "button", ".exports a"]
EMBED = ["#status", "#captions .final", "#captions .interim", "#captions p"]


def measure(page, name: str, sels: list[str], table: list[tuple]) -> None:
    for p in page.evaluate(PAIRS, sels):
        table.append((name, p["sel"], p["text"], round(ratio(p["fg"], p["bg"]), 2),
                      "#%02x%02x%02x" % tuple(round(v) for v in p["fg"]), "#%02x%02x%02x" % tuple(round(v) for v in p["bg"])))


def measure_pages(b, app, share: str, scheme: str, table: list[tuple]) -> None:
    """The viewer (and its builder and presentation themes), the widget, the capture page and /sessions."""
    ctx = b.new_context(viewport=VIEWPORT, color_scheme=scheme)
    ctx.grant_permissions(["microphone"], origin=app.http)
    page = ctx.new_page()
    page.goto(app.http + share)
    expect(page.locator("#transcript .turn.interim")).to_contain_text("We begin")
    measure(page, f"viewer/{scheme}", VIEWER, table)
    page.locator("#overlay-open").click()
    measure(page, f"builder/{scheme}", BUILDER, table)
    page.locator("#overlay-close").click()
    page.locator("#present").click()
    page.mouse.move(100, 100)
    for theme in ("dark", "light", "yellow", "blue"):
        page.select_option("#present-theme", theme)
        measure(page, f"present-viewer/{theme}", PRESENT, table)
    page.keyboard.press("Escape")
    for theme in ("light", "dark"):
        page.goto(f"{app.http}/embed?share={share[3:]}&theme={theme}")
        expect(page.locator("#captions")).to_contain_text("Please find")
        measure(page, f"embed-{theme}/{scheme}", EMBED, table)
    page.goto(app.http + "/")
    measure(page, f"capture-idle/{scheme}", CAPTURE, table)
    page.click("#start")
    expect(page.locator("#transcript .turn.interim")).to_contain_text("We begin", timeout=20000)
    measure(page, f"capture/{scheme}", CAPTURE, table)
    page.click("#stop")
    expect(page.locator("#start")).to_be_enabled(timeout=10000)
    page.goto(app.http + "/sessions")
    measure(page, f"sessions/{scheme}", SESSIONS, table)
    page.screenshot(path=str(ARTIFACTS / f"contrast-sessions-{scheme}.png"))
    ctx.close()


def test_every_text_colour_pair_is_at_least_4_5_to_1(flux_app, simulator):
    table: list[tuple] = []
    with browser(None) as b:
        for scheme in ("light", "dark"):
            with live_session(flux_app, simulator) as share:
                measure_pages(b, flux_app, share, scheme, table)
        with live_session(flux_app, simulator) as share:
            page = b.new_page(viewport=VIEWPORT)
            page.goto(f"{flux_app.http}{share}/overlay?outline=none&box=%23000000")  # the default text on a box
            expect(page.locator("#captions .line.interim")).to_contain_text("We begin")
            measure(page, "overlay/box", ["#captions .line.final", "#captions .line.interim"], table)
    lines = [f"{n:24} {s:28} {r:6.2f}  {fg} on {bg}  {t!r}" for n, s, t, r, fg, bg in table]
    (ARTIFACTS / "contrast.txt").write_text("\n".join(lines) + "\n")
    pages = {n.split("/")[0] for n, *_ in table}
    assert {"viewer", "builder", "present-viewer", "embed-light", "embed-dark", "capture-idle", "capture", "sessions",
            "overlay"} <= pages, pages
    low = [line for line, row in zip(lines, table) if row[3] < 4.5]
    assert not low, "under 4.5:1:\n" + "\n".join(low)
