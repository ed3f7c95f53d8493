"""POST /v1/audio/transcriptions, through the official `openai` SDK: real speech on the embedded recognizer in
every response format and container, the stream, errors in OpenAI's shape, forwarding to simulated AIgateway and
Deepgram pre-recorded endpoints (tests/batch_simulator.py) with their failures mapped, the result as a session
with a share link and exports, and the page's "Transcribe a file" panel in Chromium."""
from __future__ import annotations

import io
import re
import time
import wave
from itertools import pairwise

import av
import httpx
import numpy as np
import openai
import pytest
from batch_simulator import DURATION, SCRIPT, BatchSimulator
from browser import browser
from conftest import ARTIFACTS, TEST_AIG_KEY, TEST_DG_KEY, running_app
from openai import OpenAI
from playwright.sync_api import expect
from speech import clip, joined, speech_bounds, wer

CLIPS = ["lv-0880", "lv-0930", "goforward"]
ACCESS = "batch-access-token-0123456789"
SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+?)(?:\n\n|\n?$)", re.S)
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+?)(?:\n\n|\n?$)", re.S)


def noise(seconds: float, seed: int = 3) -> bytes:
    return np.random.default_rng(seed).normal(0, 20, int(seconds * 16000)).astype("<i2").tobytes()


def speech(names=CLIPS) -> tuple[bytes, str]:
    """Real clips with 1.2 s of room noise between them (the endpointer ends a turn in each pause), and the reference."""
    pcm, refs = noise(0.3), []
    for name in names:
        pcm += clip(name).pcm + noise(1.2)
        refs.append(clip(name).ref)
    return pcm, " ".join(refs)


