"""Relay API keys on the two API endpoints, end to end, as an operator and their clients use them: a key minted
with the CLI (`caption-relay api-key create`, a real process against the running app's store) opens
POST /v1/audio/transcriptions (the official `openai` SDK) and /v1/realtime (a seed-protocol client); missing,
wrong and revoked keys are refused there (401 in OpenAI's error shape; an `Error` then close 1008); the audio is
counted under the key (`api-key list`, /metrics) and a key's minutes per day stop its next upload (429).
Upstreams are local simulators: the Flux simulator (tests/simulator.py) and the batch simulator
(tests/batch_simulator.py, Deepgram pre-recorded)."""
from __future__ import annotations

import json
import re

import openai
import pytest
from openai import OpenAI

from batch_simulator import DURATION, BatchSimulator
from client import tone_pcm
from conftest import TEST_AIG_KEY, TEST_DG_KEY, running_app
from test_apikeys import cli, scrape
from test_batch import WAV
from test_realtime import SEED_QUERY, seed_session, texts


@pytest.fixture(scope="module")
def batch_sim():
    sim = BatchSimulator(TEST_AIG_KEY, TEST_DG_KEY).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def keyed_app(simulator, batch_sim, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "DEEPGRAM_BATCH_URL": f"{batch_sim.url}/v1/listen"}
    with running_app(env, session_tmp, "api-keys-e2e") as app:
        yield app


def transcribe(app, key: str) -> str:
    client = OpenAI(base_url=f"{app.http}/v1", api_key=key, max_retries=0)
    return client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV), response_format="text")


async def realtime(app, key: str | None) -> tuple[list[dict], int]:
    query = f"&api_key={key}" if key else ""
    return await seed_session(f"{app.ws}/v1/realtime?{SEED_QUERY}{query}", tone_pcm(0.6))


async def test_keys_open_refuse_and_meter_both_endpoints(keyed_app, sim, batch_sim, session_tmp):
    app = keyed_app
    data = session_tmp / "data-api-keys-e2e"  # start_app: DATA_DIR is tmp/data-<name>
    # No key yet and no ACCESS_TOKEN: both endpoints are as open as the page.
    assert "simulated service" in transcribe(app, "anything")
    messages, code = await realtime(app, None)
    assert code == 1000 and texts(messages)

    made = cli(data, "create", "--name", "church-av", "--minutes-per-day", "1")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    second = cli(data, "create", "--name", "other").stdout.strip()

    # From now on a key is needed: missing and wrong keys are refused on both.
    for wrong in ("anything", "crk_" + "x" * 43):
        with pytest.raises(openai.AuthenticationError) as refused:
            transcribe(app, wrong)
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
        messages, code = await realtime(app, wrong)
        assert [m["type"] for m in messages] == ["Error"] and code == 1008
        assert messages[0]["code"] == "unauthorized" and "api_key" in messages[0]["description"]
    messages, code = await realtime(app, None)
    assert [m["type"] for m in messages] == ["Error"] and code == 1008

    # The key works on both, and its audio is counted under it.
    assert "simulated service" in transcribe(app, key)
    messages, code = await realtime(app, key)
    assert code == 1000 and texts(messages) and messages[-1]["type"] == "Metadata"
    listed = next(line for line in cli(data, "list").stdout.splitlines() if line.startswith("church-av "))
    today_minutes = float(listed.split()[5])
    assert today_minutes >= round(DURATION / 60, 2)  # the upload's 5.25 s at least (the socket's 0.6 s as it flushes)
    key_id = listed.split()[1]
    metered = scrape(app)
    assert metered[f"caption_relay_api_key_audio_seconds_total{{id={key_id},key=church-av}}"] >= DURATION
    assert metered["caption_relay_batch_jobs_total{backend=deepgram,outcome=ok}"] >= 2

    # Revoked: refused at once, on both; the other key still works.
    assert cli(data, "revoke", "church-av").returncode == 0
    with pytest.raises(openai.AuthenticationError) as refused:
        transcribe(app, key)
    assert "revoked" in refused.value.body["message"]
    messages, code = await realtime(app, key)
    assert [m["type"] for m in messages] == ["Error"] and code == 1008 and "revoked" in messages[0]["description"]
    assert "simulated service" in transcribe(app, second)

    log = app.log_text()
    assert key not in log and second not in log and not re.search(r"crk_[A-Za-z0-9_-]{20}", log)


async def test_a_keys_minutes_per_day_stop_its_next_upload(keyed_app, sim, batch_sim, session_tmp):
    app = keyed_app
    data = session_tmp / "data-api-keys-e2e"  # start_app: DATA_DIR is tmp/data-<name>
    key = cli(data, "create", "--name", "tiny", "--minutes-per-day", "1").stdout.strip()
    done = 0
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(30):  # a few seconds each: one minute runs out well before 30
            transcribe(app, key)
            done += 1
    listed = next(line for line in cli(data, "list").stdout.splitlines() if line.startswith("tiny "))
    used_minutes = float(listed.split()[5])
    assert done >= 3 and 1.0 - 0.25 <= used_minutes <= 1.0  # stopped before the job that would pass the minute
    body = limited.value.body
    assert body["code"] == "quota_exceeded" and "tiny" in body["message"]
    assert int(limited.value.response.headers["retry-after"]) > 0
    assert json.loads(limited.value.response.text)["error"]["type"] == "rate_limit_error"
