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
    from webapp import engine
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


# ---- LOCAL_* knobs of the embedded recognizer ---------------------------------------------------------------

LOCAL_KNOBS = ["LOCAL_BEAMS", "LOCAL_CONTEXT_PAUSE", "LOCAL_CONTEXT_SECONDS", "LOCAL_CUT_FROM_SECONDS", "LOCAL_CUT_MIN_SECONDS",
               "LOCAL_CUT_PAUSE", "LOCAL_END_SILENCE", "LOCAL_INTERIM_SHARE", "LOCAL_ONNX_INTERIMS", "LOCAL_PAD_SECONDS",
               "LOCAL_QUIET_SILENCE", "LOCAL_SPEC_REDOS", "LOCAL_SPEC_SILENCE", "LOCAL_STOP_OVERTAKEN", "LOCAL_STREAM_NICE",
               "LOCAL_TAIL_QUIET", "LOCAL_TRACE"]


def test_every_local_knob_of_the_recognizer_is_validated():
    """Each LOCAL_* variable the recognizer reads is in config.LOCAL_TUNING, with the default the recognizer names."""
    source = (ROOT / "webapp" / "recognizer.py").read_text()
    read = dict(re.findall(r'_env_float\("(LOCAL_[A-Z_]+)", ([0-9.]+)\)', source))
    named = set(re.findall(r'"(LOCAL_[A-Z_]+)"', source))
    assert named - {"LOCAL_MAX_STREAMS"} == set(LOCAL_KNOBS) == set(config.LOCAL_TUNING)
    assert len(read) >= 15
    for var, default in read.items():
        assert config.LOCAL_TUNING[var][1] == float(default), var


BAD_LOCAL = {
    "seconds": ["abc", "-1", "nan", "inf", "1e9", "²", "٠.٢"],
    "number": ["abc", "-1", "nan", "1000", "²"],
    "whole": ["abc", "1.5", "-1", "99", "²", "١"],
    "flag": ["abc", "2", "yes", "-1", "²"],
}


@pytest.mark.parametrize("var", LOCAL_KNOBS)
def test_bad_local_values_are_refused(var):
    kind = config.LOCAL_TUNING[var][0]
    for value in BAD_LOCAL[kind]:
        with pytest.raises(config.ConfigError, match=var):
            config.load({var: value})
    default = config.LOCAL_TUNING[var][1]
    assert config.local_tuning({var: ""})[var] == default
    assert config.local_tuning({var: str(int(default))})[var] == int(default)


@pytest.mark.parametrize("var", LOCAL_KNOBS)
def test_bad_local_value_stops_the_app_with_one_line(var, tmp_path):
    proc, took = _start({var: "abc"}, tmp_path)
    _assert_one_line_naming(proc, var)
    assert took < 10


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
    assert exports.to_srt(NASTY_TURNS) == (
        "1\n00:00:00,000 --> 00:00:02,000\nhello wor ld again\n\n"
        "2\n00:00:03,000 --> 00:00:05,000\nbell [31mred line end \u200dok\n")
    assert exports.to_vtt(NASTY_TURNS) == (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.000\nhello wor ld again\n\n"
        "2\n00:00:03.000 --> 00:00:05.000\nbell [31mred line end \u200dok\n")
    assert exports.to_txt(NASTY_TURNS) == "hello wor ld again\nbell [31mred line end \u200dok\n"
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
