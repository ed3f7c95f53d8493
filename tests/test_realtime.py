"""/v1/realtime, the seed's realtime socket on the relay, through a real app process and real clients:

- the seed's own JavaScript snippet (tests/seed_client.mjs: node's WebSocket, or headless Chromium where node
  has none, as Debian 12's node 18; SEED_SNIPPET_IN=chromium forces it) and a Python client written from the
  seed's description (websockets), on every backend: the embedded recognizer with real recorded speech, and
  deepgram / aigateway through the upstream simulator (tests/simulator.py);
- interim and final `Results`, `Finalize` -> a final now, `CloseStream` -> the remaining finals, `Metadata`, a
  clean close; the session is recorded (its share link's JSON export has the turns);
- `KeepAlive` holds an idle socket open past IDLE_TIMEOUT; the key (`?api_key=`, Bearer, Token) and its absence;
  bad parameters; languages (Flux multi with hints through the simulator; the local recognizer refuses others).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client import frames, run_capture, tone_pcm
from conftest import ROOT, TEST_DG_KEY, running_app
from simulator import DEFAULT_SCRIPT
from speech import clip, normalize, wer

SEED_QUERY = "model=deepgram/flux&encoding=linear16&sample_rate=16000&interim_results=true"
SCRIPT_FINALS = [" ".join(turn) for turn in DEFAULT_SCRIPT]
RT = 0.08  # 80 ms frames at real-time pace


def noise(seconds: float) -> bytes:
    return np.random.default_rng(3).normal(0, 20, int(seconds * 16000)).astype("<i2").tobytes()


class SeedClient:
    """A realtime client written from the seed's description: linear16 binary frames in, JSON messages out
    (`Results`, `Metadata`, errors), text commands KeepAlive / Finalize / CloseStream."""

    def __init__(self, ws):
        self.ws = ws
        self.messages: list[dict] = []
        self.arrived = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
                self.arrived.set()
        except ConnectionClosed:
            pass
        self.arrived.set()

    async def send_audio(self, pcm: bytes, pace: float = 0.0) -> None:
        for chunk in frames(pcm):
            await self.ws.send(chunk)
            if pace:
                await asyncio.sleep(pace)  # real-time pacing of the audio, not synchronisation

    async def command(self, kind: str) -> None:
        await self.ws.send(json.dumps({"type": kind}))

    async def until(self, predicate, timeout: float = 15.0, after: int = 0):
        """The first message (from index `after` on) that satisfies predicate, awaiting each arrival (bounded)."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for m in self.messages[seen:]:
                if predicate(m):
                    return m
            seen = len(self.messages)
            if self.reader.done():
                raise AssertionError(f"closed before it came; got {self.messages[-5:]}")
            left = deadline - time.monotonic()
            assert left > 0, f"not within {timeout} s; got {self.messages[-5:]}"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                raise AssertionError(f"not within {timeout} s; got {self.messages[-5:]}") from None

    async def ended(self, timeout: float = 20.0) -> tuple[list[dict], int | None]:
        await asyncio.wait_for(self.reader, timeout)
        return self.messages, self.ws.close_code


async def seed_session(url: str, pcm: bytes, headers: dict | None = None, pace: float = 0.0):
    """Stream `pcm`, then CloseStream: every message and the close code."""
    async with connect(url, additional_headers=headers or {}, compression=None) as ws:
        client = SeedClient(ws)
        try:
            await client.send_audio(pcm, pace)
            await client.command("CloseStream")
        except ConnectionClosed:
            pass  # refused: the messages say why
        return await client.ended()


def results(messages: list[dict], final: bool | None = None) -> list[dict]:
    return [m for m in messages if m["type"] == "Results" and (final is None or m["is_final"] is final)]


def texts(messages: list[dict]) -> list[str]:
    return [m["channel"]["alternatives"][0]["transcript"] for m in results(messages, True)]


