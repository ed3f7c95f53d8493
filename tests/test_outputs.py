"""Caption outputs (issue 19) against a real app process, the upstream simulator and real local receivers
(tests/receivers.py, simulators of YouTube's, Zoom's and a webhook's documented formats): every final reaches
every output once and in order across receiver outages, app restarts (SIGTERM, SIGKILL) and a session resume;
a dead receiver does not delay the speaker; the allowlist, the API's errors and masking; the capture page's
"Send captions to…" panel in headless Chromium."""
from __future__ import annotations

import asyncio
import json
import re
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


async def test_a_sentence_over_several_turns_is_marked_as_running_on(simulator, session_tmp, receivers):
    """Issue 22 item 1: the recognizer ends turns at short pauses, often mid-sentence. Each final still goes out
    once, in order, to every kind (no post is held back or merged); a final that goes on from a post that did not
    end a sentence says so (`continues`, the webhook's field), so a receiver can show one running sentence."""
    script = [["He", "was", "not", "an"], ["ill-disposed", "young", "man,"], ["unless", "rather", "cold."],
              ["Good", "night."]]
    lines = [" ".join(t) for t in script]
    sim = simulator
    sim.reset(script=script)
    rx = fresh(receivers)
    with running_app(app_env(sim, rx), session_tmp, "outputs-sentences") as app:
        cookie = owner_cookie(app)
        speaker = await open_speaker(app, cookie)
        add_outputs(app, cookie, speaker.ready["session_id"], rx)
        await speak(speaker, 6.0)
        messages = await speaker.close_stream()
        assert [m["text"] for m in messages if m["type"] == "transcript" and m["final"]] == lines
        await wait_delivered(rx, len(words(lines)), len(lines))
        assert_delivered(rx, lines)
        finals = [p for p in rx["webhook"].payloads if p["final"]]
        assert [p["continues"] for p in finals] == [False, True, True, False]


def test_the_documented_webhook_check_accepts_ours_and_refuses_forgeries():
    from webapp.outputs.webhook import sign
    body, now = b'{"text":"hello"}', int(time.time())
    header = sign("whsec_test", now, body)
    assert verify("whsec_test", header, body)
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_test", header, body + b" ")
    assert not verify("whsec_test", sign("whsec_test", now - 3600, body), body)  # a replay of an old one
    assert not verify("whsec_test", "v1=deadbeef", body)


@pytest.mark.parametrize("sig, backend", [(signal.SIGTERM, "sqlite"), (signal.SIGKILL, "sqlite"),
                                          (signal.SIGKILL, "redis")], ids=["sigterm", "sigkill", "sigkill-redis"])