def wav_bytes(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(pcm)
    return buf.getvalue()


def encode(pcm: bytes, fmt: str, codec: str, rate: int) -> bytes:
    """16 kHz PCM as a file of another container and codec, made with PyAV (FFmpeg)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


PCM, REF = speech()
WAV = wav_bytes(PCM)
SPEECH_START, SPEECH_END = speech_bounds(PCM)


@pytest.fixture(scope="module")
def local_app(session_tmp):
    env = {"LOCAL_MAX_STREAMS": "2", "MAX_UPLOAD_MB": "1", "MAX_UPLOAD_MINUTES": "1", "REQUEST_TIMEOUT": "2"}
    with running_app(env, session_tmp, "batch-local") as app:
        yield app


@pytest.fixture(scope="module")
def client(local_app) -> OpenAI:
    return OpenAI(base_url=f"{local_app.http}/v1", api_key="unused-no-token-set", max_retries=0)


@pytest.fixture(scope="module")
def batch_sim():
    sim = BatchSimulator(TEST_AIG_KEY, TEST_DG_KEY).start()
    yield sim
    sim.stop()


@pytest.fixture
def bsim(batch_sim):
    batch_sim.reset()
    yield batch_sim
    batch_sim.reset()


@pytest.fixture(scope="module")
def gateway_app(batch_sim, session_tmp):
    """AIgateway backend against the simulator, behind an access token."""
    env = {"STT_BACKEND": "aigateway", "AIGATEWAY_API_KEY": TEST_AIG_KEY, "ACCESS_TOKEN": ACCESS,
           "AIGATEWAY_BATCH_URL": f"{batch_sim.url}/v1/audio/transcriptions"}
    with running_app(env, session_tmp, "batch-gateway") as app:
        yield app


@pytest.fixture(scope="module")
def deepgram_app(batch_sim, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_BATCH_URL": f"{batch_sim.url}/v1/listen",
           "DEEPGRAM_BATCH_MODEL": "nova-3-general", "CLIENT_MINUTES_PER_DAY": "1"}
    with running_app(env, session_tmp, "batch-deepgram") as app:
        yield app


# ---- the embedded recognizer, every format -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_real_speech_in_every_format(client, fmt):
    grains = ["segment", "word"] if fmt == "verbose_json" else openai.omit
    out = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), response_format=fmt,
                                             timestamp_granularities=grains)
    if fmt == "json":
        text = out.text
    elif fmt == "text":
        assert isinstance(out, str) and out.endswith("\n")
        text = out
    elif fmt in ("srt", "vtt"):
        cues = [(seconds(*c[1:5]), seconds(*c[5:9]), c[9]) for c in SRT_CUE.findall(out)] if fmt == "srt" else \
            [(seconds(*c[0:4]), seconds(*c[4:8]), c[8]) for c in VTT_CUE.findall(out)]
        if fmt == "srt":
            assert [int(c[0]) for c in SRT_CUE.findall(out)] == list(range(1, len(cues) + 1))
        else:
            assert out.startswith("WEBVTT\n\n")
        assert len(cues) >= 3, out
        assert all(a < b for a, b, _ in cues) and all(cues[i][1] <= cues[i + 1][0] for i in range(len(cues) - 1))
        # the cues' times are the audio's: speech starts and ends where the recording's energy says
        assert abs(cues[0][0] - SPEECH_START) < 0.6 and abs(cues[-1][1] - SPEECH_END) < 1.0, (cues, SPEECH_START, SPEECH_END)
        text = " ".join(c[2].replace("\n", " ") for c in cues)
    else:
        assert out.duration == pytest.approx(len(PCM) / 32000, abs=0.05) and out.language == "en"
        segs = out.segments
        assert len(segs) >= 3 and [s.id for s in segs] == list(range(len(segs)))
        assert all(s.start < s.end for s in segs) and all(segs[i].end <= segs[i + 1].start for i in range(len(segs) - 1))
        assert segs[0].start <= SPEECH_START + 0.5 and segs[-1].end >= SPEECH_END - 0.6, (segs, SPEECH_START, SPEECH_END)
        words = out.words
        assert len(words) == len(out.text.split())
        assert all(w.start <= w.end for w in words) and all(words[i].start <= words[i + 1].start for i in range(len(words) - 1))
        assert words[0].start >= segs[0].start - 0.01 and words[-1].end <= segs[-1].end + 0.01
        text = out.text
    assert wer(REF, text) <= 0.25, (REF, text)


def test_stream_events_in_order(client):
    stream = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"} and len(kinds) >= 4
    deltas = "".join(e.delta for e in events[:-1])
    assert deltas == events[-1].text  # only OpenAI's events: no progress events for a client that did not ask
    assert wer(REF, deltas) <= 0.25
    assert events[-1].usage.seconds == pytest.approx(len(PCM) / 32000, abs=1)


CONTAINERS = [("mp3", "mp3", "libmp3lame", 16000), ("ogg", "ogg", "libopus", 48000), ("flac", "flac", "flac", 16000),
              ("m4a", "ipod", "aac", 16000), ("webm", "webm", "libopus", 48000)]


@pytest.mark.parametrize("ext,fmt,codec,rate", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_container(client, ext, fmt, codec, rate):
    pcm, ref = speech(["lv-0930", "goforward"])
    data = encode(pcm, fmt, codec, rate)
    out = client.audio.transcriptions.create(model="whisper-1", file=(f"speech.{ext}", data),
                                             response_format="verbose_json")
    assert out.duration == pytest.approx(len(pcm) / 32000, abs=0.15)
    assert wer(ref, out.text) <= 0.25, (ref, out.text)


# ---- errors ---------------------------------------------------------------------------------------------


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_too_big_is_413(client):
    big = wav_bytes(noise(40))  # 1.28 MB, over MAX_UPLOAD_MB=1
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", big))
    assert info.value.status_code == 413
    err = _error(info.value)
    assert err["param"] == "file" and "1 MB" in err["message"] and err["code"] == "file_too_large"


def test_too_long_is_413(client):
    long = encode(np.zeros(61 * 16000, np.int16).tobytes(), "ogg", "libopus", 48000)  # small file, 61 s of audio
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("long.ogg", long))
    assert info.value.status_code == 413 and _error(info.value)["code"] == "audio_too_long"


@pytest.mark.parametrize("data", [b"this is not audio at all" * 40, b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20],
                         ids=["text", "broken-wav"])
def test_undecodable_is_415(client, data):
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", data))
    assert info.value.status_code == 415
    err = _error(info.value)
    assert err["param"] == "file" and "WAV, FLAC, MP3" in err["message"]


@pytest.mark.parametrize("kw,param", [
    ({"response_format": "docx"}, "response_format"),
    ({"language": "fr"}, "language"),  # the embedded recognizer is English only: said so
    ({"language": "not a code"}, "language"),
    ({"timestamp_granularities": ["sentence"]}, "timestamp_granularities[]"),
])
def test_bad_field_is_400_naming_it(client, kw, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), **kw)
    err = _error(info.value)
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_missing_file_and_model_are_400(local_app):
    r = httpx.post(f"{local_app.http}/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"x": ("a", b"1")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(f"{local_app.http}/v1/audio/transcriptions", files={"file": ("a.wav", WAV)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{local_app.http}/v1/audio/transcriptions", json={"model": "whisper-1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_a_slow_upload_outlives_the_request_timeout(local_app):
    """REQUEST_TIMEOUT=2 (slowloris) would cut a 2.5 s body; an upload gets a bytes-per-second floor instead."""
    built = httpx.Request("POST", f"{local_app.http}/v1/audio/transcriptions",
                          data={"model": "whisper-1"}, files={"file": ("speech.wav", WAV)})
    body = built.read()

    def trickle():
        step = len(body) // 10 + 1
        for i in range(0, len(body), step):
            yield body[i:i + step]
            time.sleep(0.25)  # a slow uplink, not a wait for an event

    headers = {"content-type": built.headers["content-type"], "content-length": str(len(body))}
    r = httpx.post(f"{local_app.http}/v1/audio/transcriptions", content=trickle(), headers=headers, timeout=30)
    assert r.status_code == 200 and "forward" in r.json()["text"].lower()


def test_foreign_page_is_refused(local_app):
    r = httpx.post(f"{local_app.http}/v1/audio/transcriptions", headers={"Origin": "https://evil.example"},
                   data={"model": "m"}, files={"file": ("a.wav", WAV)})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin"


# ---- the result is a session --------------------------------------------------------------------------------


def test_result_is_a_session_with_share_link_and_exports(local_app):
    with httpx.Client(base_url=local_app.http) as http:
        http.get("/")  # the page's owner cookie, as a browser has it
        r = http.post("/v1/audio/transcriptions", data={"model": "whisper-1", "response_format": "json"},
                      files={"file": ("speech.wav", WAV, "audio/wav")})
        assert r.status_code == 200
        share = r.headers["x-session-url"]
        listed = http.get("/api/sessions").json()["sessions"]
        mine = [s for s in listed if s["share_url"] == share]
        assert len(mine) == 1 and not mine[0]["live"] and mine[0]["end_reason"] == "upload"
        assert mine[0]["audio_seconds"] == pytest.approx(len(PCM) / 32000, abs=0.05)
        assert share in http.get("/sessions").text
    viewer = httpx.get(local_app.http + share)
    assert viewer.status_code == 200 and "forward" in viewer.text.lower()
    srt = httpx.get(f"{local_app.http}{share}/transcript.srt").text
    txt = httpx.get(f"{local_app.http}{share}/transcript.txt").text
    assert SRT_CUE.findall(srt) and wer(REF, txt) <= 0.25
    assert wer(r.json()["text"], txt) == 0  # the stored turns are the answer's


# ---- AIgateway and Deepgram (simulated) ---------------------------------------------------------------------


def test_gateway_forwarding(gateway_app, bsim):
    client = OpenAI(base_url=f"{gateway_app.http}/v1", api_key=ACCESS, max_retries=0)
    out = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV, "audio/wav"),
                                             response_format="verbose_json", language="de", prompt="Caption Relay",
                                             timestamp_granularities=["word", "segment"])
    (got,) = bsim.received
    assert got.headers["authorization"] == f"Bearer {TEST_AIG_KEY}"  # the server's key, never the client's
    assert got.file == WAV and got.filename == "speech.wav"
    assert got.fields["model"] == ["deepgram/flux"] and got.fields["response_format"] == ["verbose_json"]
    assert got.fields["language"] == ["de"] and got.fields["prompt"] == ["Caption Relay"]
    assert "word" in got.fields["timestamp_granularities[]"]
    assert out.text == "Hello from the simulated service. Second segment here." and out.language == "de"
    assert [(s.start, s.end) for s in out.segments] == [(s, e) for s, e, _ in SCRIPT]
    assert out.words[0].word == "Hello" and out.duration == DURATION
    srt = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), response_format="srt")
    assert srt.startswith("1\n00:00:00,500 --> ") and "Second segment here." in srt
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), response_format="text")
    assert text == "Hello from the simulated service. Second segment here.\n"


@pytest.mark.parametrize("status,retry,exc", [
    (429, "7", openai.RateLimitError), (500, None, openai.InternalServerError), (503, None, openai.InternalServerError),
    (402, None, openai.APIStatusError), (404, None, openai.NotFoundError), (401, None, openai.AuthenticationError),
])
def test_gateway_errors_are_mapped(gateway_app, bsim, status, retry, exc):
    bsim.fail(status, retry)
    client = OpenAI(base_url=f"{gateway_app.http}/v1", api_key=ACCESS, max_retries=0)
    with pytest.raises(exc) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV))
    assert info.value.status_code == status
    err = _error(info.value)
    assert f"simulated {status}" in err["message"] and TEST_AIG_KEY not in err["message"]
    if retry:
        assert info.value.response.headers["retry-after"] == retry
    assert TEST_AIG_KEY not in gateway_app.log_text()


def test_a_provider_echoing_the_key_does_not_hand_it_on(gateway_app, bsim):
    bsim.fail(400, echo=True)
    client = OpenAI(base_url=f"{gateway_app.http}/v1", api_key=ACCESS, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV))
    message = _error(info.value)["message"]
    assert "simulated 400 for Bearer [redacted]" in message and TEST_AIG_KEY not in message


def test_gateway_app_requires_the_access_token(gateway_app, bsim):
    for key in ("wrong-token", TEST_AIG_KEY):
        client = OpenAI(base_url=f"{gateway_app.http}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV))
        assert _error(info.value)["code"] == "invalid_api_key"
    assert bsim.received == []  # nothing was forwarded


def test_the_logged_in_page_uploads_with_its_cookie(gateway_app, bsim):
    """The page sends no Bearer token: its login cookie (and its own Origin) admit the upload; a foreign Origin not."""
    with httpx.Client(base_url=gateway_app.http) as http:
        assert http.post("/v1/audio/transcriptions", data={"model": "m"},
                         files={"file": ("a.wav", WAV)}).status_code == 401
        assert http.post("/login", data={"token": ACCESS}).status_code == 303
        own = {"Origin": gateway_app.http}
        r = http.post("/v1/audio/transcriptions", data={"model": "m"}, files={"file": ("a.wav", WAV)}, headers=own)
        assert r.status_code == 200 and r.json()["text"].startswith("Hello from the simulated service.")
        r = http.post("/v1/audio/transcriptions", data={"model": "m"}, files={"file": ("a.wav", WAV)},
                      headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
    assert len(bsim.received) == 1


def test_deepgram_prerecorded(deepgram_app, bsim):
    client = OpenAI(base_url=f"{deepgram_app.http}/v1", api_key="x", max_retries=0)
    out = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV, "audio/wav"),
                                             response_format="verbose_json", prompt="Caption Relay, moonshine",
                                             timestamp_granularities=["word"])
    (got,) = bsim.received
    assert got.path == "/v1/listen" and got.headers["authorization"] == f"Token {TEST_DG_KEY}"
    assert got.file == WAV and got.headers["content-type"] == "audio/wav"
    query = dict(got.query)
    assert query["model"] == "nova-3-general" and query["utterances"] == "true"
    assert [v for k, v in got.query if k == "keyterm"] == ["Caption Relay", "moonshine"]
    assert out.text == "Hello from the simulated service. Second segment here."
    assert out.segments is None  # only words asked for
    assert [w.word for w in out.words][:2] == ["Hello", "from"] and out.words[-1].end == SCRIPT[-1][1]
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), response_format="vtt")
    assert "00:00:03.000 --> " in vtt and "Second segment here." in vtt


def test_deepgram_429_is_mapped(deepgram_app, bsim):
    bsim.fail(429, "3")
    client = OpenAI(base_url=f"{deepgram_app.http}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV))
    assert info.value.response.headers["retry-after"] == "3" and "simulated 429" in _error(info.value)["message"]


# ---- the page ------------------------------------------------------------------------------------------------


def test_transcribe_a_file_in_the_page(local_app):
    path = ARTIFACTS / "batch-upload.flac"
    path.write_bytes(encode(PCM, "flac", "flac", 16000))
    with browser(None) as b:
        page = b.new_page()
        page.goto(local_app.http + "/")
        page.set_input_files("#transcribe-file", str(path))
        page.click("#transcribe-start")
        expect(page.locator("#transcribe-status")).to_be_visible()
        expect(page.locator("#transcribe-text .final").nth(2)).to_contain_text("forward", timeout=30000)
        expect(page.locator("#transcribe-done")).to_be_visible(timeout=15000)
        expect(page.locator("#transcribe-stage")).to_have_text("Done")
        stages = page.evaluate("() => window.__captionRelayTranscribe.stages")
        assert stages[0] == "Uploading" and stages[-1] == "Done" and "Recognizing" in stages, stages
        assert page.locator("#transcribe-progress").get_attribute("value") == "1"
        page.screenshot(path=str(ARTIFACTS / "batch-panel.png"), full_page=True)
        text = page.locator("#transcribe-text").inner_text()
        share = page.locator("#transcribe-share").get_attribute("href")
        srt_href = page.locator("#transcribe-downloads a", has_text=".srt").get_attribute("href")
        page.goto(share)
        expect(page.locator("body")).to_contain_text("forward")
        page.goto(local_app.http + "/sessions")
        expect(page.locator(f"a.share-link[href='{share.removeprefix(local_app.http)}']")).to_have_count(1)
    assert wer(REF, text) <= 0.25, text
    assert SRT_CUE.findall(httpx.get(local_app.http + srt_href).text)


def test_uploads_count_against_the_minute_quota(deepgram_app, bsim):
    """CLIENT_MINUTES_PER_DAY=1: a 70 s file is refused before it is sent anywhere, with the live quota's words."""
    long = encode(noise(70), "ogg", "libopus", 48000)
    client = OpenAI(base_url=f"{deepgram_app.http}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("long.ogg", long))
    err = _error(info.value)
    assert err["code"] == "quota_exceeded" and "1 minutes" in err["message"], err
    assert int(info.value.response.headers["retry-after"]) > 0
    assert bsim.received == []


def test_store_down_still_answers_without_a_session(batch_sim, tmp_path):
    """Redis (the session store) killed: the client still gets its transcript, without X-Session-Url, promptly."""
    from test_redis_outage import RedisServer

    batch_sim.reset()
    redis = RedisServer(tmp_path)
    redis.start()
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "REDIS_URL": redis.url,
           "DEEPGRAM_BATCH_URL": f"{batch_sim.url}/v1/listen"}
    try:
        with running_app(env, tmp_path, "batch-redis") as app:
            client = OpenAI(base_url=f"{app.http}/v1", api_key="x", max_retries=0)
            first = client.audio.transcriptions.with_raw_response.create(model="m", file=("a.wav", WAV))
            assert first.headers.get("x-session-url")  # stored while the store answers
            redis.kill()
            t = time.monotonic()
            raw = client.audio.transcriptions.with_raw_response.create(model="m", file=("a.wav", WAV))
            assert time.monotonic() - t < 20
            assert raw.parse().text == "Hello from the simulated service. Second segment here."
            assert "x-session-url" not in raw.headers
            assert "session_record_failed" in app.log_text()
    finally:
        redis.stop()
        batch_sim.reset()


def _progress_seen(lines) -> bool:
    """Read the event stream until the first caption_relay.progress event (bounded by the stream's own length);
    `lines` stays open (closing it would close the response)."""
    for line in lines:
        if line.startswith("data:") and '"caption_relay.progress"' in line:
            return True
    return False


def test_a_third_job_is_503_and_a_client_that_leaves_frees_its_slot(session_tmp):
    """Two batch jobs at most (pool.BATCH_JOBS); leaving a stream cancels its job and frees its slot."""
    data = encode(PCM * 25, "ogg", "libopus", 48000)  # 5.4 min: the two jobs are still running when the third comes
    fields = {"model": "m", "stream": "true", "relay_progress": "true"}
    with running_app({}, session_tmp, "batch-slots") as app, httpx.Client(timeout=30) as http:
        url = f"{app.http}/v1/audio/transcriptions"
        with http.stream("POST", url, data=fields, files={"file": ("a.ogg", data)}) as one, \
                http.stream("POST", url, data=fields, files={"file": ("b.ogg", data)}) as two:
            lines_one, lines_two = one.iter_lines(), two.iter_lines()
            assert _progress_seen(lines_one) and _progress_seen(lines_two)  # both hold a batch slot now
            third = http.post(url, data={"model": "m"}, files={"file": ("c.wav", WAV)})
            assert third.status_code == 503 and third.headers["retry-after"] == "60"
            assert third.json()["error"]["code"] == "busy"
        # both clients left mid-job: their jobs stop and give their slots back
        deadline = time.monotonic() + 20
        while True:
            r = http.post(url, data={"model": "m"}, files={"file": ("d.wav", WAV)})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling the slots' release: there is no event to await from outside
        assert r.status_code == 200 and "forward" in r.json()["text"].lower()
        left = [line for line in app.log_text().splitlines() if "batch_finished" in line and '"reason": "error"' in line]
        assert len(left) == 3  # the two jobs whose clients left (recorded as far as they got) and the refused one


# ---- estimated word times (issue 22 item 5) ----------------------------------------------------------------


def test_local_words_are_the_live_finals_estimates(client, local_app):
    """The first three LibriVox clips joined without pauses (consecutive sentences of one reading, long turns): verbose_json's words are the
    estimated word times live finals carry (webapp/local/wordtimes.py), in OpenAI's shape: in order, inside the
    speech, leaving the reader's pauses out (not spread over each segment by length, as the batch path did when it
    dropped them), each clip's first word near the clip's real start. An SRT of the first two splits the long
    turns into cues of at most 2 x 42 characters at those words' times; the stored session has them marked."""
    from test_local import sentence_start_errors, true_starts

    clips = [clip(n) for n in ("lv-0870", "lv-0880", "lv-0890")]
    pcm = noise(0.3) + joined(clips, "joined", 0.0).pcm + noise(1.2)
    out = client.audio.transcriptions.create(model="whisper-1", file=("read.wav", wav_bytes(pcm)),
                                             response_format="verbose_json", timestamp_granularities=["word", "segment"])
    words = out.words
    assert [w.word for w in words] == out.text.split() and all(set(w.model_dump()) == {"word", "start", "end"}
                                                               for w in words)
    onset, offset = speech_bounds(pcm, min_sound=0.1)
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times) and onset - 0.3 <= times[0] and times[-1] <= offset + 0.3, (onset, offset, words)
    # the pauses between the clips (0.2 s at least) and after commas are no word's: gaps inside segments
    gaps = [b.start - a.end for s in out.segments for a, b in pairwise(words) if s.start <= a.start < b.end <= s.end]
    assert sum(g >= 0.15 for g in gaps) >= 2, (gaps, words)
    errors = sentence_start_errors(clips, true_starts(clips, 0.3, 0.0), [w.model_dump() for w in words])
    assert sorted(abs(e) for e in errors)[len(errors) // 2] <= 0.2 and sum(abs(e) > 0.5 for e in errors) <= 1, errors

    pcm = noise(0.3) + joined(clips[:2], "joined", 0.0).pcm + noise(1.2)
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("read.wav", wav_bytes(pcm)),
                                                               response_format="srt")
    turns = httpx.get(f"{local_app.http}{raw.headers['x-session-url']}/transcript.json").json()["turns"]
    stored = [w for t in turns for w in t["words"]]
    assert [w["word"] for w in stored] == " ".join(t["text"] for t in turns).split()
    assert all(w["estimated"] is True for w in stored)
    cues = SRT_CUE.findall(raw.parse())
    starts = {round(w["start"], 3) for w in stored}
    for c in cues:
        lines = c[9].split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines), c
        assert round(seconds(*c[1:5]), 3) in starts, (c, stored)  # a cue starts where its first word does
    assert any(len(t["text"]) > 84 for t in turns) and len(cues) > len(turns), (turns, cues)  # long turns, split
    assert not [c for c in cues if c[9].endswith("Mr.")], cues  # "And Mr." is no cue (exports.ends_sentence)


def test_words_without_segments_are_split_at_sentence_ends():
    """A provider's words without segments: a segment per sentence by exports.ends_sentence ("Mr." ends none, "…"
    and a closing curly quote do), not a copy of the rule that split "Ask Mr." off."""
    from webapp.upstreams.batch import _segments_from_words

    said = "Ask Mr. Brown. He waited… “Come in.” Then".split()
    words = [{"word": w, "start": float(i), "end": i + 0.5} for i, w in enumerate(said)]
    segments = _segments_from_words(words, 10.0, " ".join(said))
    assert [s.text for s in segments] == ["Ask Mr. Brown.", "He waited…", "“Come in.”", "Then"]
