"""Caption outputs (issue 19) against a real app process, the upstream simulator and real local receivers
(tests/receivers.py, simulators of YouTube's, Zoom's and a webhook's documented formats): every final reaches
every output once and in order across receiver outages, app restarts (SIGTERM, SIGKILL) and a session resume;
a dead receiver does not delay the speaker; the allowlist, the API's errors and masking; the capture page's
"Send captions to…" panel in headless Chromium."""
from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
import urllib.parse

import pytest

from conftest import TEST_DG_KEY, running_app, start_app, stop_app
from receivers import WebhookReceiver, YoutubeReceiver, ZoomReceiver, verify
from test_sharing import Socket, http, owner_cookie

SCRIPT = [["Good", "morning", "everyone."], ["Welcome", "to", "the", "service."], ["Please", "take", "a", "seat."],
          ["We", "begin", "with", "a", "reading."], ["From", "the", "book", "of", "Ruth."]]
LINES = [" ".join(t) for t in SCRIPT]
PACE = 0.02  # 80 ms frames every 20 ms: four times real time


@pytest.fixture(scope="module")
def receivers():
    rx = {"youtube": YoutubeReceiver("youtube"), "zoom": ZoomReceiver("zoom"), "webhook": WebhookReceiver("webhook")}
    yield rx
    for r in rx.values():
        r.stop()


def fresh(receivers, zoom_last_seq: int | None = None) -> dict:
    """New receivers on new ports for one test (the app's allowlist is their common loopback origin)."""
    for r in receivers.values():
        r.stop()
    receivers.update(youtube=YoutubeReceiver("youtube"), zoom=ZoomReceiver("zoom", zoom_last_seq),
                     webhook=WebhookReceiver("webhook"))
    return receivers


def app_env(sim, rx: dict, extra: dict | None = None) -> dict[str, str]:
    # Loopback receivers are reachable only through OUTPUT_ALLOWED_URLS, as an operator would list them.
    allowed = " ".join(r.origin for r in rx.values())
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "20", "OUTPUT_ALLOWED_URLS": allowed, **(extra or {})}


def api(app, method: str, path: str, cookie: str | None, body=None, headers: dict | None = None):
    h = {"Cookie": cookie} if cookie else {}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    status, _, text = http(method, f"{app.http}{path}", h, data)
    return status, (json.loads(text) if text.startswith("{") else text)


def add_outputs(app, cookie: str, session_id: str, rx: dict) -> dict[str, str]:
    """The three kinds, as a user would paste their URLs; returns kind -> output id."""
    urls = {"youtube": rx["youtube"].url + "?cid=stream-key-1234",
            "zoom": rx["zoom"].url + "?id=m1&ns=ns&expire=99&signature=sig-secret",
            "webhook": rx["webhook"].url}
    ids = {}
    for kind, url in urls.items():
        status, body = api(app, "POST", f"/api/sessions/{session_id}/outputs", cookie, {"type": kind, "url": url})
        assert status == 201, body
        ids[kind] = body["id"]
        if kind == "webhook":
            assert body["secret"].startswith("whsec_")  # generated, shown once
            rx["webhook"].secret = body["secret"]
    return ids


async def speak(speaker: Socket, seconds: float, pace: float = PACE) -> None:
    await speaker.send_audio(seconds, pace)