async def test_outputs_resume_where_they_stopped_across_an_app_restart(simulator, session_tmp, receivers, sig,
                                                                       backend, request):
    """Two turns delivered, the third under way: the app stops (drained, or killed), YouTube's receiver is down
    meanwhile, the app starts again and the page resumes the session. Each receiver ends up with every stored
    final once, in order, numbered on without a gap or a repeat. With Redis the killed process's output lease
    must expire first (another process could be holding it)."""
    sim = simulator
    sim.reset(script=SCRIPT)
    rx = fresh(receivers)
    name = f"outputs-{sig.name.lower()}-{backend}"
    env = app_env(sim, rx, {"REDIS_URL": request.getfixturevalue("redis_url")} if backend == "redis" else None)
    app = start_app(env, session_tmp, name)
    try:
        cookie = owner_cookie(app)
        speaker = await open_speaker(app, cookie)
        session_id, token = speaker.ready["session_id"], speaker.ready["resume_token"]
        add_outputs(app, cookie, session_id, rx)
        await speak(speaker, 1.6)  # turn 1 final (at 1.3 s of audio)
        await wait_delivered(rx, len(words(LINES[:1])), 1)
        rx["youtube"].down()  # YouTube's receiver misses turn 2: it is retried, then the app stops
        await speak(speaker, 1.6)  # turn 2 final (2.9 s), turn 3 begun
        await speaker.until(lambda s: len(s.finals()) >= 2)
        await wait_delivered({k: rx[k] for k in ("zoom", "webhook")}, len(words(LINES[:2])), 2)
        assert words(rx["youtube"].texts()) == words(LINES[:1])
        app.proc.send_signal(sig)
        app.proc.wait(30)
        await speaker.until_closed()
        before = len(rx["zoom"].captions)
        app = start_app(env, session_tmp, name, port=app.port)
        rx["youtube"].down(False)
        # Before the page is back, the restarted app delivers what was stored and not yet delivered (the turn a
        # drain finalized, YouTube's missed posts): it picks up every session with outputs still running.
        held = stored_finals(app, cookie, session_id)
        await wait_delivered(rx, len(words(held)), len(held))
        assert_delivered(rx, held)
        speaker = await open_speaker(app, cookie, f"?resume={urllib.parse.quote(token)}")
        assert speaker.ready["resumed"] is True and speaker.ready["session_id"] == session_id
        await speak(speaker, 8.0)  # the simulator's new connection recognizes the whole script again
        await speaker.close_stream()
        lines = stored_finals(app, cookie, session_id)
        assert lines[:2] == LINES[:2] and lines[-len(LINES):] == LINES
        await wait_delivered(rx, len(words(lines)), len(lines))
        assert_delivered(rx, lines)
        assert len(rx["zoom"].captions) > before
        for kind in ("youtube", "zoom"):  # numbered on: 1, 2, 3… across the restart (Zoom from its GET)
            seqs = [c.seq for c in rx[kind].captions]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (kind, seqs)
    finally:
        stop_app(app)


# ---- timing: a long turn's beginning goes out early; a dead receiver delays no one -----------------

LONG_TURN = [["Today", "we", "remember", "the", "people", "who", "built", "this", "hall", "with", "their", "own",
              "hands", "and", "the", "families", "who", "kept", "it", "open", "every", "winter."]]  # 6.6 s


async def test_a_long_turn_reaches_outputs_within_three_seconds_of_each_word(simulator, session_tmp, receivers):
    """Real-time audio, one 6.6 s turn: its stable beginning is sent early, the final adds only the rest. Each
    word's lag = when the receiver got it - when the speaker finished saying it (the simulator hears word i at
    (i + 1) x 0.3 s of audio)."""
    sim = simulator
    sim.reset(script=LONG_TURN)
    rx = fresh(receivers)
    with running_app(app_env(sim, rx), session_tmp, "outputs-lag") as app:
        cookie = owner_cookie(app)
        speaker = await open_speaker(app, cookie)
        add_outputs(app, cookie, speaker.ready["session_id"], rx)
        t0 = time.time()
        await speak(speaker, 7.4, pace=0.08)  # real time
        await speaker.until(lambda s: s.finals())
        await speaker.close_stream()
        line = " ".join(LONG_TURN[0])
        await wait_delivered(rx, len(line.split()), 1)
    assert_delivered(rx, [line])
    for kind in ("youtube", "zoom"):
        posts = rx[kind].captions
        assert len(posts) >= 3, (kind, [p.text for p in posts])  # early parts, then the rest with the final
        lags, i = [], 0
        for post in posts:
            for _ in post.text.split():
                lags.append(post.at - (t0 + (i + 1) * 0.3))
                i += 1
        early = lags[: len(lags) - len(posts[-1].text.split())]
        print(f"{kind}: {len(posts)} posts; early words' lag max {max(early):.2f} s, median "
              f"{statistics.median(early):.2f} s; every word's lag max {max(lags):.2f} s")
        assert max(early) < 3.0, (kind, lags)
        assert max(lags) < 3.0, (kind, lags)
    partials = [p for p in rx["webhook"].payloads if not p["final"]]
    assert partials and all(line.startswith(p["text"]) for p in partials)  # the webhook gets the whole beginning