def stored_export(app, metadata: dict) -> dict:
    """The recorded session, through its share link (Metadata.share_url), as the JSON export."""
    with urllib.request.urlopen(f"{app.http}{metadata['share_url']}/transcript.json", timeout=5) as r:
        return json.loads(r.read())


def assert_results_shape(messages: list[dict]) -> None:
    for m in results(messages):
        alt = m["channel"]["alternatives"][0]
        assert m["start"] >= 0 and m["duration"] >= 0 and isinstance(alt["confidence"], float)
        assert all(w["start"] <= w["end"] for w in alt["words"]), alt
        assert not m["speech_final"] or m["is_final"]  # speech_final implies is_final


SNIPPET = ROOT / "tests" / "seed_client.mjs"


def node_has_websocket() -> bool:
    """node 20.10+ has a WebSocket behind --experimental-websocket (22: always); Debian 12's node 18 has none."""
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    try:
        return subprocess.run(["node", "--experimental-websocket", "-e", probe], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# Where the snippet runs: node when it has a WebSocket, else headless Chromium (SEED_SNIPPET_IN=chromium forces it)
SNIPPET_IN = os.environ.get("SEED_SNIPPET_IN") or ("node" if node_has_websocket() else "chromium")


def snippet_lines(printed: list[str]) -> list[tuple[str, bool]]:
    """The snippet's console.log(transcript, is_final) lines as (transcript, is_final)."""
    return [(text, flag == "true") for text, _, flag in (line.rpartition(" ") for line in printed)]


async def run_node_snippet(app, pcm: bytes, tmp: Path, key: str = "any") -> tuple[list[tuple[str, bool]], str]:
    """The seed's JavaScript snippet (its printed lines, and its close code as "close N")."""
    if SNIPPET_IN == "chromium":
        return await asyncio.to_thread(snippet_in_chromium, app, pcm, key)
    path = tmp / f"seed-{time.monotonic_ns()}.pcm"
    path.write_bytes(pcm)
    proc = await asyncio.create_subprocess_exec(
        "node", "--experimental-websocket", str(SNIPPET), app.ws, key, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return snippet_lines(out.decode().splitlines()), err.decode()


def snippet_in_chromium(app, pcm: bytes, key: str) -> tuple[list[tuple[str, bool]], str]:
    """The same module in a page of the relay's own origin (a browser sends its Origin, which must be allowed);
    bypass_csp lets the test inject it into that page."""
    from browser import browser
    with browser(None) as b:
        page = b.new_context(bypass_csp=True).new_page()
        printed: list[tuple[str, str]] = []
        page.on("console", lambda m: printed.append((m.type, m.text)))
        page.goto(f"{app.http}/healthz")
        page.evaluate("s => { globalThis.SEED = s }", {"relay": app.ws, "key": key,
                                                       "pcm": base64.b64encode(pcm).decode()})
        with page.expect_console_message(lambda m: m.text.startswith("close "), timeout=60000):
            page.add_script_tag(content=SNIPPET.read_text(), type="module")
    logs = [text for kind, text in printed if kind == "log"]
    return snippet_lines(logs), "\n".join(text for kind, text in printed if kind == "error")


# ---- the simulated upstreams: deepgram (Flux) and aigateway (v1 Results) ---------------------------

@pytest.mark.parametrize("backend", ["flux_app", "gateway_app"])
async def test_seed_clients_python_and_javascript(backend, request, sim, tmp_path):
    app = request.getfixturevalue(backend)
    pcm = tone_pcm(4.5)  # the simulator hears the script's two turns in it
    (messages, code), (lines, err) = await asyncio.gather(
        seed_session(f"{app.ws}/v1/realtime?{SEED_QUERY}", pcm),
        run_node_snippet(app, pcm, tmp_path))
    assert results(messages, False), "interim Results"
    assert texts(messages) == SCRIPT_FINALS
    assert all(m["speech_final"] and not m["from_finalize"] for m in results(messages, True))
    assert_results_shape(messages)
    metadata = messages[-1]
    assert metadata["type"] == "Metadata" and code == 1000  # CloseStream: finals, Metadata, a clean close
    assert metadata["duration"] == 4.5 and metadata["request_id"]
    assert [m["type"] for m in messages].count("Metadata") == 1
    assert all(r["metadata"]["request_id"] == metadata["request_id"] for r in results(messages))
    # recorded like any session
    export = stored_export(app, metadata)
    assert export["session"]["id"] == metadata["request_id"]
    assert [t["text"] for t in export["turns"]] == SCRIPT_FINALS
    # the seed's own snippet, unchanged but for the host: interims, then the same finals, then a clean close
    assert any(not final and text for text, final in lines), lines
    assert [text for text, final in lines if final] == SCRIPT_FINALS
    assert "close 1000" in err, err


async def test_on_plain_asgi_too(simulator, session_tmp):
    """Another ASGI server (no direct socket): the adapter wraps the ASGI fallback the same way."""
    simulator.reset()
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen"}
    argv = ["-m", "uvicorn", "webapp.app:create_app", "--factory", "--host", "127.0.0.1", "--port", "{port}",
            "--ws", "websockets-sansio", "--log-level", "warning"]
    with running_app(env, session_tmp, "realtime-plain-asgi", argv=argv) as app:
        messages, code = await seed_session(f"{app.ws}/v1/realtime?{SEED_QUERY}", tone_pcm(4.5))
    assert results(messages, False) and texts(messages) == SCRIPT_FINALS
    assert messages[-1]["type"] == "Metadata" and code == 1000


@pytest.mark.parametrize("backend", ["flux_app", "gateway_app"])
async def test_finalize_ends_the_turn_now_and_closestream_delivers_the_rest(backend, request, sim):
    app = request.getfixturevalue(backend)
    async with connect(f"{app.ws}/v1/realtime?{SEED_QUERY}", compression=None) as ws:
        client = SeedClient(ws)
        await client.send_audio(tone_pcm(1.0))  # three words of the first turn, which goes on
        await client.until(lambda m: m["type"] == "Results" and m["channel"]["alternatives"][0]["transcript"])
        await client.command("Finalize")
        forced = await client.until(lambda m: m["type"] == "Results" and m["is_final"])
        assert forced["from_finalize"] is True and forced["speech_final"] is False
        assert forced["channel"]["alternatives"][0]["transcript"].startswith("Hello world,")
        seen = len(client.messages)
        await client.send_audio(tone_pcm(1.0))  # the rest of the script's turn: a new one, open at CloseStream
        await client.until(lambda m: m["type"] == "Results" and not m["is_final"], after=seen)
        await client.command("CloseStream")
        messages, code = await client.ended()
    finals = results(messages, True)
    assert len(finals) == 2 and finals[1]["from_finalize"] is True  # CloseStream finalized the open turn
    assert messages[-1]["type"] == "Metadata" and code == 1000
    assert messages.index(finals[-1]) < len(messages) - 1  # every final before Metadata


BAD = [
    ("encoding=mulaw", "encoding must be linear16"),
    ("sample_rate=11025", "sample_rate must be one of 8000, 16000, 24000, 44100, 48000"),
    ("model=whisper-1", "model must be one of deepgram/flux, deepgram/nova-3"),
    ("diarize=true", "unknown parameter 'diarize'"),
    ("language=zu", "does not transcribe language 'zu'"),
]


@pytest.mark.parametrize("query,message", BAD, ids=[b[0] for b in BAD])
async def test_bad_parameters_get_an_error_then_a_close(flux_app, sim, query, message):
    name = query.split("=")[0]  # in place of the seed's own value, where it has one
    seed = "&".join(p for p in SEED_QUERY.split("&") if not p.startswith(name + "="))
    messages, code = await seed_session(f"{flux_app.ws}/v1/realtime?{seed}&{query}", b"")
    assert [m["type"] for m in messages] == ["Error"] and code == 1008
    assert message in messages[0]["description"] and messages[0]["error"]["type"] == "invalid_request_error"
    assert sim.connection_count == 0  # refused before any upstream connection


LANGUAGES = [
    ("es", None, "flux-general-multi", ["es"], ["es"]),
    ("pt-BR", None, "flux-general-multi", ["pt"], ["pt"]),
    ("multi", ["fr", "en"], "flux-general-multi", [], ["fr", "en"]),
    ("en", None, "flux-general-en", [], None),
]


@pytest.mark.parametrize("language,detected,model,hints,languages", LANGUAGES, ids=[c[0] for c in LANGUAGES])
async def test_languages_on_flux(flux_app, sim, language, detected, model, hints, languages):
    sim.detected = detected
    messages, code = await seed_session(f"{flux_app.ws}/v1/realtime?{SEED_QUERY}&language={language}", tone_pcm(4.5))
    record = sim.records[0]
    assert dict(record.query)["model"] == model and record.language_hints == hints
    assert texts(messages) == SCRIPT_FINALS and code == 1000
    assert [m["channel"]["alternatives"][0].get("languages") for m in results(messages, True)] == [languages] * 2
    export = stored_export(flux_app, messages[-1])
    assert [t.get("languages") for t in export["turns"]] == [languages] * 2  # stored, and in the JSON export


async def test_listen_takes_language_too(flux_app, sim):
    """The page's own socket has the same `language`: hints upstream, `languages` on its finals."""
    messages = await run_capture(f"{flux_app.ws}/ws/listen?language=de", tone_pcm(4.5))
    assert sim.records[0].language_hints == ["de"] and dict(sim.records[0].query)["model"] == "flux-general-multi"
    assert [m.get("languages") for m in messages if m["type"] == "transcript" and m["final"]] == [["de"]] * 2


# ---- credentials and KeepAlive: an app with ACCESS_TOKEN and a short IDLE_TIMEOUT ---------------------

TOKEN = "relay-access-token-5678"


@pytest.fixture(scope="module")
def guarded_app(simulator, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "ACCESS_TOKEN": TOKEN, "IDLE_TIMEOUT": "2", "UPSTREAM_RETRY_SECONDS": "0"}
    with running_app(env, session_tmp, "realtime-guarded") as app:
        yield app


KEYS = [
    ("no key", "", {}, False),
    ("a wrong ?api_key=", "&api_key=wrong-key-0042", {}, False),
    ("?api_key=", f"&api_key={TOKEN}", {}, True),
    ("Authorization: Bearer", "", {"Authorization": f"Bearer {TOKEN}"}, True),
    ("Authorization: Token", "", {"Authorization": f"Token {TOKEN}"}, True),
]


@pytest.mark.parametrize("name,query,headers,admitted", KEYS, ids=[k[0] for k in KEYS])
async def test_the_key(guarded_app, sim, name, query, headers, admitted):
    messages, code = await seed_session(f"{guarded_app.ws}/v1/realtime?{SEED_QUERY}{query}", tone_pcm(0.5), headers)
    if admitted:
        assert messages[-1]["type"] == "Metadata" and code == 1000
    else:
        assert [m["type"] for m in messages] == ["Error"] and code == 1008
        assert messages[0]["error"]["type"] == "invalid_key" and "api_key" in messages[0]["description"]
    log = guarded_app.log_text()
    assert "wrong-key-0042" not in log and TOKEN not in log  # a key in the URL never reaches the log...
    if "api_key" in query:
        assert "/v1/realtime?" in log and "api_key=[redacted]" in log  # ...though the URL does (uvicorn's lines)


async def test_keepalive_holds_an_idle_socket_open(guarded_app, sim):
    async with connect(f"{guarded_app.ws}/v1/realtime?{SEED_QUERY}&api_key={TOKEN}", compression=None) as ws:
        client = SeedClient(ws)
        await client.send_audio(tone_pcm(0.1))
        started = time.monotonic()
        for _ in range(8):  # 4 s of KeepAlive, twice IDLE_TIMEOUT, without audio
            await client.command("KeepAlive")
            await asyncio.sleep(0.5)  # the client's KeepAlive interval, not synchronisation
        assert not client.reader.done() and not [m for m in client.messages if m["type"] == "Error"]
        error = await client.until(lambda m: m["type"] == "Error", timeout=5)  # silence: the idle timeout
        assert error["code"] == "idle_timeout" and time.monotonic() - started >= 4
        messages, code = await client.ended()
    assert messages[-1]["type"] == "Metadata" and code == 1011


# ---- the embedded recognizer, real speech -----------------------------------------------------------

@pytest.fixture(scope="module")
def local_app(session_tmp):
    with running_app({"LOCAL_MAX_STREAMS": "2"}, session_tmp, "realtime-local") as app:  # no key: the default
        yield app


async def test_local_real_speech_python_and_javascript(local_app, tmp_path):
    first, second = clip("lv-0880"), clip("lv-0870")
    node = asyncio.create_task(run_node_snippet(local_app, noise(0.3) + first.pcm + noise(1.2), tmp_path))
    async with connect(f"{local_app.ws}/v1/realtime?{SEED_QUERY}", compression=None) as ws:
        client = SeedClient(ws)
        await client.send_audio(noise(0.3) + first.pcm + noise(1.2), RT)
        await client.until(lambda m: m["type"] == "Results" and m["is_final"])  # the pause ended the turn
        seen = len(client.messages)
        await client.send_audio(second.pcm[: 3 * 32000], RT)  # its first 3 s, cut off mid-sentence
        await client.until(lambda m: m["type"] == "Results" and not m["is_final"], after=seen)
        await client.command("Finalize")  # no pause after it (no audio at all): only Finalize ends this turn now
        forced = await client.until(lambda m: m["type"] == "Results" and m["from_finalize"])
        await client.command("CloseStream")
        messages, code = await client.ended()
    assert results(messages, False), "interim Results"
    finals = texts(messages)
    assert wer(first.ref, " ".join(finals[:-1])) <= 0.25, finals
    said = normalize(forced["channel"]["alternatives"][0]["transcript"])  # the sentence's first 3 s
    assert len(said) >= 4 and sum(w in normalize(second.ref) for w in said) >= 0.75 * len(said), said
    assert_results_shape(messages)
    assert all(m["channel"]["alternatives"][0]["words"] for m in results(messages, True))  # timed words, always
    assert messages[-1]["type"] == "Metadata" and code == 1000
    assert [t["text"] for t in stored_export(local_app, messages[-1])["turns"]] == finals
    lines, err = await node
    assert any(not final and text for text, final in lines), lines
    assert wer(first.ref, " ".join(text for text, final in lines if final)) <= 0.25, lines
    assert "close 1000" in err, err


async def test_local_refuses_another_language_clearly(local_app):
    messages, code = await seed_session(f"{local_app.ws}/v1/realtime?{SEED_QUERY}&language=es", b"")
    assert [m["type"] for m in messages] == ["Error"] and code == 1008
    assert messages[0]["code"] == "unsupported_language" and "English only" in messages[0]["description"]
    listen = await run_capture(f"{local_app.ws}/ws/listen?language=fr", b"", close=False)
    assert [m["type"] for m in listen] == ["error", "closed"] and listen[0]["code"] == "unsupported_language"
    with_en, code = await seed_session(f"{local_app.ws}/v1/realtime?{SEED_QUERY}&language=en", noise(0.3))
    assert with_en[-1]["type"] == "Metadata" and code == 1000


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