def words(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


def assert_delivered(rx: dict, lines: list[str]) -> None:
    """Each receiver holds exactly these finals, in order, once (early parts and their remainders joined), and saw
    no format violation."""
    for kind in ("youtube", "zoom"):
        assert not rx[kind].violations, (kind, rx[kind].violations)
        assert words(rx[kind].texts()) == words(lines), (kind, rx[kind].texts())
    hook = rx["webhook"]
    assert not hook.violations, hook.violations
    assert hook.texts(final=True) == lines


async def wait_delivered(rx: dict, n_words: int, n_finals: int, timeout: float = 30.0) -> None:
    def enough(kind):
        if kind == "webhook":
            return lambda r: len(r.texts(final=True)) >= n_finals
        return lambda r: len(words(r.texts())) >= n_words
    await asyncio.gather(*(asyncio.to_thread(r.wait_for, enough(k), timeout) for k, r in rx.items()))


def stored_finals(app, cookie: str, session_id: str) -> list[str]:
    status, doc = api(app, "GET", f"/api/sessions/{session_id}/transcript.json", cookie)
    assert status == 200
    return [t["text"] for t in doc["turns"]]


async def open_speaker(app, cookie: str, query: str = "") -> Socket:
    speaker = await Socket.open(f"{app.ws}/ws/listen{query}", additional_headers={"Cookie": cookie})
    await speaker.until(lambda s: s.ready)
    return speaker


# ---- formats and outages -------------------------------------------------------------------------


async def test_every_final_reaches_each_kind_once_in_order_across_receiver_faults(simulator, session_tmp, receivers):
    sim = simulator
    sim.reset(script=SCRIPT)
    rx = fresh(receivers, zoom_last_seq=41)  # the meeting's captions were at 41 before (another tool, a restart)
    rx["youtube"].fail(503, 2)  # a few server errors: retried with the same seq
    rx["zoom"].fail(400, 2)  # Zoom: "the meeting has not started": retried too
    rx["webhook"].fail(500, 1)
    with running_app(app_env(sim, rx), session_tmp, "outputs-faults") as app:
        cookie = owner_cookie(app)
        speaker = await open_speaker(app, cookie)
        session_id = speaker.ready["session_id"]
        ids = add_outputs(app, cookie, session_id, rx)
        await speak(speaker, 3.0)
        rx["webhook"].down()  # the webhook goes away mid-session: connections closed unanswered
        await speak(speaker, 2.0)
        rx["webhook"].down(False)
        await speak(speaker, 3.2)
        messages = await speaker.close_stream()
        assert [m["text"] for m in messages if m["type"] == "transcript" and m["final"]] == LINES
        await wait_delivered(rx, len(words(LINES)), len(LINES))
        assert_delivered(rx, LINES)
        assert stored_finals(app, cookie, session_id) == LINES

        # Zoom: its seq GET was asked, and the numbers continue after the server's 41.
        assert rx["zoom"].seq_gets >= 1 and rx["zoom"].captions[0].seq == 42
        assert [c.seq for c in rx["youtube"].captions] == list(range(1, len(rx["youtube"].captions) + 1))
        assert rx["youtube"].retries == 0  # a 503 was not accepted: its retry is the first accepted post
        # The webhook's payload: the documented fields, word timings, signature checked by the receiver.
        first = rx["webhook"].payloads[0]
        assert first["session"] == session_id and first["words"] and first["final"] is True
        assert first["start"] <= first["words"][0]["start"] <= first["end"]

        # The owner sees each output's state and counts; URLs masked, secrets never shown again.
        def states():
            return api(app, "GET", f"/api/sessions/{session_id}/outputs", cookie)
        deadline = time.monotonic() + 10
        while (rows := states()[1]["outputs"]) and any(r["state"] != "stopped" for r in rows):
            assert time.monotonic() < deadline, rows  # the session ended: each output stops once all is delivered
            await asyncio.sleep(0.1)  # polling the API with a deadline: nothing to await across the process
        by_kind = {r["type"]: r for r in rows}
        assert set(by_kind) == set(ids)
        assert by_kind["youtube"]["failed"] == 2 and "503" in by_kind["youtube"]["last_error"]
        assert by_kind["zoom"]["failed"] == 2 and by_kind["zoom"]["seq"] == rx["zoom"].last_seq
        assert by_kind["webhook"]["failed"] >= 2
        for r in rows:
            assert r["sent"] >= len(LINES) and r["delivered_finals"] == len(LINES)
        text = json.dumps(rows)
        assert "stream-key-1234" not in text and "sig-secret" not in text and rx["webhook"].secret not in text
        assert by_kind["youtube"]["url"].endswith("/closedcaption?cid=…")
        log = app.log_text()
    for secret in ("stream-key-1234", "sig-secret", rx["webhook"].secret, "cid="):
        assert secret not in log  # output URLs and secrets never reach a log line
    assert '"event": "output_failing"' in log and '"event": "output_restored"' in log


def test_the_documented_webhook_check_accepts_ours_and_refuses_forgeries():
    from webapp.outputs.webhook import sign
    body, now = b'{"text":"hello"}', int(time.time())
    header = sign("whsec_test", now, body)
    assert verify("whsec_test", header, body)
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_test", header, body + b" ")
    assert not verify("whsec_test", sign("whsec_test", now - 3600, body), body)  # a replay of an old one
    assert not verify("whsec_test", "v1=deadbeef", body)
