"""The relay against a real uvicorn app process and the upstream simulator, through real sockets."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client import FRAME, collect_until_closed, finals, frames, run_capture, tone_pcm, types
from conftest import ROOT, TEST_AIG_KEY, TEST_DG_KEY, running_app
from simulator import DEFAULT_SCRIPT

SCRIPT_FINALS = [" ".join(turn) for turn in DEFAULT_SCRIPT]


def assert_turn_order(messages: list[dict]) -> None:
    """ready first, closed last; per turn StartOfTurn < interims < final < EndOfTurn; indices increase."""
    assert messages[0]["type"] == "ready"
    assert messages[-1]["type"] == "closed"
    open_turn, last_index, last_interim = None, -1, ""
    for m in messages[1:-1]:
        if m["type"] == "turn" and m["event"] == "StartOfTurn":
            assert open_turn is None and m["turn"] == last_index + 1
            open_turn, last_interim = m["turn"], ""
        elif m["type"] == "transcript":
            assert m["turn"] == open_turn, m
            assert m["start"] <= m["end"]
            if not m["final"]:
                assert m["text"] != last_interim  # interims only when the text changed
                last_interim = m["text"]
        elif m["type"] == "turn" and m["event"] == "EndOfTurn":
            assert m["turn"] == open_turn
            last_index, open_turn = open_turn, None
    assert open_turn is None


async def test_events_arrive_normalized_and_in_order(flux_app, sim):
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(4.0))
    assert_turn_order(messages)
    assert messages[0]["backend"] == "deepgram" and messages[0]["sample_rate"] == 16000
    assert finals(messages) == SCRIPT_FINALS
    first_final = next(m for m in messages if m["type"] == "transcript" and m["final"])
    assert [w["word"] for w in first_final["words"]] == DEFAULT_SCRIPT[0]
    assert messages[-1] == {"type": "closed", "reason": "client_closed"}


@pytest.mark.parametrize("app_name", ["flux_app", "gateway_app"])
@pytest.mark.parametrize("query, interim_words", [("", False), ("?interim_words=true", True), ("?interim_words=false", False)])
async def test_interims_carry_words_only_when_asked_finals_always(request, sim, app_name, query, interim_words):
    app = request.getfixturevalue(app_name)
    messages = await run_capture(f"{app.ws}/ws/listen{query}", tone_pcm(4.0))
    assert_turn_order(messages)
    interims = [m for m in messages if m["type"] == "transcript" and not m["final"]]
    finals_ = [m for m in messages if m["type"] == "transcript" and m["final"]]
    assert interims and [m["text"] for m in finals_] == SCRIPT_FINALS
    for m in finals_:  # a final's words: ours, normalized, in the turn's window
        assert [w["word"] for w in m["words"]] == m["text"].split()
        assert all(set(w) == {"word", "start", "end", "confidence"} for w in m["words"])
        assert all(m["start"] - 0.5 <= w["start"] <= w["end"] <= m["end"] + 0.01 for w in m["words"])
    if interim_words:
        assert all([w["word"] for w in m["words"]] == m["text"].split() for m in interims)
        assert all(set(w) == {"word", "start", "end", "confidence"} for m in interims for w in m["words"])
    else:
        assert all(m["words"] == [] for m in interims)


async def test_every_audio_byte_reaches_upstream_in_order_with_auth(flux_app, sim):
    pcm = tone_pcm(3.0)
    await run_capture(f"{flux_app.ws}/ws/listen", pcm)
    rec = await sim.until(lambda: sim.records and sim.records[0].closed and sim.records[0])
    assert bytes(rec.audio[: len(pcm)]) == pcm
    assert set(rec.audio[len(pcm):]) <= {0}  # anything after is the relay's silence padding
    assert rec.headers.get("Authorization") == f"Token {TEST_DG_KEY}"
    query = dict(rec.query)
    assert query == {"model": "flux-general-en", "encoding": "linear16", "sample_rate": "16000"}
    assert rec.controls[-1] == "CloseStream"
    assert "KeepAlive" not in rec.controls  # invalid on Flux


async def test_audio_sent_before_upstream_is_ready_is_not_lost(flux_app, sim):
    """The client sends 2 s at once, before `ready`; the simulator greets late; every byte still arrives."""
    sim.faults.greet_delay = 0.8
    pcm = tone_pcm(3.0)
    async with connect(f"{flux_app.ws}/ws/listen", compression=None) as ws:
        reader = asyncio.create_task(collect_until_closed(ws))
        for chunk in frames(pcm):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await reader
    assert messages[0]["type"] == "ready"
    rec = sim.records[0]
    assert bytes(rec.audio[: len(pcm)]) == pcm
    assert finals(messages)[0] == SCRIPT_FINALS[0]


async def test_closestream_finalizes_the_open_turn(flux_app, sim):
    # 1.2 s = four words of the first turn heard, turn still open when the user stops.
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(1.2))
    assert finals(messages) == ["Hello world, this is"]
    assert sim.records[0].controls[-2:] == ["ForceEndTurn", "CloseStream"]
    assert [m["event"] for m in messages if m["type"] == "turn"] == ["StartOfTurn", "EndOfTurn"]


async def test_finalize_ends_the_turn_and_the_session_goes_on(flux_app, sim):
    async def finalize_then_more(ws):
        await ws.send(json.dumps({"type": "Finalize"}))
        for chunk in frames(tone_pcm(3.0)):
            await ws.send(chunk)
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(0.9), before_close=finalize_then_more)
    # The rest of the interrupted sentence becomes a turn of its own, as a recognizer would hear it.
    assert finals(messages) == ["Hello world, this", "is a caption test.", SCRIPT_FINALS[1]]
    assert sim.records[0].controls[0] == "ForceEndTurn"
    assert_turn_order(messages)


async def test_silence_keeps_an_open_flux_turn_alive(flux_app, sim):
    """Microphone pauses inside a turn: the relay sends zero PCM so Flux can still end the turn."""
    pcm = tone_pcm(1.0)

    async def pause(ws):
        await sim.until(lambda: sim.records and len(sim.records[0].audio) >= len(pcm) + 2 * FRAME, timeout=5)
    await run_capture(f"{flux_app.ws}/ws/listen", pcm, before_close=pause)
    audio = sim.records[0].audio
    assert bytes(audio[: len(pcm)]) == pcm
    assert len(audio) > len(pcm) and set(audio[len(pcm):]) == {0}


async def test_gateway_results_shape(gateway_app, sim):
    pcm = tone_pcm(4.0)
    messages = await run_capture(f"{gateway_app.ws}/ws/listen?keyterm=Caption+Relay", pcm)
    assert_turn_order(messages)
    assert finals(messages) == SCRIPT_FINALS
    rec = sim.records[0]
    assert rec.path == "/v1/realtime"
    assert rec.headers.get("Authorization") == f"Bearer {TEST_AIG_KEY}"
    assert dict(rec.query) == {"model": "deepgram/flux", "encoding": "linear16", "sample_rate": "16000",
                               "interim_results": "true", "keyterm": "Caption Relay"}
    assert all(TEST_AIG_KEY not in v for _, v in rec.query)
    assert bytes(rec.audio) == pcm
    assert rec.controls[-1] == "CloseStream"


async def test_gateway_turninfo_passthrough(gateway_app, sim):
    sim.gateway_shape = "turninfo"
    messages = await run_capture(f"{gateway_app.ws}/ws/listen", tone_pcm(4.0))
    assert_turn_order(messages)
    assert finals(messages) == SCRIPT_FINALS
    assert sim.records[0].controls[-1] == "CloseStream"


async def test_gateway_keepalive_through_silence(gateway_app, sim):
    async def pause(ws):
        await sim.until(lambda: sim.records and "KeepAlive" in sim.records[0].controls, timeout=10)
    await run_capture(f"{gateway_app.ws}/ws/listen", tone_pcm(0.4), before_close=pause)
    assert "KeepAlive" in sim.records[0].controls


@pytest.mark.parametrize("status, retry_after, code, retryable, seconds", [
    (401, None, "upstream_auth", False, None),
    (402, None, "upstream_payment", False, None),
    (404, None, "upstream_not_found", False, None),
    (429, "7", "rate_limited", True, 7),
    (503, None, "upstream_unavailable", True, None),
    (500, None, "upstream_unavailable", True, None),
])
async def test_handshake_failures_map_to_error_codes(flux_app, gateway_app, sim, status, retry_after, code, retryable, seconds):
    for app in (flux_app, gateway_app):
        sim.reset()
        sim.faults.handshake_status, sim.faults.retry_after = status, retry_after
        messages = await run_capture(f"{app.ws}/ws/listen", tone_pcm(0.4), close=False)
        assert types(messages) == ["error", "closed"], messages
        err = messages[0]
        assert (err["code"], err["retryable"], err.get("retry_after")) == (code, retryable, seconds)
        assert err["message"]
        assert messages[1]["reason"] == "upstream_error"


async def test_upstream_unreachable_is_retryable(session_tmp):
    from conftest import free_port
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k" * 20, "DEEPGRAM_URL": f"ws://127.0.0.1:{free_port()}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "0"}
    with running_app(env, session_tmp, "unreachable") as app:
        messages = await run_capture(f"{app.ws}/ws/listen", tone_pcm(0.2), close=False)
    assert types(messages) == ["error", "closed"]
    assert messages[0]["code"] == "upstream_unavailable" and messages[0]["retryable"] is True


async def test_upstream_error_message_midstream(flux_app, sim):
    sim.faults.error_after_bytes = 10 * FRAME
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(2.0), close=False)
    err = [m for m in messages if m["type"] == "error"]
    assert err and err[0]["code"] == "upstream_error" and err[0]["message"]
    assert "simulated upstream failure" not in err[0]["message"]  # our words, never the provider's
    assert messages[-1] == {"type": "closed", "reason": "upstream_error"}


async def test_upstream_drop_midstream_is_reported(flux_app, sim):
    sim.faults.drop_after_bytes = 10 * FRAME
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(2.0), close=False)
    err = [m for m in messages if m["type"] == "error"]
    assert err and err[0]["code"] == "upstream_unavailable" and err[0]["retryable"] is True
    assert messages[-1]["type"] == "closed"


# ---- bad input from the browser: an error event, the frame is dropped, the session survives ----

BAD_INPUTS = [
    ("frame over 64 KiB", b"\x01\x00" * (32 * 1024 + 1), "frame_too_large"),
    ("odd byte count", b"\x01\x00\x02", "bad_audio"),
    ("empty binary frame", b"", "bad_audio"),
    ("text that is not JSON", "hello", "bad_message"),
    ("invalid UTF-8 lookalike JSON", "{\"type\": \"\udcff\"}".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "unknown_message"),
    ("JSON that is not an object", "[1, 2, 3]", "unknown_message"),
    ("unknown message type", json.dumps({"type": "Configure"}), "unknown_message"),
    ("deeply nested JSON", "[" * 3000 + "]" * 3000, "bad_message"),
    ("huge text message", json.dumps({"type": "Finalize", "pad": "x" * 10000}), "bad_message"),
]


@pytest.mark.parametrize("label, payload, code", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_gets_an_error_and_the_session_survives(flux_app, sim, label, payload, code):
    pcm = tone_pcm(4.0)

    async with connect(f"{flux_app.ws}/ws/listen", compression=None, max_size=None) as ws:
        reader = asyncio.create_task(collect_until_closed(ws))
        for i, chunk in enumerate(frames(pcm)):
            if i == 5:
                await ws.send(payload)
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await reader
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == [code]
    assert errors[0]["retryable"] is False and errors[0]["message"]
    assert finals(messages) == SCRIPT_FINALS  # the session carried on
    assert bytes(sim.records[0].audio[: len(pcm)]) == pcm  # nothing of the bad frame reached upstream


@pytest.mark.parametrize("query, needle", [
    ("sample_rate=12345", "sample_rate"),
    ("encoding=mp3", "encoding"),
    ("eot_threshold=2", "eot_threshold"),
    ("eot_threshold=nan", "eot_threshold"),
    ("eager_eot_threshold=0.8&eot_threshold=0.6", "eager_eot_threshold"),
    ("eot_timeout_ms=10", "eot_timeout_ms"),
    ("keyterm=" + "x" * 101, "keyterm"),
    ("&".join(["keyterm=a"] * 101), "keyterms"),
    ("model=nova-3", "unknown parameter"),
    ("sample_rate=16000&sample_rate=8000", "twice"),
    ("interim_words=yes", "interim_words"),
])
async def test_invalid_query_is_refused_before_any_upstream_connection(flux_app, sim, query, needle):
    async with connect(f"{flux_app.ws}/ws/listen?{query}") as ws:
        messages = await collect_until_closed(ws)
    assert types(messages) == ["error", "closed"]
    assert messages[0]["code"] == "bad_request" and needle in messages[0]["message"]
    assert sim.records == []


async def test_query_values_are_reencoded_never_pasted(flux_app, sim):
    nasty = "a&model=nova-3&x=1"
    url = f"{flux_app.ws}/ws/listen?sample_rate=48000&keyterm=" + "a%26model%3Dnova-3%26x%3D1" + "&keyterm=ok&eot_threshold=0.8"
    await run_capture(url, tone_pcm(0.4))
    rec = sim.records[0]
    assert rec.query == [("model", "flux-general-en"), ("encoding", "linear16"), ("sample_rate", "48000"),
                         ("eot_threshold", "0.8"), ("keyterm", nasty), ("keyterm", "ok")]


@pytest.mark.parametrize("origin, allowed", [
    ("http://evil.example", False),
    ("http://127.0.0.1.evil.example", False),
    ("null", False),
    ("http://allowed.example", True),
    (None, True),  # not a browser
])
async def test_origin_check(flux_app, sim, origin, allowed):
    url = f"{flux_app.ws}/ws/listen"
    if allowed:
        messages = await run_capture(url, tone_pcm(0.2), origin=origin)
        assert messages[0]["type"] == "ready"
    else:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url, origin=origin):
                pass
        assert exc.value.response.status_code == 403
        assert sim.records == []


async def test_same_origin_page_is_allowed(flux_app, sim):
    messages = await run_capture(f"{flux_app.ws}/ws/listen", tone_pcm(0.2), origin=flux_app.http)
    assert messages[0]["type"] == "ready"


def test_key_never_leaves_the_server(flux_app, gateway_app, sim):
    for app, key in ((flux_app, TEST_DG_KEY), (gateway_app, TEST_AIG_KEY)):
        messages = asyncio.run(run_capture(f"{app.ws}/ws/listen", tone_pcm(2.0)))
        assert key not in json.dumps(messages)
        pages = ["/", "/healthz", "/static/app.js", "/static/worklet.js", "/static/pcm.js", "/static/style.css"]
        for path in pages:
            try:
                body = urllib.request.urlopen(app.http + path, timeout=5).read().decode()
            except urllib.error.HTTPError as exc:
                body = exc.read().decode()
            assert key not in body, path
        assert app.log_text().strip(), "the app logs"
        assert key not in app.log_text()
        for line in app.log_text().splitlines():
            if line.startswith("{"):
                json.loads(line)  # structured


def test_page_security_headers(flux_app):
    with urllib.request.urlopen(flux_app.http + "/", timeout=5) as r:
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        page = r.read().decode()
    assert "alert(" not in page
    assert "alert(" not in (ROOT / "static" / "app.js").read_text()


async def test_access_token(simulator, session_tmp):
    simulator.reset()
    token = "letmein-0123456789"
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "ACCESS_TOKEN": token}
    with running_app(env, session_tmp, "token") as app:
        url = f"{app.ws}/ws/listen"
        refused = await run_capture(url, b"", close=False)
        assert types(refused) == ["error", "closed"] and refused[0]["code"] == "unauthorized"
        assert simulator.records == []
        ok = await run_capture(url, tone_pcm(0.2), headers={"Authorization": f"Bearer {token}"})
        assert ok[0]["type"] == "ready"
        forged = await run_capture(url, b"", headers={"Cookie": "cr_login=forged.value.sig"}, close=False)
        assert forged[0]["code"] == "unauthorized"

        page = urllib.request.urlopen(app.http + "/", timeout=5).read().decode()
        assert 'name="token"' in page and token not in page
        bad = urllib.request.Request(app.http + "/login", data=b"token=wrong", method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(bad, timeout=5)
        assert exc.value.code == 401

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None
        opener = urllib.request.build_opener(NoRedirect)
        good = urllib.request.Request(app.http + "/login", data=f"token={token}".encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(good, timeout=5)
        assert exc.value.code == 303
        cookie = exc.value.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and token not in cookie
        via_cookie = await run_capture(url, tone_pcm(0.2), headers={"Cookie": cookie.split(";")[0]})
        assert via_cookie[0]["type"] == "ready"
        assert token not in app.log_text()


@pytest.mark.parametrize("env, needle", [
    ({"STT_BACKEND": "whisper"}, "STT_BACKEND"),
    ({"STT_BACKEND": "deepgram"}, "DEEPGRAM_API_KEY"),
    ({"STT_BACKEND": "aigateway"}, "AIGATEWAY_API_KEY"),
    ({"DEEPGRAM_API_KEY": "k", "DEEPGRAM_URL": "https://x.example/v2/listen"}, "DEEPGRAM_URL"),
    ({"DEEPGRAM_API_KEY": "k", "DEEPGRAM_URL": "wss://x.example/v2/listen?model=x"}, "query"),
    ({"ALLOWED_ORIGINS": "example.org"}, "ALLOWED_ORIGINS"),
    ({"PORT": "eighty"}, "PORT"),
    ({"SLOW_CLIENT_SECONDS": "0"}, "SLOW_CLIENT_SECONDS"),
])
def test_configuration_errors_are_clear(env, needle, tmp_path):
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("STT_", "DEEPGRAM", "AIGATEWAY"))}
    proc = subprocess.run([sys.executable, "-m", "webapp"], cwd=ROOT, env={**clean, "DATA_DIR": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "configuration error" in proc.stderr and needle in proc.stderr


@pytest.mark.parametrize("env, backend", [
    ({}, "local"),
    ({"AIGATEWAY_API_KEY": "sk-aig-SECRET1"}, "aigateway"),
    ({"DEEPGRAM_API_KEY": "SECRET2"}, "deepgram"),
    ({"DEEPGRAM_API_KEY": "SECRET2", "AIGATEWAY_API_KEY": "SECRET1"}, "local"),
    ({"DEEPGRAM_API_KEY": "SECRET2", "AIGATEWAY_API_KEY": "SECRET1", "STT_BACKEND": "aigateway"}, "aigateway"),
])
def test_backend_defaults(env, backend):
    from webapp import config
    settings = config.load(env)
    assert settings.backend == backend
    assert settings.model == config.DEFAULT_MODELS[backend]
    assert "SECRET" not in repr(settings)  # keys are kept out of repr


async def test_audio_is_transcribed_even_if_the_page_leaves_before_ready(flux_app, sim):
    """The browser sends 3 s and goes away while the upstream is still connecting: nothing said is dropped."""
    sim.faults.greet_delay = 0.5
    pcm = tone_pcm(3.0)
    async with connect(f"{flux_app.ws}/ws/listen", compression=None) as ws:
        for chunk in frames(pcm):
            await ws.send(chunk)
    rec = await sim.until(lambda: sim.records and sim.records[0].closed and sim.records[0])
    assert bytes(rec.audio[: len(pcm)]) == pcm
    ends = [m for m in rec.sent if m.get("event") == "EndOfTurn"]
    assert ends and ends[0]["transcript"] == SCRIPT_FINALS[0]
