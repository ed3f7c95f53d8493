"""Smaller holes of issue 17, item 8: numbers in Unicode digits, control characters in exports, start-up errors
that must be one line naming the variable, the embedded recognizer's LOCAL_* knobs, and slow or too many
connections (slowloris)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect

from client import collect_until_closed, run_capture, tone_pcm, types
from conftest import ROOT, TEST_DG_KEY, free_port
from test_sharing import http

sys.path.insert(0, str(ROOT))
from webapp import config, protocol  # noqa: E402

# Look like digits, are not ASCII digits: "²" passes str.isdigit() but int() refuses it (a 500 before); int() and
# float() take the other three ("١٢٠٠" is 1200, "1_000" is 1000), so they slipped through as numbers.
UNICODE_NUMBERS = ["²", "١٢٠٠", "1_000", "１２００"]
UNICODE_DECIMALS = ["²", "٠.٧", "0_7", "０.７", " 0.7"]


# ---- numeric query parameters -----------------------------------------------------------------------------

LISTEN_CASES = ([("eot_timeout_ms", v) for v in UNICODE_NUMBERS] + [("sample_rate", v) for v in ("١٦٠٠٠", "16_000")]
                + [("eot_threshold", v) for v in UNICODE_DECIMALS] + [("eager_eot_threshold", v) for v in UNICODE_DECIMALS])


@pytest.mark.parametrize("name, value", LISTEN_CASES)
async def test_unicode_digits_in_listen_query_are_bad_request(flux_app, sim, name, value):
    async with connect(f"{flux_app.ws}/ws/listen?{name}={quote(value)}") as ws:
        messages = await collect_until_closed(ws)
    assert types(messages) == ["error", "closed"], messages
    assert messages[0]["code"] == "bad_request" and name in messages[0]["message"]
    assert sim.records == []  # refused before any upstream connection


def test_ascii_numbers_still_parse():
    p = protocol.parse_params([("eot_timeout_ms", "1200"), ("eot_threshold", "0.8"), ("eager_eot_threshold", ".5"),
                               ("sample_rate", "48000")])
    assert (p.eot_timeout_ms, p.eot_threshold, p.eager_eot_threshold, p.sample_rate) == (1200, 0.8, 0.5, 48000)
    assert protocol.parse_params([("eot_threshold", "1")]).eot_threshold == 1.0


@pytest.mark.parametrize("path", ["/embed", "/embed/snippet"])
@pytest.mark.parametrize("name", ["font_size", "lines"])
@pytest.mark.parametrize("value", ["²", "١٨", "1_8", "１８"])
def test_unicode_digits_in_embed_query_are_400(flux_app, path, name, value):
    status, _, body = http("GET", f"{flux_app.http}{path}?{name}={quote(value)}")
    assert status == 400 and name in body, (status, body[:300])


@pytest.mark.parametrize("name, value", [("eot_timeout_ms", "²"), ("eot_timeout_ms", "١٢٠٠"), ("eot_threshold", "٠.٧"),
                                         ("eager_eot_threshold", "０.５")])
def test_unicode_digits_in_engine_query_are_refused(name, value):
    from webapp.local import engine
    with pytest.raises(engine.BadParams, match=name):
        engine.validate(SimpleNamespace(query_params={"model": "flux-general-en", name: value}))
    assert engine.validate(SimpleNamespace(query_params={"model": "flux-general-en", "eot_timeout_ms": "1200"})) == 16000


@pytest.mark.parametrize("header, seconds", [("²", None), ("٣", None), ("3_0", None), ("3", 3.0), (" 30 ", 30.0),
                                             ("Wed, 21 Oct 2026 07:28:00 GMT", None), (None, None)])
def test_upstream_retry_after_takes_ascii_seconds_only(header, seconds):
    """A Retry-After of "²" (the byte 0xB2 read as Latin-1) passed isdigit() and then float() raised while the
    refused handshake was being mapped to an error code."""
    from webapp.upstreams.base import handshake_error
    err = handshake_error(429, header, "Deepgram")
    assert (err.code, err.retry_after) == ("rate_limited", seconds)


@pytest.mark.parametrize("var, value", [("PORT", "８０８０"), ("PORT", "8_080"), ("MAX_STREAMS", "١٠"),
                                        ("SHARE_TTL", "٣٠"), ("RETENTION_DAYS", "3_0"), ("MAX_CONNECTIONS", "²")])
def test_unicode_digits_in_settings_are_refused(var, value):
    with pytest.raises(config.ConfigError, match=var):
        config.load({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k", var: value})


# ---- start-up errors: one line naming the variable, non-zero exit, no traceback -----------------------------

def _start(env: dict[str, str], tmp: Path, timeout: float = 20.0) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STT_", "DEEPGRAM", "AIGATEWAY", "LOCAL_", "REDIS"))}
    full.update({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": "ws://127.0.0.1:9/v2/listen",
                 "DATA_DIR": str(tmp / "data")}, **env)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "webapp", "--host", "127.0.0.1", "--port", str(free_port())],
                              cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the app did not stop within {timeout} s: it started with {env}") from exc
    return proc, time.monotonic() - started


def _assert_one_line_naming(proc: subprocess.CompletedProcess, var: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and var in lines[0], proc.stderr


@pytest.mark.parametrize("where", ["file as the directory", "under /proc"])
def test_unwritable_data_dir_stops_with_one_line(tmp_path, where):
    if where == "file as the directory":
        (tmp_path / "plain-file").write_text("not a directory")
        data_dir = tmp_path / "plain-file" / "data"
    else:
        data_dir = Path("/proc/caption-relay-data")  # not writable, not even for root
    proc, took = _start({"DATA_DIR": str(data_dir)}, tmp_path)
    _assert_one_line_naming(proc, "DATA_DIR")
    assert took < 10


def test_unreachable_redis_stops_with_one_line_and_no_password(tmp_path):
    url = f"redis://user:hunter2-secret@127.0.0.1:{free_port()}/0"  # a free port: nothing listens
    proc, took = _start({"REDIS_URL": url}, tmp_path)
    _assert_one_line_naming(proc, "REDIS_URL")
    assert "hunter2-secret" not in proc.stderr
    assert took < 10


# ---- LOCAL_* settings of the embedded recognizer ---------------------------------------------------------------

# The embedded recognizer's operator settings (the rest of webapp/local/tuning.py are benchmark flags):
# variable -> (Settings field, Tuning field, bad values)
LOCAL_SETTINGS = {
    "LOCAL_MAX_STREAMS": ("local_max_streams", None, ["abc", "1.5", "-1", "257", "²", "١"]),
    "LOCAL_BEAMS": ("local_beams", "beams", ["abc", "1.5", "-1", "9", "²", "١"]),
    "LOCAL_CONTEXT_SECONDS": ("local_context_seconds", "context_seconds", ["abc", "-1", "nan", "inf", "1e9", "²", "٠.٢"]),
    "LOCAL_FINAL_DECODER": ("local_final_decoder", "final_decoder", ["abc", "1", "whisper2", "moonshine\x00"]),
}
LOCAL_KNOBS = list(LOCAL_SETTINGS)


def test_every_local_setting_is_validated_and_reaches_the_recognizer():
    """Each LOCAL_* variable named in webapp/ is validated by config.load, and its default there is the recognizer's
    (a worker takes its tuning from the pool, never from the environment)."""
    named = set()
    for path in (ROOT / "webapp").rglob("*.py"):
        named |= set(re.findall(r'"(LOCAL_[A-Z_]+)"', path.read_text()))
    assert named == set(LOCAL_SETTINGS)
    from webapp.local.tuning import Tuning
    tuned = Tuning.from_settings(config.load({"LOCAL_BEAMS": "2", "LOCAL_CONTEXT_SECONDS": "0"}))
    assert (tuned.beams, tuned.context_seconds) == (2, 0.0)
    for var, (field, tuning_field, _) in LOCAL_SETTINGS.items():
        if tuning_field is not None:
            assert getattr(config.Settings, field) == getattr(Tuning, tuning_field), var
    assert "LOCAL_" not in (ROOT / "webapp" / "local" / "worker.py").read_text()


@pytest.mark.parametrize("var", LOCAL_KNOBS)
def test_bad_local_values_are_refused(var):
    field, _, bad = LOCAL_SETTINGS[var]
    for value in bad:
        with pytest.raises(config.ConfigError, match=var):
            config.load({var: value})
    default = getattr(config.Settings, field)
    assert getattr(config.load({var: ""}), field) == default
    if isinstance(default, str):
        assert getattr(config.load({var: default.upper()}), field) == default
    else:
        assert getattr(config.load({var: str(int(default))}), field) == int(default)


@pytest.mark.parametrize("var", LOCAL_KNOBS)
def test_bad_local_value_stops_the_app_with_one_line(var, tmp_path):
    proc, took = _start({var: "abc"}, tmp_path)
    _assert_one_line_naming(proc, var)
    assert took < 10


@pytest.mark.parametrize("var", ["LOCAL_ONNX_INTERIMS", "LOCAL_END_SILENCE", "LOCAL_BEAM"])
def test_a_retired_or_misspelt_local_variable_stops_the_app(var, tmp_path):
    """The recognizer's experiment knobs are benchmark flags now: one left in the environment (or a misspelt
    setting) would silently change nothing, so it stops the app naming it and what the settings are."""
    with pytest.raises(config.ConfigError, match=f"{var}: not a setting.*LOCAL_MAX_STREAMS, LOCAL_BEAMS"):
        config.load({var: "0"})
    proc, _ = _start({var: "0"}, tmp_path)
    _assert_one_line_naming(proc, var)


# ---- exports: one line per caption text, no control characters ------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from webapp import exports  # noqa: E402

NASTY_TURNS = [
    {"turn": 0, "text": "hello wor\n\nld\x07 again", "start": 0.0, "end": 2.0, "words": [
        {"word": "hello", "start": 0.0, "end": 0.5, "confidence": 0.9},
        {"word": "wor\n\nld\x07", "start": 0.5, "end": 1.2, "confidence": 0.9},
        {"word": "again\r\n", "start": 1.2, "end": 2.0, "confidence": 0.9}]},
    {"turn": 1, "text": "bell\x07 \x1b[31mred\u2028line\x00\t\x85end \u200dok", "start": 3.0, "end": 5.0, "words": []},
]


def test_line_breaks_and_controls_in_words_give_one_clean_cue():
    """Before: "wor\\n\\nld" put a blank line inside cue 1 (a new SRT cue for every player), and BEL, ESC, NUL and
    U+2028 reached the .txt/.srt/.vtt files."""
    # (the two turns are one cue and one line: the first ends mid-sentence, the next follows within 1.5 s)
    assert exports.to_srt(NASTY_TURNS) == (
        "1\n00:00:00,000 --> 00:00:05,000\nhello wor ld again bell\n[31mred line end \u200dok\n")
    assert exports.to_vtt(NASTY_TURNS) == (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:05.000\nhello wor ld again bell\n[31mred line end \u200dok\n")
    assert exports.to_txt(NASTY_TURNS) == "hello wor ld again bell [31mred line end \u200dok\n"
    doc = json.loads(exports.to_json({"id": "s"}, NASTY_TURNS))
    assert [w["word"] for w in doc["turns"][0]["words"]] == ["hello", "wor ld", "again"]
    assert doc["turns"][1]["text"] == "bell [31mred line end \u200dok" and doc["turns"][1]["words"] == []
    # times and confidences are kept as they were
    assert doc["turns"][0]["words"][1] == {"word": "wor ld", "start": 0.5, "end": 1.2, "confidence": 0.9}


CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")  # all but "\n", the files' own


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=12), max_size=5))
def test_no_export_carries_controls_or_stray_lines(raw_turns):
    turns, t = [], 0.0
    for index, words in enumerate(raw_turns):
        ws = [{"word": w, "start": t + i * 0.3, "end": t + i * 0.3 + 0.2, "confidence": 1.0} for i, w in enumerate(words)]
        turns.append({"turn": index, "text": " ".join(words), "start": t, "end": t + 0.3 * len(words), "words": ws})
        t += 0.3 * len(words) + 1
    srt, vtt, txt = exports.to_srt(turns), exports.to_vtt(turns), exports.to_txt(turns)
    for text in (srt, vtt, txt):
        assert not CONTROL.search(text), repr(text)
        text.encode("utf-8")  # no lone surrogate: the file can be written
    for block in srt.rstrip("\n").split("\n\n") if srt else []:  # each cue: number, timing, 1-2 non-empty lines
        lines = block.split("\n")
        assert re.fullmatch(r"\d+", lines[0]) and " --> " in lines[1] and 1 <= len(lines[2:]) <= 2 and all(lines[2:]), block
    assert "\n\n\n" not in srt and "\n\n\n" not in vtt
    assert len(txt.splitlines()) <= len(turns)
    out = exports.to_json({"id": "s"}, turns)
    out.encode("utf-8")
    assert len(json.loads(out)["turns"]) == len(turns)


async def test_exports_of_a_live_session_are_clean(flux_app, sim):
    """The same through the app: the recognizer's words carry a line break and controls; the share link's exports
    are clean."""
    from test_sharing import start_speaker
    sim.reset(script=[["Hello", "wor\nld\x07", "again\u2028now."]])
    speaker, token = await start_speaker(flux_app)
    await speaker.send_audio(2.0)
    await speaker.close_stream()
    status, _, srt = http("GET", f"{flux_app.http}/s/{token}/transcript.srt")
    assert status == 200 and srt == "1\n" + srt.split("\n")[1] + "\nHello wor ld again now.\n", repr(srt)
    status, _, txt = http("GET", f"{flux_app.http}/s/{token}/transcript.txt")
    assert status == 200 and txt == "Hello wor ld again now.\n", repr(txt)
    status, _, vtt = http("GET", f"{flux_app.http}/s/{token}/transcript.vtt")
    assert status == 200 and not CONTROL.search(vtt) and vtt.count(" --> ") == 1, repr(vtt)
    status, _, body = http("GET", f"{flux_app.http}/s/{token}/transcript.json")
    assert [w["word"] for w in json.loads(body)["turns"][0]["words"]] == ["Hello", "wor ld", "again now."]


# ---- slowloris: slow requests are cut, surplus connections refused, /healthz answers ------------------------------

import asyncio  # noqa: E402
import urllib.request  # noqa: E402

from websockets.exceptions import InvalidStatus  # noqa: E402

from conftest import running_app  # noqa: E402

REQUEST_TIMEOUT = 1  # seconds (the default is 10): the tests wait it out


@pytest.fixture(scope="module")
def guarded_app(simulator, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "0", "REQUEST_TIMEOUT": str(REQUEST_TIMEOUT), "MAX_CONNECTIONS": "16"}
    with running_app(env, session_tmp, "guarded") as app:
        yield app
        # cut requests are no application errors (a login cut mid-body raised ClientDisconnect)
        assert "Exception in ASGI application" not in app.log_text()


def _healthz_seconds(app) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"{app.http}/healthz", timeout=5) as r:
        assert r.status == 200
    return time.monotonic() - started


async def _trickle(port: int, head: bytes, drip: bytes, every: float = 0.2, limit: float = 6.0) -> tuple[float, bytes]:
    """Send `head`, then a byte of `drip` every `every` seconds until the server closes; (seconds open, reply)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head)
    reply = b""
    try:
        for i in range(int(limit / every)):
            try:
                chunk = await asyncio.wait_for(reader.read(4096), every)
            except asyncio.TimeoutError:
                if drip:
                    writer.write(drip[i % len(drip):i % len(drip) + 1])  # still "sending its request"
                continue
            if not chunk:
                break  # closed by the server
            reply += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, reply


