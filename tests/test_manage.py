"""Sessions people can manage (issue 21, item 4): names, previews, search, delete, short links and QR codes.

The store contract runs on SQLite, a real redis-server and memory; the owner API and forms against a real app
process (SQLite in its DATA_DIR) fed by the upstream simulator; the flows a person clicks in headless Chromium."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import time
from urllib.parse import quote, urlencode

import pytest
import segno
from browser import browser, hooks
from conftest import ARTIFACTS, start_app, stop_app
from playwright.sync_api import expect
from test_browser_flows import flux_env, in_thread
from test_sharing import FIRST_TURN_AUDIO, SCRIPT_FINALS, Socket, http, owner_cookie

from webapp import store as store_module
from webapp.store import PREVIEW_CHARS, MemoryStore, RedisStore, SqliteStore

JSON = {"Content-Type": "application/json"}


async def spoken(app, cookie: str, name: str | None = None) -> dict:
    """One short capture (a final, then CloseStream) by this owner; returns its `ready` message."""
    query = "?" + urlencode({"name": name}) if name is not None else ""
    speaker = await Socket.open(f"{app.ws}/ws/listen{query}", additional_headers={"Cookie": cookie})
    ready = await speaker.until(lambda s: s.ready)
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.until(lambda s: s.finals())
    await speaker.close_stream()
    return ready


def mine(app, cookie: str, q: str | None = None) -> list[dict]:
    url = f"{app.http}/api/sessions" + (f"?q={quote(q)}" if q is not None else "")
    status, _, body = http("GET", url, {"Cookie": cookie})
    assert status == 200, body
    return json.loads(body)["sessions"]


# ---- the store contract, for every implementation ----------------------------------------------


@pytest.fixture(params=["sqlite", "redis", "memory"])
async def store(request, tmp_path, redis_url):
    s = {"sqlite": lambda: SqliteStore(tmp_path / "manage.sqlite3"), "memory": MemoryStore,
         "redis": lambda: RedisStore(redis_url, prefix=f"manage{time.monotonic_ns()}:")}[request.param]()
    await s.start()
    yield s
    await s.close()


async def test_store_names_previews_searches_and_deletes(store):
    now = time.time()
    sessions = [  # (id, owner, name, finals)
        ("a", "o1", "100% done_now", ["Hello world, this is a caption test.", "Second turn here."]),
        ("b", "o1", "100 done", ["Nothing special said."]),
        ("c", "o1", None, ["A back\\slash and a café."]),
        ("d", "o2", "100% done_now", ["Hello world from someone else."]),
    ]
    for i, (sid, owner, name, finals) in enumerate(sessions):
        await store.create_session({"id": sid, "owner": owner, "backend": "deepgram", "started_at": now - 100 + i,
                                    "share_version": 0, "share_token": f"tok-{sid}", "name": name,
                                    "short_id": f"short{sid}00000"})
        for seq, text in enumerate(finals):
            await store.append_final(sid, seq, {"turn": seq, "text": text, "start": seq, "end": seq + 1, "words": []})
        await store.end_session(sid, {"ended_at": now, "end_reason": "client_closed", "duration": 2.0})

    cases = [  # (query, ids it finds among o1's, newest first)
        ("%", ["a"]),             # a literal percent sign, not "anything"
        ("_", ["a"]),             # a literal underscore, not "any one character"
        ("0% d", ["a"]),
        ("100", ["b", "a"]),
        ("DONE", ["b", "a"]),     # either case
        ("hello WORLD", ["a"]),   # in the finals; o2's session is never found for o1
        ("second turn", ["a"]),
        ("back\\slash", ["c"]),   # the escape character itself is literal too
        ("nobody said this", []),
    ]
    for query, ids in cases:
        assert [m["id"] for m in await store.search_sessions("o1", query)] == ids, query
    assert [m["id"] for m in await store.search_sessions("o2", "hello")] == ["d"]

    previews = await store.previews(["a", "b", "c", "missing"])
    assert previews == {"a": "Hello world, this is a caption test. Second turn here.", "b": "Nothing special said.",
                        "c": "A back\\slash and a café."}
    await store.append_final("b", 1, {"turn": 1, "text": "word " * 100, "start": 1, "end": 2, "words": []})
    long = (await store.previews(["b"]))["b"]
    assert len(long) <= PREVIEW_CHARS and long.endswith("…") and long.startswith("Nothing special said. word")

    await store.rename_session("c", "Café talk")
    assert (await store.get_session("c"))["name"] == "Café talk"
    await store.rename_session("c", None)
    assert (await store.get_session("c"))["name"] is None
    await store.rename_session("missing", "x")
    assert await store.get_session("missing") is None  # naming nothing creates nothing

    assert (await store.session_by_short("shorta00000"))["id"] == "a"
    await store.set_short("a", "shortA11111")
    assert await store.session_by_short("shorta00000") is None  # the old short link is gone
    assert (await store.session_by_short("shortA11111"))["short_id"] == "shortA11111"
    await store.set_short("a", None)
    assert await store.session_by_short("shortA11111") is None

    assert await store.delete_session("b") is True
    assert await store.get_session("b") is None and await store.get_turns("b") == []
    assert await store.session_by_short("shortb00000") is None
    assert [m["id"] for m in await store.list_sessions("o1")] == ["c", "a"]
    assert await store.delete_session("b") is False
    assert [m["id"] for m in await store.list_sessions("o2")] == ["d"]  # another owner's untouched


async def test_a_search_without_an_index_reads_a_bounded_number_of_finals(store, monkeypatch):
    """Redis and memory read finals to search them: at most SEARCH_TURNS per search (SQLite's LIKE is one query)."""
    if isinstance(store, SqliteStore):
        pytest.skip("SQLite searches in one query over the owner's newest sessions")
    monkeypatch.setattr(store_module, "SEARCH_TURNS", 30)
    now = time.time()
    for i, needle_at in enumerate((3, 25, 1)):  # newest first; s1's match lies past the 30 finals read
        sid = f"s{i}"
        await store.create_session({"id": sid, "owner": "o", "backend": "local", "started_at": now - i,
                                    "share_version": 0})
        for seq in range(40):
            text = "the needle" if seq == needle_at else f"hay {seq}"
            await store.append_final(sid, seq, {"turn": seq, "text": text, "start": seq, "end": seq, "words": []})
    assert [m["id"] for m in await store.search_sessions("o", "needle")] == ["s0"]  # s1's is past the budget
    monkeypatch.setattr(store_module, "SEARCH_TURNS", 1000)
    assert [m["id"] for m in await store.search_sessions("o", "needle")] == ["s0", "s1", "s2"]


async def test_an_older_sqlite_file_gets_the_name_and_short_link_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(  # the sessions table as it was before issue 21
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, owner TEXT, backend TEXT NOT NULL, model TEXT, "
        "sample_rate INTEGER, started_at REAL NOT NULL, ended_at REAL, duration REAL, audio_seconds REAL, "
        "end_reason TEXT, share_version INTEGER NOT NULL DEFAULT 0, share_token TEXT, resume_nonce TEXT);"
        "INSERT INTO sessions (id, owner, backend, started_at, ended_at) VALUES ('old', 'o1', 'local', 1, 2);")
    db.commit()
    db.close()
    store = SqliteStore(path)
    await store.start()
    try:
        old = await store.get_session("old")
        assert old["name"] is None and old["short_id"] is None
        await store.rename_session("old", "Kept")
        assert [m["name"] for m in await store.search_sessions("o1", "kept")] == ["Kept"]
    finally:
        await store.close()


# ---- the owner API and the /sessions forms ------------------------------------------------------


async def test_naming_at_start_and_the_owner_api_rules(flux_app, sim):
    cookie, stranger = owner_cookie(flux_app), owner_cookie(flux_app)
    ready = await spoken(flux_app, cookie, name="  Monday   stand-up ")
    sid = ready["session_id"]
    assert re.fullmatch(r"/v/[0-9A-Za-z]{10}", ready["short_url"]), ready
    row = next(m for m in mine(flux_app, cookie) if m["id"] == sid)
    assert row["name"] == "Monday stand-up" and row["preview"] == SCRIPT_FINALS[0]
    assert row["short_url"] == ready["short_url"] and row["share_url"] == ready["share_url"]

    url = f"{flux_app.http}/api/sessions/{sid}"
    mk = lambda body: json.dumps(body).encode()  # noqa: E731
    cases = [  # (why, method, headers, body, status, message part)
        ("no credential", "PATCH", JSON, mk({"name": "x"}), 404, None),
        ("another owner", "PATCH", {**JSON, "Cookie": stranger}, mk({"name": "x"}), 404, None),
        ("forged cookie", "PATCH", {**JSON, "Cookie": "cr_owner=forged.sig"}, mk({"name": "x"}), 404, None),
        ("another site", "PATCH", {**JSON, "Cookie": cookie, "Origin": "http://evil.example"}, mk({"name": "x"}),
         403, None),
        ("not JSON", "PATCH", {**JSON, "Cookie": cookie}, b"name=x", 400, "must be JSON"),
        ("not an object", "PATCH", {**JSON, "Cookie": cookie}, mk(["x"]), 400, '{"name": "…"}'),
        ("another field", "PATCH", {**JSON, "Cookie": cookie}, mk({"name": "x", "live": False}), 400, '{"name"'),
        ("a number", "PATCH", {**JSON, "Cookie": cookie}, mk({"name": 5}), 400, "name must be text"),
        ("too long", "PATCH", {**JSON, "Cookie": cookie}, mk({"name": "x" * 81}), 400, "at most 80 printable"),
        ("a control char", "PATCH", {**JSON, "Cookie": cookie}, mk({"name": "a\u0007b"}), 400, "printable"),
        ("too big a body", "PATCH", {**JSON, "Cookie": cookie}, b" " * 5000, 400, "at most 4096 bytes"),
        ("delete: another owner", "DELETE", {"Cookie": stranger}, None, 404, None),
        ("delete: another site", "DELETE", {"Cookie": cookie, "Origin": "http://evil.example"}, None, 403, None),
    ]
    for why, method, headers, body, status, part in cases:
        got, _, text = http(method, url, headers, body)
        assert got == status, (why, got, text)
        if part:
            assert part in json.loads(text)["message"], (why, text)
        assert next(m for m in mine(flux_app, cookie) if m["id"] == sid)["name"] == "Monday stand-up", why
    assert http("GET", flux_app.http + ready["short_url"])[0] == 200  # nothing above deleted it

    status, _, body = http("PATCH", url, {**JSON, "Cookie": cookie}, mk({"name": "Board 7"}))
    assert status == 200 and json.loads(body)["name"] == "Board 7"
    status, _, body = http("PATCH", url, {**JSON, "Cookie": cookie}, mk({"name": None}))
    assert status == 200 and json.loads(body)["name"] is None
    status, _, body = http("GET", f"{flux_app.http}/api/sessions?q={'x' * 101}", {"Cookie": cookie})
    assert status == 400 and "at most 100" in json.loads(body)["message"]
    # A bad name at start is refused with the same words, before a session starts.
    bad = await Socket.open(f"{flux_app.ws}/ws/listen?name={'y' * 81}", additional_headers={"Cookie": cookie})
    messages = await bad.until_closed()
    assert messages[0]["type"] == "error" and "at most 80 printable" in messages[0]["message"], messages


async def test_the_name_and_delete_forms_follow_the_form_rules(flux_app, sim):
    """The /sessions forms carry the page's signed token and are refused from another site, as "Turn off link" is
    (tests/test_browser_flows.py); browsers post them with Origin: null, which works with the token."""
    cookie, stranger = owner_cookie(flux_app), owner_cookie(flux_app)
    ready = await spoken(flux_app, cookie, name="Forms")
    sid = ready["session_id"]
    page = http("GET", f"{flux_app.http}/sessions", {"Cookie": cookie})[2]
    csrf = re.search(rf'action="/sessions/{sid}/name"[^>]*><input type="hidden" name="csrf" value="([^"]+)"', page)[1]
    # Without JavaScript the start time reads in UTC, and says so; the script turns it into local time.
    assert re.search(r'<time data-local datetime="[0-9T:+-]+">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>', page)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for action, body in (("name", f"csrf={csrf}&name=Changed"), ("delete", f"csrf={csrf}")):
        url = f"{flux_app.http}/sessions/{sid}/{action}"
        refused = [  # (why, headers, body)
            ("another site", {"Cookie": cookie, "Sec-Fetch-Site": "cross-site"}, body),
            ("a sibling site", {"Cookie": cookie, "Sec-Fetch-Site": "same-site"}, body),
            ("a foreign Origin", {"Cookie": cookie, "Origin": "http://evil.example"}, body),
            ("no token", {"Cookie": cookie, "Sec-Fetch-Site": "same-origin"}, body.replace(f"csrf={csrf}", "")),
            ("a forged token", {"Cookie": cookie, "Sec-Fetch-Site": "same-origin"}, body.replace(csrf, "forged")),
            ("another owner", {"Cookie": stranger, "Sec-Fetch-Site": "same-origin"}, body),
        ]
        for why, headers, data in refused:
            status, _, text = http("POST", url, {**form, **headers}, data.encode())
            assert status == 403 and "That request was refused" in text, (action, why, status)
        row = next(m for m in mine(flux_app, cookie) if m["id"] == sid)
        assert row["name"] == "Forms", action  # nothing changed
    ok = {**form, "Cookie": cookie, "Sec-Fetch-Site": "same-origin", "Origin": "null"}
    for body, done, name in ((f"csrf={csrf}&name={'z' * 81}", "badname", "Forms"),
                             (f"csrf={csrf}&name=%20Changed%20%20name", "named", "Changed name"),
                             (f"csrf={csrf}&name=", "named", None)):
        status, headers, _ = http("POST", f"{flux_app.http}/sessions/{sid}/name", ok, body.encode())
        assert status == 303 and headers["Location"] == f"/sessions?done={done}", body
        assert next(m for m in mine(flux_app, cookie) if m["id"] == sid)["name"] == name, body
    status, headers, _ = http("POST", f"{flux_app.http}/sessions/{sid}/delete", ok, f"csrf={csrf}".encode())
    assert status == 303 and headers["Location"] == "/sessions?done=deleted"
    assert sid not in [m["id"] for m in mine(flux_app, cookie)]
    status, headers, _ = http("POST", f"{flux_app.http}/sessions/{sid}/delete", ok, f"csrf={csrf}".encode())
    assert status == 303 and headers["Location"] == "/sessions?done=missing"  # a second click: already gone


async def test_delete_is_refused_while_live_and_then_removes_everything(flux_app, sim):
    cookie, stranger = owner_cookie(flux_app), owner_cookie(flux_app)
    speaker = await Socket.open(f"{flux_app.ws}/ws/listen?name=Live%20one", additional_headers={"Cookie": cookie})
    ready = await speaker.until(lambda s: s.ready)
    sid = ready["session_id"]
    url = f"{flux_app.http}/api/sessions/{sid}"
    status, _, body = http("DELETE", url, {"Cookie": cookie})
    assert status == 409 and "stop it on its capture page first" in json.loads(body)["message"]
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.until(lambda s: s.finals())
    await speaker.close_stream()
    qr = f"{url}/qr.svg"
    assert http("GET", qr, {"Cookie": stranger})[0] == 404
    status, headers, svg = http("GET", qr, {"Cookie": cookie})
    assert status == 200 and headers["Content-Type"].startswith("image/svg+xml") and "<svg" in svg

    assert http("DELETE", url, {"Cookie": cookie})[0] == 204
    for path in (ready["share_url"], ready["short_url"], ready["share_url"] + "/transcript.txt"):
        assert http("GET", flux_app.http + path)[0] == 404, path
    for path in ("/transcript.txt", "/qr.svg"):
        assert http("GET", url + path, {"Cookie": cookie})[0] == 404, path
    assert sid not in [m["id"] for m in mine(flux_app, cookie)]
    assert http("DELETE", url, {"Cookie": cookie})[0] == 404  # already gone
    watcher = await Socket.open(f"{flux_app.ws}/ws/watch/{ready['share_url'][3:]}")
    assert [m["type"] for m in await watcher.until_closed()] == ["error"]


async def test_a_deleted_session_resumed_by_its_page_stays_deleted(flux_app, sim):
    """The page lost its socket (the session ended as client_gone), the owner deleted the session, then the page
    resumed it: it captions on, unrecorded, and the deleted links stay dead."""
    cookie = owner_cookie(flux_app)
    speaker = await Socket.open(f"{flux_app.ws}/ws/listen", additional_headers={"Cookie": cookie})
    ready = await speaker.until(lambda s: s.ready)
    await speaker.send_audio(FIRST_TURN_AUDIO)
    await speaker.until(lambda s: s.finals())
    await speaker.ws.close()  # the socket drops without CloseStream
    deadline = time.monotonic() + 10
    while next(m for m in mine(flux_app, cookie) if m["id"] == ready["session_id"])["live"]:
        assert time.monotonic() < deadline, "the dropped session never ended"
        await asyncio.sleep(0.05)  # polling the API with a deadline: no event to await from outside
    assert http("DELETE", f"{flux_app.http}/api/sessions/{ready['session_id']}", {"Cookie": cookie})[0] == 204
    again = await Socket.open(f"{flux_app.ws}/ws/listen?resume={ready['resume_token']}",
                              additional_headers={"Cookie": cookie})
    back = await again.until(lambda s: s.ready)
    assert back["resumed"] is True and "share_url" not in back and "short_url" not in back, back
    await again.send_audio(FIRST_TURN_AUDIO)
    await again.until(lambda s: s.finals())
    await again.close_stream()
    for path in (ready["share_url"], ready["short_url"]):
        assert http("GET", flux_app.http + path)[0] == 404, path
    assert ready["session_id"] not in [m["id"] for m in mine(flux_app, cookie)]


async def test_short_links_retire_with_turn_off_and_new_link(flux_app, sim):
    cookie = owner_cookie(flux_app)
    ready = await spoken(flux_app, cookie)
    api = f"{flux_app.http}/api/sessions/{ready['session_id']}/share"
    for bad in ("/v/short", "/v/" + "a" * 11, "/v/abc!defghi", "/v/" + ready["short_url"][3:].lower() + "x"):
        assert http("GET", flux_app.http + bad)[0] == 404, bad
    status, _, page = http("GET", flux_app.http + ready["short_url"])
    assert status == 200 and f'data-watch="/ws/watch/{ready["share_url"][3:]}"' in page
    assert http("DELETE", api, {"Cookie": cookie})[0] == 204  # Turn off link
    assert http("GET", flux_app.http + ready["short_url"])[0] == 404
    status, _, body = http("POST", api, {"Cookie": cookie})  # New link: a new short link, the old one stays dead
    fresh = json.loads(body)
    assert status == 201 and fresh["short_url"] != ready["short_url"]
    assert http("GET", flux_app.http + fresh["short_url"])[0] == 200
    assert http("GET", flux_app.http + ready["short_url"])[0] == 404


# ---- in Chromium --------------------------------------------------------------------------------


def qr_matrix_in_page(page, selector: str) -> list[list[int]]:
    """The dark/light modules of the QR image on the page, read back from its pixels: the image is drawn on a
    canvas at 8 px a module (its 4-module quiet zone included) and each module's centre is sampled."""
    return page.evaluate(
        """(sel) => {
            const img = document.querySelector(sel);
            const size = img.naturalWidth, n = size / 8;
            const c = document.createElement('canvas');
            c.width = c.height = size;
            const g = c.getContext('2d');
            g.fillStyle = '#fff'; g.fillRect(0, 0, size, size);
            g.drawImage(img, 0, 0, size, size);
            const px = g.getImageData(0, 0, size, size).data, rows = [];
            for (let y = 4; y < n - 4; y++) {
                const row = [];
                for (let x = 4; x < n - 4; x++) row.push(px[((y * 8 + 4) * size + x * 8 + 4) * 4] < 128 ? 1 : 0);
                rows.push(row);
            }
            return rows;
        }""",
        selector,
    )


def expected_matrix(url: str) -> list[list[int]]:
    return [[1 if v else 0 for v in row] for row in segno.make(url, error="m").matrix]


def test_a_person_names_searches_opens_the_short_link_and_deletes(flux_app, sim):
    with browser(None) as b:
        ctx = b.new_context(timezone_id="Asia/Kolkata", locale="en-GB")  # UTC+5:30: local time is visibly not UTC
        page = ctx.new_page()
        page.goto(flux_app.http + "/")
        state = page.locator("#conn-state")
        expect(state).to_have_text("Ready")
        expect(state).to_have_attribute("data-state", "idle")
        page.fill("#session-name", "Budget review 2027")
        page.click("#start")
        expect(state).to_have_attribute("data-state", "live", timeout=15000)
        expect(state).to_have_text("Listening")
        link = page.locator("#share-link")
        expect(link).to_have_text(re.compile(r"^http://127\.0\.0\.1:\d+/v/[0-9A-Za-z]{10}$"))
        short = link.inner_text()
        qr = page.locator("#share-qr")
        expect(qr).to_be_visible()
        expect(page.locator("#share-hint")).to_be_visible()  # 127.0.0.1: the page says phones cannot open it
        expect(page.locator("#transcript .final").first).to_have_text(SCRIPT_FINALS[0], timeout=15000)
        assert page.evaluate("document.querySelector('#share-qr').complete && document.querySelector('#share-qr').naturalWidth") > 0
        assert qr_matrix_in_page(page, "#share-qr") == expected_matrix(short)  # the QR code is of the short link
        page.screenshot(path=str(ARTIFACTS / "manage-capture-qr.png"), full_page=True)
        session_id = hooks(page)["sessionId"]
        page.click("#stop")
        expect(state).to_have_text("Stopped", timeout=15000)
        expect(state).to_have_attribute("data-state", "closed")

        page.goto(flux_app.http + "/sessions")
        row = page.locator(f'tr[data-session="{session_id}"]')
        expect(row.locator('input[name="name"]')).to_have_value("Budget review 2027")
        expect(row.locator(".preview")).to_have_text(re.compile("^" + re.escape(SCRIPT_FINALS[0])))  # its first words
        started = row.locator("time")
        expect(started).to_have_attribute("data-localized", "true")
        iso = started.get_attribute("datetime")
        local = page.evaluate("(iso) => new Intl.DateTimeFormat('en-GB', {dateStyle: 'medium', timeStyle: 'short', "
                              "timeZone: 'Asia/Kolkata'}).format(new Date(iso))", iso)
        expect(started).to_have_text(local)
        assert "UTC" in started.get_attribute("title")  # the server's UTC text is kept for comparison
        expect(row.locator(".short-link")).to_have_text(short)
        row.locator("details.qr summary").click()
        expect(row.locator("details.qr img")).to_be_visible()
        expect(row.locator("details.qr img")).to_have_js_property("complete", True)
        assert qr_matrix_in_page(page, f'tr[data-session="{session_id}"] details.qr img') == expected_matrix(short)

        # Rename it on the page.
        row.locator('input[name="name"]').fill("Budget review, final")
        row.get_by_role("button", name="Save name").click()
        expect(page.locator("#notice")).to_contain_text("name is saved")
        expect(row.locator('input[name="name"]')).to_have_value("Budget review, final")
        # Search by name, by what was said, and for nothing.
        for query, found in (("review, FINAL", True), ("caption test", True), ("100%_", False)):
            page.fill("#q", query)
            page.get_by_role("button", name="Search").click()
            expect(page.locator("#q")).to_have_value(query)
            expect(page.locator(f'tr[data-session="{session_id}"]')).to_have_count(1 if found else 0)
            if not found:
                expect(page.locator("#no-match")).to_contain_text(query)
        page.screenshot(path=str(ARTIFACTS / "manage-search-none.png"), full_page=True)
        page.get_by_role("link", name="Show all").click()

        # The short link opens the viewer: its name, the state, the time in the reader's zone.
        viewer = ctx.new_page()
        viewer.goto(short)
        expect(viewer.locator("h1")).to_have_text("Budget review, final")
        expect(viewer.locator("#badge")).to_have_attribute("data-state", "ended")
        expect(viewer.locator("#badge")).to_have_text("Ended")
        expect(viewer.locator("#started")).to_have_text(local)
        expect(viewer.locator("#transcript .final").first).to_have_text(SCRIPT_FINALS[0])
        viewer.screenshot(path=str(ARTIFACTS / "manage-short-link-viewer.png"), full_page=True)
        share = page.locator(f'tr[data-session="{session_id}"] a.share-link').get_attribute("href")

        # Delete, with its confirmation.
        row = page.locator(f'tr[data-session="{session_id}"]')
        confirm = row.get_by_role("button", name="Delete for good")
        expect(confirm).to_be_hidden()  # one click is not enough
        row.locator("details.delete summary").click()
        expect(row.locator("details.delete")).to_contain_text("cannot be undone")
        page.screenshot(path=str(ARTIFACTS / "manage-delete-confirm.png"), full_page=True)
        confirm.click()
        expect(page.locator("#notice")).to_contain_text("deleted")
        expect(page.locator(f'tr[data-session="{session_id}"]')).to_have_count(0)
        viewer.reload()
        expect(viewer.locator("h1")).not_to_have_text("Budget review, final")
        assert http("GET", short)[0] == 404 and http("GET", flux_app.http + share)[0] == 404


def test_a_waiting_viewer_is_told_at_once_when_the_session_is_deleted(simulator, session_tmp):
    """A session stopped by a server restart waits for its speaker; its viewers wait too. Deleting it tells them
    now, on the viewer page and in the widget, and the link is dead."""
    sim = simulator
    sim.reset()
    env, name = flux_env(sim), "manage-delete-paused"
    app = start_app(env, session_tmp, name)
    try:
        cookie = owner_cookie(app)

        async def speak():
            speaker = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Cookie": cookie})
            ready = await speaker.until(lambda s: s.ready)
            await speaker.send_audio(FIRST_TURN_AUDIO)
            await speaker.until(lambda s: s.finals())
            return speaker, ready

        speaker, ready = in_thread(speak())
        app.proc.send_signal(signal.SIGTERM)
        app.proc.wait(30)
        app = start_app(env, session_tmp, name, port=app.port)
        with browser(None) as b:
            viewer = b.new_page()
            viewer.goto(app.http + ready["short_url"])
            badge = viewer.locator("#badge")
            expect(badge).to_have_attribute("data-state", "reconnecting")
            widget = b.new_page()
            widget.goto(f"{app.http}/embed?share={ready['share_url'][3:]}")
            expect(widget.locator("#status")).to_have_attribute("data-state", "reconnecting")
            expect(widget.locator("#status")).to_have_text("Reconnecting…")
            status, _, _ = http("DELETE", f"{app.http}/api/sessions/{ready['session_id']}", {"Cookie": cookie})
            assert status == 204
            expect(badge).to_have_text("Session deleted", timeout=5000)
            expect(badge).to_have_attribute("data-state", "deleted")
            expect(viewer.locator("#transcript")).to_have_text("The person sharing these captions deleted this session.")
            expect(viewer.locator("nav.exports")).to_have_count(0)
            expect(widget.locator("#status")).to_have_attribute("data-state", "revoked")  # the host's word for it
            expect(widget.locator("#error")).to_contain_text("deleted the session")
            viewer.screenshot(path=str(ARTIFACTS / "manage-viewer-deleted.png"), full_page=True)
        assert http("GET", app.http + ready["short_url"])[0] == 404
        assert http("GET", app.http + ready["share_url"])[0] == 404
    finally:
        stop_app(app)