async def final_latencies(app, cookie: str, before_audio=None) -> list[float]:
    """Seconds from the audio frame that ends each turn (its final's `end`: the simulator's end of turn) leaving
    the speaker to that turn's final reaching the speaker's socket: the relay's own latency, free of the client's
    pacing."""
    from client import FRAME, frames, tone_pcm
    speaker = await open_speaker(app, cookie)
    if before_audio:
        await before_audio(speaker.ready["session_id"])
    sent: list[float] = []
    arrivals: dict[int, float] = {}

    def note(s):
        for m in s.messages:
            if m["type"] == "transcript" and m["final"] and m["turn"] not in arrivals:
                arrivals[m["turn"]] = time.monotonic()
        return len(arrivals) == len(LINES)

    async def watch():
        while not note(speaker):
            speaker.changed.clear()
            await speaker.changed.wait()

    watcher = asyncio.create_task(watch())
    for chunk in frames(tone_pcm(9.0)):
        await speaker.ws.send(chunk)
        sent.append(time.monotonic())
        await asyncio.sleep(PACE)  # pacing the audio like a microphone
    await asyncio.wait_for(watcher, 15)
    ends = {m["turn"]: m["end"] for m in speaker.messages if m["type"] == "transcript" and m["final"]}
    await speaker.close_stream()
    bytes_per_s = 32000
    last = [max(0, -(-round(ends[t] * bytes_per_s) // FRAME) - 1) for t in sorted(ends)]  # the frame holding `end`
    return [arrivals[t] - sent[min(len(sent) - 1, i)] for t, i in zip(sorted(ends), last, strict=True)]


async def test_dead_and_stalled_receivers_delay_neither_the_speaker_nor_other_outputs(simulator, session_tmp):
    """The same capture twice: without outputs, then with nine outputs whose receivers are dead (no answer) or
    stalled (hold every request) plus one healthy webhook. The speaker's finals arrive at the same times; the
    healthy webhook gets each final within moments of the speaker; a stalled receiver's requests time out, are
    retried with the same seq, and everything arrives once it answers again."""
    sim = simulator
    sim.reset(script=SCRIPT)
    dead = [YoutubeReceiver("dead-yt"), ZoomReceiver("dead-zoom"), WebhookReceiver("dead-hook", "s" * 16)]
    stalled = [YoutubeReceiver("stalled-yt"), ZoomReceiver("stalled-zoom"), WebhookReceiver("stalled-hook", "s" * 16)]
    healthy = WebhookReceiver("healthy")
    everyone = dead + stalled + [healthy]
    for r in dead:
        r.down()
    for r in stalled:
        r.stall()
    try:
        with running_app(app_env(sim, {r.name: r for r in everyone}), session_tmp, "outputs-dead") as app:
            cookie = owner_cookie(app)
            without = await final_latencies(app, cookie)
            sim.reset(script=SCRIPT)

            async def add(session_id):
                for r in dead + stalled + dead:  # nine
                    kind = {"YoutubeReceiver": "youtube", "ZoomReceiver": "zoom"}.get(type(r).__name__, "webhook")
                    query = {"youtube": "?cid=k", "zoom": "?id=m&signature=s", "webhook": ""}[kind]
                    body = {"type": kind, "url": r.url + query, "secret": "s" * 16}
                    assert api(app, "POST", f"/api/sessions/{session_id}/outputs", cookie, body)[0] == 201
                status, body = api(app, "POST", f"/api/sessions/{session_id}/outputs", cookie,
                                   {"type": "webhook", "url": healthy.url})
                assert status == 201
                healthy.secret = body["secret"]

            with_dead = await final_latencies(app, cookie, add)
            healthy.wait_for(lambda r: len(r.texts(final=True)) == len(LINES))
            rows = api(app, "GET", "/api/sessions", cookie)[1]["sessions"]
            path = f"/api/sessions/{rows[0]['id']}/outputs"
            states = api(app, "GET", path, cookie)[1]["outputs"]
            # A stalled receiver's request times out (5 s) and is retried; once it answers again, all arrives.
            stalled_origins = tuple(r.origin for r in stalled)
            deadline = time.monotonic() + 15
            while not all(s["state"] == "retrying" and "did not answer in time" in (s["last_error"] or "")
                          for s in api(app, "GET", path, cookie)[1]["outputs"] if s["url"].startswith(stalled_origins)):
                assert time.monotonic() < deadline, api(app, "GET", path, cookie)[1]
                await asyncio.sleep(0.2)  # polling the API with a deadline: the timeout fires inside the app
            for r in stalled:
                r.release()
            for r in stalled:
                await asyncio.to_thread(r.wait_for, lambda r: words(r.texts(final=True)) == words(LINES), 20)
                assert not r.violations, (r.name, r.violations)
            assert stalled[0].retries >= 1  # YouTube's timed-out post came again with its seq (Zoom's stall was its GET)
    finally:
        for r in everyone:
            r.stop()
    print("speaker's final latency without outputs (s)", [round(x, 3) for x in without])
    print("speaker's final latency with 9 dead or stalled outputs (s)", [round(x, 3) for x in with_dead])
    assert len(without) == len(with_dead) == len(LINES)
    # The same within scheduling noise (2 shared cores): no final waits for an output.
    assert statistics.median(with_dead) < statistics.median(without) + 0.05, (without, with_dead)
    assert max(with_dead) < max(without) + 0.25, (without, with_dead)
    assert healthy.texts(final=True) == LINES and not healthy.violations
    assert {s["state"] for s in states if s["url"].startswith(healthy.origin)} <= {"active", "stopped"}
    # The dead ones' connections fail at once: retrying; a stalled one's request waits for its timeout (5 s) first.
    assert sum(s["state"] == "retrying" for s in states) >= 6, states


# ---- the allowlist, the API's answers, the store's records -----------------------------------------

ALLOWED = ("http://127.0.0.1:9000/", "https://hooks.example.org/captions", "ws://10.0.0.5:4455")
ALLOWLIST = [
    # (kind, url, allowed?, what the refusal says)
    ("youtube", "https://upload.youtube.com/closedcaption?cid=abc", True, ""),
    ("youtube", "http://upload.youtube.com/closedcaption?cid=abc", True, ""),  # YouTube documents http too
    ("youtube", "https://upload.youtube.com.evil.example/closedcaption?cid=abc", False, "OUTPUT_ALLOWED_URLS"),
    ("youtube", "https://upload.youtube.com/upload?cid=abc", False, "OUTPUT_ALLOWED_URLS"),
    ("youtube", "https://upload.youtube.com:8443/closedcaption?cid=abc", False, "OUTPUT_ALLOWED_URLS"),
    ("youtube", "https://me@upload.youtube.com/closedcaption", False, "user names"),
    ("zoom", "https://wmcapi.zoom.us/closedcaption?id=1&signature=x", True, ""),
    ("zoom", "http://wmcapi.zoom.us/closedcaption?id=1", False, "OUTPUT_ALLOWED_URLS"),  # Zoom's is https only
    ("zoom", "https://upload.youtube.com/closedcaption", False, "OUTPUT_ALLOWED_URLS"),  # another kind's host
    ("webhook", "https://upload.youtube.com/closedcaption", False, "OUTPUT_ALLOWED_URLS"),
    ("webhook", "https://hooks.example.org/captions", True, ""),
    ("webhook", "https://hooks.example.org/captions/room-1", True, ""),
    ("webhook", "https://hooks.example.org/captions-evil", False, "OUTPUT_ALLOWED_URLS"),  # a path boundary
    ("webhook", "http://hooks.example.org/captions", False, "OUTPUT_ALLOWED_URLS"),  # the scheme is the prefix's
    ("webhook", "http://127.0.0.1:9000/anything", True, ""),
    ("webhook", "http://127.0.0.1:9001/anything", False, "OUTPUT_ALLOWED_URLS"),  # another port
    ("webhook", "http://169.254.169.254/latest/meta-data", False, "OUTPUT_ALLOWED_URLS"),
    ("webhook", "file:///etc/passwd", False, "https:// or http://"),
    ("webhook", "http://127.0.0.1:9000/x#frag", False, "fragment"),
    # dot segments: httpx resolves them (a post to /admin), receivers decode %2e (hostile probe output_ssrf)
    ("webhook", "https://hooks.example.org/captions/../admin", False, ". and .."),
    ("webhook", "https://hooks.example.org/captions/%2e%2e/admin", False, ". and .."),
    ("webhook", "https://hooks.example.org/captions/..%2Fadmin", False, ". and .."),
    ("webhook", "https://hooks.example.org/captions/./x", False, ". and .."),
    ("webhook", "https://hooks.example.org/captions/..x", True, ""),  # a name that starts with dots is a name
    ("webhook", "", False, "give the destination's URL"),
    ("obs", "ws://10.0.0.5:4455", True, ""),
    ("obs", "ws://10.0.0.6:4455", False, "OUTPUT_ALLOWED_URLS"),  # obs needs its host listed too
]


@pytest.mark.parametrize("kind, url, ok, says", ALLOWLIST, ids=[f"{c[0]}:{c[1][:48]}" for c in ALLOWLIST])
def test_the_allowlist(kind, url, ok, says):
    from webapp.outputs import allowlist
    schemes = ("ws", "wss") if kind == "obs" else ("https", "http")
    if ok:
        assert allowlist.check(kind, url, ALLOWED, schemes)
    else:
        with pytest.raises(allowlist.Refused) as refused:
            allowlist.check(kind, url, ALLOWED, schemes)
        assert says in str(refused.value) and (not url or url not in str(refused.value))


@pytest.mark.parametrize("url, shown", [
    ("https://upload.youtube.com/closedcaption?cid=abc-123", "https://upload.youtube.com/closedcaption?cid=…"),
    ("https://wmcapi.zoom.us/closedcaption?id=1&ns=x&signature=s", "https://wmcapi.zoom.us/closedcaption?id=…&ns=…&signature=…"),
    ("https://hooks.slack.example/services/T00/B00/XXXX", "https://hooks.slack.example/services/…"),
    ("ws://10.0.0.5:4455", "ws://10.0.0.5:4455"),
])
def test_urls_are_shown_masked(url, shown):
    from webapp.outputs.allowlist import mask
    assert mask(url) == shown


@pytest.mark.parametrize("env, needle", [
    ({"OUTPUT_ALLOWED_URLS": "hooks.example.org"}, "OUTPUT_ALLOWED_URLS"),
    ({"OUTPUT_ALLOWED_URLS": "https://user:pw@hooks.example.org/"}, "OUTPUT_ALLOWED_URLS"),
    ({"OUTPUT_ALLOWED_URLS": "https://hooks.example.org/?token=1"}, "no user, query or fragment"),
    ({"OUTPUT_ALLOWED_URLS": "ftp://files.example.org/"}, "OUTPUT_ALLOWED_URLS"),
    ({"OUTPUT_ALLOWED_URLS": "http://127.0.0.1:99999/"}, "bad port"),
])
def test_the_allowlist_setting_is_validated(env, needle):
    from webapp import config
    with pytest.raises(config.ConfigError) as err:
        config.load(env)
    assert needle in str(err.value)
    assert config.load({"OUTPUT_ALLOWED_URLS": "https://a.example/x, ws://10.0.0.5:4455"}).output_allowed_urls == (
        "https://a.example/x", "ws://10.0.0.5:4455")


async def test_the_owner_api_answers_each_mistake_clearly(simulator, session_tmp, receivers):
    sim = simulator
    sim.reset(script=SCRIPT)
    rx = fresh(receivers)
    hook = rx["webhook"]
    with running_app(app_env(sim, rx), session_tmp, "outputs-api") as app:
        cookie, stranger = owner_cookie(app), owner_cookie(app)
        speaker = await open_speaker(app, cookie)
        session_id = speaker.ready["session_id"]
        path = f"/api/sessions/{session_id}/outputs"
        good = {"type": "webhook", "url": hook.url}
        cases = [
            # (cookie, body or raw bytes, extra headers, status, error, words in its message)
            (None, good, {}, 404, "not_found", ""),
            (stranger, good, {}, 404, "not_found", ""),  # another browser's session looks like no session
            (cookie, good, {"Origin": "http://evil.example"}, 403, "forbidden", ""),
            (cookie, good, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "JSON"),
            (cookie, b"{not json", {}, 400, "bad_json", "not JSON"),
            (cookie, b"[1, 2]", {}, 400, "bad_request", "JSON object"),
            (cookie, b"x" * 9000, {}, 413, "too_large", "8192"),
            (cookie, {"type": "fax", "url": hook.url}, {}, 400, "refused", "type: one of youtube, zoom, webhook"),
            (cookie, {"type": "webhook"}, {}, 400, "refused", "url:"),
            (cookie, {"type": "webhook", "url": "http://10.1.2.3/hook"}, {}, 400, "refused", "OUTPUT_ALLOWED_URLS"),
            (cookie, {"type": "youtube", "url": "https://example.org/closedcaption"}, {}, 400, "refused",
             "youtube outputs post only to https://upload.youtube.com/closedcaption"),
            (cookie, {"type": "zoom", "url": rx["zoom"].url + "?id=1", "lang": "english please"}, {}, 400, "refused",
             "lang"),
            (cookie, {**good, "secret": "short"}, {}, 400, "refused", "at least 16"),
        ]
        for who, body, headers, status, error, says in cases:
            got, answer = api(app, "POST", path, who, body, headers)
            assert (got, answer.get("error")) == (status, error), (body, answer)
            assert says in answer.get("message", ""), answer
        assert api(app, "GET", path, cookie)[1] == {"outputs": []}  # nothing was added by any of them

        # An owner-given secret is used and never shown back; removing stops the output and forgets it.
        status, body = api(app, "POST", path, cookie, {**good, "secret": "my-own-secret-0123"})
        assert status == 201 and "secret" not in body
        hook.secret = "my-own-secret-0123"
        for _ in range(15):
            assert api(app, "POST", path, cookie, good)[0] == 201
        assert api(app, "POST", path, cookie, good)[1]["error"] == "too_many_outputs"
        rows = api(app, "GET", path, cookie)[1]["outputs"]
        assert len(rows) == 16 and "my-own-secret" not in json.dumps(rows)
        assert api(app, "GET", path, stranger)[0] == 404
        assert api(app, "DELETE", f"{path}/{rows[0]['id']}", stranger)[0] == 404
        assert api(app, "DELETE", f"{path}/{rows[0]['id']}", cookie, headers={"Origin": "http://evil.example"})[0] == 403
        for row in rows:
            assert api(app, "DELETE", f"{path}/{row['id']}", cookie)[0] == 204
        assert api(app, "DELETE", f"{path}/{rows[0]['id']}", cookie)[0] == 404
        assert api(app, "GET", path, cookie)[1] == {"outputs": []}
        await speaker.close_stream()
        # An ended session takes no new outputs.
        assert api(app, "POST", path, cookie, good)[1]["error"] == "session_ended"


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path):
    from webapp.store import make_store
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/s.sqlite3"}.get(request.param) or \
        request.getfixturevalue("redis_url")
    s = make_store(url)
    await s.start()
    if request.param == "redis":
        await s.redis.flushdb()
    yield s
    await s.close()


async def test_each_store_keeps_output_records(store):
    """The cursor's home: add, update (never bringing back a deleted one), list, delete, the lease."""
    await store.create_session({"id": "s1", "owner": "o", "backend": "local", "started_at": 1.0})
    for seq in range(5):
        await store.append_final("s1", seq, {"turn": seq, "text": f"t{seq}", "start": 0, "end": 1, "words": []})
    record = {"id": "a", "cursor": {"next": 0, "seq": 0}, "text": "Grüße"}
    await store.add_output("s1", "a", record)
    await store.add_output("s1", "b", {**record, "id": "b"})
    assert await store.update_output("s1", "a", {**record, "cursor": {"next": 3, "seq": 7}})
    assert [r["cursor"] for r in await store.get_outputs("s1")] == [{"next": 3, "seq": 7}, {"next": 0, "seq": 0}]
    assert await store.output_sessions() == ["s1"]
    assert [t["text"] for t in await store.output_finals("s1", 3, 10)] == ["t3", "t4"]
    assert [t["seq"] for t in await store.output_finals("s1", 1, 2)] == [1, 2]
    assert await store.delete_output("s1", "a") and not await store.delete_output("s1", "a")
    assert not await store.update_output("s1", "a", record)  # a runner's late write does not revive it
    assert [r["id"] for r in await store.get_outputs("s1")] == ["b"]
    assert await store.lease_outputs("s1", "p1", 5) and await store.lease_outputs("s1", "p1", 5)
    if type(store).__name__ == "RedisStore":  # several processes: one holds it
        assert not await store.lease_outputs("s1", "p2", 5)
        await store.release_outputs("s1", "p1")
        assert await store.lease_outputs("s1", "p2", 5)
    await store.delete_output("s1", "b")
    assert await store.output_sessions() == []


# ---- the capture page's panel, in Chromium ---------------------------------------------------------


def test_the_send_captions_panel_adds_shows_and_removes_an_output(simulator, session_tmp, receivers):
    from playwright.sync_api import expect

    from browser import browser
    from conftest import ARTIFACTS
    from test_sharing import _fake_mic_wav

    simulator.reset()  # two turns: "Hello world, this is a caption test." and "Second turn here."
    rx = fresh(receivers)
    wav = _fake_mic_wav(ARTIFACTS / "outputs-fake-mic.wav", seconds=5.0)
    with running_app(app_env(simulator, rx), session_tmp, "outputs-browser") as app, browser(wav) as b:
        page = b.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(app.http + "/")
        panel = page.locator("#outputs")
        expect(panel).to_be_hidden()  # no session yet: nothing to send
        page.click("#start")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=15000)
        expect(panel).to_be_visible()
        page.click("#outputs-heading")
        # A URL outside the allowlist: the page says which rule.
        page.select_option("#output-type", "webhook")
        page.fill("#output-url", "http://192.0.2.7/hook")
        page.click("#output-add")
        expect(page.locator("#output-error")).to_contain_text("OUTPUT_ALLOWED_URLS")
        # OBS asks for its password.
        page.select_option("#output-type", "obs")
        expect(page.locator("#output-password")).to_be_visible()
        page.select_option("#output-type", "youtube")
        expect(page.locator("#output-password")).to_be_hidden()
        page.fill("#output-url", rx["youtube"].url + "?cid=page-key-42")
        page.click("#output-add")
        row = page.locator("#output-list li.output")
        expect(row).to_have_count(1)
        expect(page.locator("#output-error")).to_be_hidden()
        expect(row).to_contain_text("youtube · http://127.0.0.1")
        expect(row).not_to_contain_text("page-key-42")  # shown masked
        expect(row.locator(".output-state")).to_have_text("sending")
        expect(row.locator(".output-counts")).to_have_text(re.compile(r"^[1-9]\d* sent, 0 failed$"), timeout=15000)
        first = "Hello world, this is a caption test.".split()
        # the whole first turn (an early send may carry only its beginning), then Remove
        rx["youtube"].wait_for(lambda r: len(words([c.text for c in r.captions])) >= len(first))
        page.screenshot(path=str(ARTIFACTS / "outputs-panel.png"), full_page=True)
        row.locator(".output-remove").click()
        expect(row).to_have_count(0)
        page.click("#stop")
    assert words(rx["youtube"].texts())[: len(first)] == first and not rx["youtube"].violations
    assert not errors, errors


# ---- the early-send rule (pure) ----------------------------------------------------------------------

STABLE = [
    # (interims as (seconds, text), at, stable words)
    ([(0.0, "hello")], 5.0, 0),  # seen once: not agreed by two interims
    ([(0.0, "hello"), (0.3, "hello world")], 1.1, 1),  # "hello" agreed and 1.1 s old; "world" seen once
    ([(0.0, "hello"), (0.3, "hello world")], 0.9, 0),  # agreed but not yet 1 s old
    ([(0.0, "hello"), (0.3, "hello world"), (0.6, "hello word")], 2.0, 1),  # "world" changed: its age restarts
    ([(0.0, "Hello"), (0.3, "hello, world"), (0.6, "hello, world and")], 2.0, 2),  # case and punctuation agree
    ([(0.0, "a b c"), (0.3, "x b c")], 5.0, 0),  # the first word changed: nothing after it is a beginning
]


@pytest.mark.parametrize("interims, at, n", STABLE)
def test_the_stable_beginning_of_a_turn(interims, at, n):
    from webapp.outputs.stable import StablePrefix
    prefix = StablePrefix(0)
    for t, text in interims:
        prefix.update(text, t)
    assert prefix.stable(at) == n


@pytest.mark.parametrize("final, early, rest", [
    ("Hello world, this is a test.", "hello world", "this is a test."),
    ("Hello world.", "Hello world", ""),
    ("Yellow world, this is a test.", "hello world", None),  # changed its mind: the whole final goes out
    ("Hi.", "hi there", None),
])
def test_what_a_final_adds_to_its_early_part(final, early, rest):
    from webapp.outputs.stable import remainder
    assert remainder(final, early) == rest


@pytest.mark.parametrize("spoken, now, line", [
    (1796311066.72, 1796311070.0, "2026-12-03T15:17:46.720"),  # when the words were spoken, in UTC, to the ms
    (1796311066.0005, 1796311070.0, "2026-12-03T15:17:46.000"),
    (1796311000.0, 1796311070.0, "2026-12-03T15:17:20.000"),  # 70 s late: stamped 30 s ago, or YouTube drops it
])
def test_youtube_bodies(spoken, now, line):
    from webapp.outputs.base import Caption
    from webapp.outputs.youtube import body
    caption = Caption("s", 0, "and so\nmy  fellow Americans", 0.0, 1.0, spoken)
    assert body(caption, now) == f"{line}\nand so my fellow Americans\n".encode()


# ---- OBS through the app (obs-websocket simulator, tests/fake_obs.py) ------------------------------------


async def test_obs_gets_the_captions_through_the_app_while_it_streams(simulator, session_tmp, receivers):
    from fake_obs import FakeObs

    sim = simulator
    sim.reset(script=SCRIPT)
    obs = FakeObs(password="obs-secret-pw", streaming=False).start()
    try:
        env = app_env(sim, fresh(receivers), {"OUTPUT_ALLOWED_URLS": obs.url})
        with running_app(env, session_tmp, "outputs-obs") as app:
            cookie = owner_cookie(app)
            speaker = await open_speaker(app, cookie)
            session_id = speaker.ready["session_id"]
            body = {"type": "obs", "url": obs.url, "password": "obs-secret-pw"}
            status, made = api(app, "POST", f"/api/sessions/{session_id}/outputs", cookie, body)
            assert status == 201, made

            def row():
                return api(app, "GET", f"/api/sessions/{session_id}/outputs", cookie)[1]["outputs"][0]
            deadline = time.monotonic() + 10
            while row()["detail"] != "OBS is not streaming":  # connected, authenticated, told the stream is off
                assert time.monotonic() < deadline, row()
                await asyncio.sleep(0.05)  # polling the API with a deadline: nothing to await across the process
            assert obs.identified >= 1 and obs.auth_failures == 0
            obs.set_streaming(True)
            await speak(speaker, 8.2)
            messages = await speaker.close_stream()
            assert [m["text"] for m in messages if m["type"] == "transcript" and m["final"]] == LINES
            deadline = time.monotonic() + 15
            while len(words([text for _, text in obs.captions])) < len(words(LINES)):
                assert time.monotonic() < deadline, obs.captions
                await asyncio.sleep(0.05)  # the simulator runs in its own thread: polled with a deadline
            sent = [text for _, text in obs.captions]
            assert words(sent) == words(LINES)  # each word once, in order (early parts and their remainders)
            assert all(len(line) <= 32 for text in sent for line in text.split("\n"))  # CEA-608 rows
            assert row()["detail"] is None or row()["state"] in ("active", "stopped")
            shown = json.dumps(api(app, "GET", f"/api/sessions/{session_id}/outputs", cookie)[1])
            log = app.log_text()
        assert "obs-secret-pw" not in shown and "obs-secret-pw" not in log
    finally:
        obs.stop()