SLOW_REQUESTS = [
    ("nothing at all", b"", b""),
    ("request line, byte by byte", b"GE", b"T / HTTP/1.1\r\n"),
    ("headers, byte by byte", b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("body, byte by byte", b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\ntoken=", b"a"),
    ("second request on a keep-alive connection", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n", b"X-Slow: a"),
]


@pytest.mark.parametrize("label, head, drip", SLOW_REQUESTS, ids=[r[0] for r in SLOW_REQUESTS])
async def test_slow_requests_are_cut_after_the_request_timeout(guarded_app, label, head, drip):
    """Before: uvicorn bounded only idle keep-alive time, and a request trickling in kept its connection for ever."""
    took, reply = await _trickle(guarded_app.port, head, drip)
    assert took < REQUEST_TIMEOUT + 1.5, f"{label}: still open after {took:.1f} s"
    assert took >= REQUEST_TIMEOUT - 0.2 or reply.startswith(b"HTTP/1.1 200"), took  # not cut before its time
    assert b"408 Request Timeout" in reply, reply[-300:]


async def test_many_slow_clients_leave_healthz_and_captions_working(guarded_app, sim):
    """12 slowloris sockets (under the limit of 16) at once: /healthz answers in under a second meanwhile, a capture
    session longer than the request timeout runs to its end, and every slow socket is closed in time."""
    slow = [asyncio.create_task(_trickle(guarded_app.port, b"GET / HTTP/1.1\r\n", b"X-a: b")) for _ in range(12)]
    await asyncio.sleep(0.3)  # let them connect: the point is /healthz *while* they hold their sockets
    took = await asyncio.to_thread(_healthz_seconds, guarded_app)
    assert took < 1.0, took
    messages = await run_capture(f"{guarded_app.ws}/ws/listen", tone_pcm(3.0), pace=0.08 * 0.8)  # ~2.5 s
    assert messages[-1] == {"type": "closed", "reason": "client_closed"}, messages[-3:]
    assert [m["text"] for m in messages if m["type"] == "transcript" and m["final"]], messages
    results = await asyncio.gather(*slow)
    assert all(t < REQUEST_TIMEOUT + 1.5 and b"408" in r for t, r in results), [(round(t, 2), r[:30]) for t, r in results]


async def test_connections_over_the_limit_are_refused_and_healthz_still_answers(guarded_app, sim):
    """MAX_CONNECTIONS=16: with 15 capture sockets open, one more WebSocket and plain pages get 503 at once;
    /healthz still answers; once sockets close, new ones are accepted again."""
    from websockets.asyncio.client import connect as ws_connect
    sockets = []
    try:
        for _ in range(15):
            ws = await ws_connect(f"{guarded_app.ws}/ws/listen")
            assert json.loads(await ws.recv())["type"] == "ready"
            sockets.append(ws)
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(f"{guarded_app.ws}/ws/listen", open_timeout=5)
        assert refused.value.response.status_code == 503
        status, _, _ = await asyncio.to_thread(http, "GET", f"{guarded_app.http}/")
        assert status == 503
        assert await asyncio.to_thread(_healthz_seconds, guarded_app) < 1.0
    finally:
        for ws in sockets:
            await ws.close()
    for _ in range(50):  # the server sees the closes a moment later
        if (await asyncio.to_thread(http, "GET", f"{guarded_app.http}/"))[0] == 200:
            break
        await asyncio.sleep(0.1)  # polling the server's count of open connections: no event reaches the client
    messages = await run_capture(f"{guarded_app.ws}/ws/listen", tone_pcm(0.5))
    assert messages[0]["type"] == "ready" and messages[-1]["type"] == "closed"
