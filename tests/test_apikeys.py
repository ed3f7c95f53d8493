"""Relay API keys, usage metering and /metrics (issue 20 items 4-6): the `caption-relay api-key` CLI run as a
process against the store of a running app; ApiKeys.authenticate with real Starlette Request and WebSocket
objects; each store's key and usage methods (a real SQLite file and a real redis-server); usage and metrics of
a live session through a real app process and the upstream simulator."""
from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from client import collect_until_closed, frames, tone_pcm
from conftest import ROOT, TEST_DG_KEY, running_app, start_app, stop_app
from test_sharing import Socket, http, owner_cookie

from webapp import config
from webapp.apikeys import ApiAuthError, ApiClient, ApiKeys, digest, error_response
from webapp.security import Login
from webapp.store import MemoryStore, RedisStore, SqliteStore, redis_client
from webapp.usage import ApiQuotaError, Usage, today

PRICE = 0.6  # COST_PER_MINUTE of the test app: 4 s of audio cost 0.04
METRICS_TOKEN = "metrics-test-token-0123456789"


def cli(data_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`caption-relay api-key …` as an operator runs it (python -m webapp is the console script's main())."""
    full = {"DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run([sys.executable, "-m", "webapp", "api-key", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def scrape(app, headers: dict | None = None) -> dict[str, float]:
    """/metrics parsed by prometheus-client's own parser: {sample name{labels}: value}."""
    status, _, body = http("GET", f"{app.http}/metrics", headers)
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture(scope="module")
def app(simulator, session_tmp):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "30", "COST_PER_MINUTE": str(PRICE), "METRICS_TOKEN": METRICS_TOKEN,
           "TRUSTED_PROXIES": "127.0.0.1"}
    with running_app(env, session_tmp, "apikeys") as a:
        yield a


def app_data(app, session_tmp) -> Path:
    return session_tmp / "data-apikeys"


# ---- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, cost", [
    ({}, 0.0),                                                           # the embedded recognizer costs nothing
    ({"AIGATEWAY_API_KEY": "k"}, 0.0077),                                # AIgateway's listed deepgram/flux price
    ({"DEEPGRAM_API_KEY": "k"}, 0.0077),
    ({"DEEPGRAM_API_KEY": "k", "COST_PER_MINUTE": "0.0065"}, 0.0065),
    ({"COST_PER_MINUTE": "0"}, 0.0),
])
def test_cost_per_minute_defaults_by_backend(env, cost):
    assert config.load(env).cost_per_minute == cost


@pytest.mark.parametrize("raw", ["abc", "-1", "1e3", "nan", "101", "0,5"])
def test_a_bad_cost_per_minute_is_refused_naming_it(raw):
    with pytest.raises(config.ConfigError, match=r"^COST_PER_MINUTE: .* from 0 to 100"):
        config.load({"COST_PER_MINUTE": raw})


def test_the_metrics_token_is_a_secret():
    assert "m3tr1cs-token" in config.load({"METRICS_TOKEN": "m3tr1cs-token"}).secrets


# ---- the CLI, against the store of the running app ---------------------------------------------------


def test_cli_creates_lists_and_revokes_keys_while_the_app_runs(app, session_tmp):
    data = app_data(app, session_tmp)
    made = cli(data, "create", "--name", "sunday-uploads", "--minutes-per-day", "30")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"crk_[A-Za-z0-9_-]{43}", key)  # stdout holds only the key
    assert key not in made.stderr  # the log lines and the note never repeat it
    key_id = re.search(r"API key ([0-9a-f]{8}) \(sunday-uploads, 30 minutes a day\)", made.stderr).group(1)
    files = b"".join(p.read_bytes() for p in data.glob("sessions.sqlite3*")).decode("latin-1")  # with the WAL
    assert key not in files and key[4:] not in files  # only its digest is stored
    with sqlite3.connect(data / "sessions.sqlite3") as db:
        assert db.execute("SELECT digest FROM api_keys WHERE id = ?", (key_id,)).fetchone() == (digest(key),)

    listed = cli(data, "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("sunday-uploads"))
    assert row.split()[:2] == ["sunday-uploads", key_id] and row.split()[4] == "30" and row.endswith("active")

    cases = [  # (args, exit code, what stderr says)
        (("create", "--name", "sunday-uploads"), 2, "a key named 'sunday-uploads' exists"),
        (("create", "--name", "bad name!"), 2, "--name: use 1 to 64 letters"),
        (("create", "--name", "x", "--minutes-per-day", "5000"), 2, "--minutes-per-day: from 0"),
        (("revoke", "no-such-key"), 1, "no API key with the id or name 'no-such-key'"),
        (("revoke", "sunday-uploads"), 0, f"API key {key_id} (sunday-uploads) revoked"),
        (("revoke", key_id), 0, "was already revoked"),
    ]
    for args, code, said in cases:
        done = cli(data, *args)
        assert (done.returncode, said in done.stderr) == (code, True), (args, done.stderr)
    row = next(line for line in cli(data, "list").stdout.splitlines() if line.startswith("sunday-uploads"))
    assert "revoked 20" in row
    # a revoked name may be given to a new key
    assert cli(data, "create", "--name", "sunday-uploads").returncode == 0


def test_cli_works_against_redis(redis_url, tmp_path):
    made = cli(tmp_path, "create", "--name", "r1", env={"REDIS_URL": redis_url})
    assert made.returncode == 0, made.stderr
    listed = cli(tmp_path, "list", env={"REDIS_URL": redis_url}).stdout
    assert any(line.startswith("r1 ") for line in listed.splitlines())
    assert not (tmp_path / "sessions.sqlite3").exists()  # the keys went to Redis
    assert cli(tmp_path, "revoke", "r1", env={"REDIS_URL": redis_url}).returncode == 0


# ---- every store keeps keys and usage the same way ------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "s.sqlite3")
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=f"cr-test-{time.time_ns()}:")
    await s.start()
    yield s
    await s.close()


async def test_stores_keep_keys_hashed_and_add_usage(store):
    key = {"id": "0a1b2c3d", "name": "k", "digest": "d" * 64, "created_at": 1.0, "minutes_per_day": 5,
           "revoked_at": None}
    await store.add_api_key(key)
    assert await store.api_keys() == [key]
    assert await store.api_key_by_digest("d" * 64) == key
    assert await store.api_key_by_digest("e" * 64) is None
    assert await store.revoke_api_key("0a1b2c3d", 2.0) is True
    assert await store.revoke_api_key("0a1b2c3d", 3.0) is False  # already revoked: the first time stays
    assert await store.revoke_api_key("nope", 3.0) is False
    assert (await store.api_key_by_digest("d" * 64))["revoked_at"] == 2.0

    day = today()
    await store.add_usage([("api_key", "0a1b2c3d", "2020-01-01", 30.0, 0.1), ("ip", "10.0.0.1", day, 5.0, 0.0)])
    await store.add_usage([("api_key", "0a1b2c3d", day, 60.0, 0.2), ("api_key", "0a1b2c3d", day, 1.5, 0.05)])
    got = await store.usage("api_key", day)
    assert got == {"0a1b2c3d": pytest.approx({"today_s": 61.5, "today_cost": 0.25, "total_s": 91.5,
                                              "total_cost": 0.35})}
    assert (await store.usage("ip", day))["10.0.0.1"]["total_s"] == 5.0
    assert await store.usage("embed_key", day) == {}


async def test_an_older_sqlite_file_gains_the_new_tables_and_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the sessions table as the previous version made it
        db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, owner TEXT, backend TEXT NOT NULL, model TEXT, "
                   "sample_rate INTEGER, started_at REAL NOT NULL, ended_at REAL, duration REAL, audio_seconds REAL, "
                   "end_reason TEXT, share_version INTEGER NOT NULL DEFAULT 0, share_token TEXT, resume_nonce TEXT)")
        db.execute("INSERT INTO sessions (id, owner, backend, started_at) VALUES ('s1', 'o', 'local', 1.0)")
    store = SqliteStore(path)
    await store.start()
    await store.end_session("s1", {"ended_at": 2.0, "audio_seconds": 60.0, "cost": 0.0077})
    assert (await store.get_session("s1"))["cost"] == 0.0077
    await store.add_usage([("ip", "10.0.0.1", today(), 1.0, 0.0)])
    assert await store.api_keys() == []
    await store.close()


# ---- authenticate ----------------------------------------------------------------------------------


def request(headers: dict | None = None, client: str = "127.0.0.1", query: str = "") -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/audio/transcriptions", "query_string": query.encode(),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
                    "client": (client, 5000), "server": ("127.0.0.1", 8000), "scheme": "http"})


def websocket(query: str = "", headers: dict | None = None) -> WebSocket:
    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        pass
    scope = {"type": "websocket", "path": "/v1/realtime", "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "scheme": "ws"}
    return WebSocket(scope, receive, send)


async def keyring(tmp_path, access_token: str = "", keys: int = 1):
    settings = config.load({}, data_dir=str(tmp_path), access_token=access_token)
    store = SqliteStore(tmp_path / "keys.sqlite3")
    await store.start()
    usage = Usage(settings, store)
    ring = ApiKeys(settings, store, Login(settings, "s" * 32), usage=usage)
    made = [await ring.create(f"k{i}", minutes_per_day=i) for i in range(keys)]
    return ring, store, usage, made


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}"}


async def test_authenticate_without_keys_or_access_token_is_open(tmp_path):
    ring, store, _, _ = await keyring(tmp_path, keys=0)
    for conn in (request(), request(bearer("sk-anything")), websocket("api_key=whatever")):
        assert await ring.authenticate(conn) == ApiClient("", "anonymous", "127.0.0.1")
    await store.close()


async def test_authenticate_with_keys(tmp_path):
    ring, store, _, made = await keyring(tmp_path, keys=2)
    (good, good_rec), (gone, gone_rec) = made
    await ring.revoke(gone_rec["id"])
    cases = [  # (connection, client key id or the refusal's (status, code))
        (request(), (401, "invalid_api_key")),
        (request(bearer("crk_" + "x" * 43)), (401, "invalid_api_key")),
        (request(bearer(good[:-1])), (401, "invalid_api_key")),
        (request(bearer("sk-not-ours")), (401, "invalid_api_key")),
        (request(bearer(gone)), (401, "api_key_revoked")),
        (request(bearer(good)), good_rec["id"]),
        (request({"authorization": f"bearer {good}"}), good_rec["id"]),  # the scheme is case-insensitive
        (request(query=f"api_key={good}"), (401, "invalid_api_key")),  # a query key only on WebSockets
        (websocket(f"model=deepgram/flux&api_key={good}"), good_rec["id"]),
        (websocket(f"api_key={gone}"), (401, "api_key_revoked")),
        (websocket(headers=bearer(good)), good_rec["id"]),
        (websocket(), (401, "invalid_api_key")),
    ]
    for conn, want in cases:
        try:
            got = (await ring.authenticate(conn)).key_id
        except ApiAuthError as exc:
            got = (exc.status, exc.code)
        assert got == want, (conn.url, dict(conn.headers))
    client = await ring.authenticate(request(bearer(good), client="198.51.100.7"))
    assert (client.name, client.ip, client.minutes_per_day) == ("k0", "198.51.100.7", 0)
    # revoking the last key does not open the endpoints again
    await ring.revoke(good_rec["id"])
    with pytest.raises(ApiAuthError):
        await ApiKeys(config.load({}), store).authenticate(request())
    await store.close()


async def test_authenticate_with_the_access_token(tmp_path):
    ring, store, _, ((good, _),) = await keyring(tmp_path, access_token="tok-123456", keys=1)
    assert (await ring.authenticate(request(bearer("tok-123456")))).name == "access_token"
    assert (await ring.authenticate(websocket("api_key=tok-123456"))).name == "access_token"
    assert (await ring.authenticate(request(bearer(good)))).name == "k0"
    for conn in (request(), request(bearer("wrong"))):
        with pytest.raises(ApiAuthError) as err:
            await ring.authenticate(conn)
        assert err.value.status == 401
    # wrong tokens are throttled as at the login form: then even the right one waits
    statuses = []
    for _ in range(6):
        try:
            await ring.authenticate(request(bearer("guess"), client="203.0.113.9"))
        except ApiAuthError as exc:
            statuses.append(exc.status)
    assert statuses[-1] == 429
    with pytest.raises(ApiAuthError) as err:
        await ring.authenticate(request(bearer("tok-123456"), client="203.0.113.9"))
    assert err.value.status == 429 and err.value.retry_after > 0
    await store.close()


async def test_authenticate_when_the_store_is_down():
    settings = config.load({})
    down = RedisStore("redis://127.0.0.1:1/0")  # nothing listens on port 1
    down.redis = redis_client(down.url)
    with pytest.raises(ApiAuthError) as err:
        await ApiKeys(settings, down).authenticate(request(bearer("crk_" + "a" * 43)))
    assert (err.value.status, err.value.code, err.value.retry_after) == (503, "store_unavailable", 5)


async def test_error_response_is_openai_shaped():
    response = error_response(ApiAuthError(401, "invalid_api_key", "That API key is not valid here."))
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(response.body) == {"error": {"message": "That API key is not valid here.",
                                                   "type": "invalid_request_error", "param": None,
                                                   "code": "invalid_api_key"}}
    response = error_response(ApiQuotaError("used up", 120))
    assert response.status_code == 429 and response.headers["retry-after"] == "120"
    assert json.loads(response.body)["error"]["type"] == "rate_limit_error"


# ---- a key's minutes per day -------------------------------------------------------------------


async def test_minutes_per_day_are_enforced_per_key(tmp_path):
    ring, store, usage, made = await keyring(tmp_path, keys=2)  # k0: no limit; k1: 1 minute a day
    (free, free_rec), (limited, limited_rec) = made
    client = await ring.authenticate(request(bearer(limited)))
    assert client.minutes_per_day == 1
    await usage.charge(client, 45.0)  # a batch job
    with pytest.raises(ApiQuotaError) as err:
        await usage.charge(client, 30.0)
    assert 0 < err.value.retry_after <= 86401 and "'k1' has used its 1 minutes" in err.value.message
    meter = usage.meter(client)  # a live session: per frame
    assert [meter(5.0) for _ in range(4)] == [True, True, True, False]  # 45 + 15 = 60 s, then no more
    usage.day, usage.day_ends = "1999-12-31", 0.0  # as at the next UTC midnight: a new day's minutes
    assert meter(5.0) is True and usage.day == today()
    usage.day_used[client.key_id] = 60.0
    assert usage.meter(await ring.authenticate(request(bearer(free)))) is None  # no limit: nothing per frame
    await usage.charge(await ring.authenticate(request(bearer(free))), 600.0)  # never refused
    await usage.flush()
    stored = await store.usage("api_key", today())
    assert stored[limited_rec["id"]]["today_s"] == 45.0  # the refused job was not charged
    assert stored[free_rec["id"]]["total_cost"] == pytest.approx(600 / 60 * usage.price)
    # another process (a second worker, or after a restart) sees what the store holds
    other = Usage(config.load({}), store)
    client = await ApiKeys(config.load({}), store, usage=other).authenticate(request(bearer(limited)))
    other.check(client, 15.0)
    with pytest.raises(ApiQuotaError):
        other.check(client, 16.0)
    await store.close()


@pytest.mark.parametrize("key_minutes, session_minutes, accepted_s, code", [
    (1, 2, 60.0, "quota_exceeded"),   # the key's day runs out first
    (2, 1, 60.0, "session_limit"),    # the session's limit first
    (1, 0, 60.0, "quota_exceeded"),   # only the key's
    (0, 1, 60.0, "session_limit"),    # only the lease's
    (0, 0, None, None),               # nothing to count: nothing runs per frame
])
async def test_a_live_session_meets_the_key_and_the_client_limits(tmp_path, key_minutes, session_minutes,
                                                                   accepted_s, code):
    from webapp.quotas import Quotas
    settings = config.load({"MAX_SESSION_MINUTES": str(session_minutes)})
    store = SqliteStore(tmp_path / "k.sqlite3")
    await store.start()
    usage = Usage(settings, store)
    ring = ApiKeys(settings, store, usage=usage)
    key, _ = await ring.create("live", minutes_per_day=key_minutes)
    client = await ring.authenticate(request(bearer(key)))
    quotas = Quotas(settings)
    lease = quotas.admit(client.ip)
    m = usage.live_meter(client, lease if quotas.meters_audio else None)
    if accepted_s is None:
        assert m.charge is None
    else:
        accepted = 0.0
        for _ in range(2000):  # 80 ms frames: at most 160 s
            if not m.charge(0.08):
                break
            accepted += 0.08
        assert accepted == pytest.approx(accepted_s, abs=0.09)
        got_code, message, retry_after = m.on_limit()
        assert got_code == code and message and (retry_after is None) == (code == "session_limit")
    await store.close()


async def test_usage_is_kept_while_the_store_is_down_and_written_when_it_answers():
    from prometheus_client import REGISTRY
    down = RedisStore("redis://127.0.0.1:1/0")  # nothing listens on port 1
    down.redis = redis_client(down.url)
    usage = Usage(config.load({"COST_PER_MINUTE": "1"}), down)
    errors = REGISTRY.get_sample_value("caption_relay_store_errors_total", {"where": "usage"}) or 0
    await usage.charge(ApiClient("k1", "k", "10.0.0.1"), 30.0)  # the job is not failed for it
    await usage.charge(ApiClient("k1", "k", "10.0.0.1"), 15.0)
    assert REGISTRY.get_sample_value("caption_relay_store_errors_total", {"where": "usage"}) == errors + 2
    assert usage.pending == {("api_key", "k1", today()): 45.0, ("ip", "10.0.0.1", today()): 45.0}
    usage.store = up = MemoryStore()  # the store answers again
    await usage.flush()
    assert usage.pending == {}
    assert (await up.usage("api_key", today()))["k1"] == pytest.approx(
        {"today_s": 45.0, "today_cost": 0.75, "total_s": 45.0, "total_cost": 0.75})


# ---- a live session: usage in /sessions, api-key list and /metrics ---------------------------------------


async def test_a_live_session_is_metered_and_its_counters_move(app, sim, session_tmp):
    data = app_data(app, session_tmp)
    key = cli(data, "create", "--name", "metered").stdout.strip()
    # a batch job under the key (charged in this process, into the app's own SQLite file)
    settings = config.load({"COST_PER_MINUTE": str(PRICE)}, data_dir=str(data))
    store = SqliteStore(data / "sessions.sqlite3")
    await store.start()
    usage = Usage(settings, store)
    client = await ApiKeys(settings, store, usage=usage).authenticate(request(bearer(key)))
    await usage.charge(client, 90.0)
    listed = next(line for line in cli(data, "list").stdout.splitlines() if line.startswith("metered "))
    assert listed.split()[5:9] == ["1.50", "1.50", "0.9000", "0.9000"]  # today min, total min, cost today, total

    before = scrape(app)
    cookie = owner_cookie(app)
    speaker = await Socket.open(f"{app.ws}/ws/listen", additional_headers={"Cookie": cookie})
    await speaker.send_audio(0.8)
    ready = await speaker.until(lambda s: s.ready)
    viewer = await Socket.open(f"{app.ws}/ws/watch/{ready['share_url'].removeprefix('/s/')}")
    await viewer.until(lambda v: v.of("snapshot"))
    deadline = time.monotonic() + 10
    while (scrape(app)["caption_relay_sessions_active"], scrape(app)["caption_relay_viewers_connected"]) != (1, 1):
        assert time.monotonic() < deadline, "the gauges never showed the session and its viewer"
        await asyncio.sleep(0.05)  # polled: /metrics has no event to await
    await speaker.send_audio(3.2)
    messages = await speaker.close_stream()
    await viewer.until_closed()
    finals = [m for m in messages if m["type"] == "transcript" and m["final"]]
    assert finals and messages[-1]["type"] == "closed"

    after = scrape(app)
    moved = {name: after.get(name, 0) - before.get(name, 0) for name in (
        "caption_relay_audio_received_seconds_total", "caption_relay_audio_relayed_seconds_total",
        "caption_relay_finals_total", "caption_relay_end_of_turn_seconds_count",
        "caption_relay_upstream_connects_total{backend=deepgram}")}
    assert moved == pytest.approx({
        "caption_relay_audio_received_seconds_total": 4.0, "caption_relay_audio_relayed_seconds_total": 4.0,
        "caption_relay_finals_total": len(finals), "caption_relay_end_of_turn_seconds_count": len(finals),
        "caption_relay_upstream_connects_total{backend=deepgram}": 1}, abs=0.01)
    assert after["caption_relay_sessions_active"] == 0
    deadline = time.monotonic() + 10
    while scrape(app)["caption_relay_viewers_connected"] != 0:  # its socket's handler ends just after the close
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert after["caption_relay_end_of_turn_seconds_sum"] > before.get("caption_relay_end_of_turn_seconds_sum", 0)

    # /sessions: the session's audio minutes and cost, and the total
    mine = json.loads(http("GET", f"{app.http}/api/sessions", {"Cookie": cookie})[2])["sessions"]
    assert len(mine) == 1 and mine[0]["audio_seconds"] == 4.0 and mine[0]["cost"] == pytest.approx(4 / 60 * PRICE)
    page = http("GET", f"{app.http}/sessions", {"Cookie": cookie})[2]
    assert re.search(r'class="audio">0\.07 min</td>\s*<td class="cost">0\.0400</td>', page)
    assert re.search(r'class="total">.*0\.07 min.*0\.0400', page, re.S)

    # the client's IP was charged (written within moments of the session's end), and the key's usage is in
    # the metrics (the same figures as `api-key list`)
    deadline = time.monotonic() + 10
    while (await store.usage("ip", today())).get("127.0.0.1", {}).get("total_s", 0) < 4.0:
        assert time.monotonic() < deadline, "the session's usage was never written"
        await asyncio.sleep(0.05)
    key_id = next(k for k in await store.api_keys() if k["name"] == "metered")["id"]
    await store.close()
    metered = scrape(app)
    assert metered[f"caption_relay_api_key_audio_seconds_total{{id={key_id},key=metered}}"] == 90.0
    assert metered[f"caption_relay_api_key_cost_total{{id={key_id},key=metered}}"] == pytest.approx(0.9)
    assert key not in app.log_text()


async def test_a_dropped_upstream_shows_as_a_failure_a_reconnect_and_replayed_audio(app, sim):
    sim.faults.drop_after_bytes, sim.faults.connections = 20 * 2560, 1  # 1.6 s in, before the first final
    before = scrape(app)
    async with connect(f"{app.ws}/ws/listen", compression=None) as ws:
        reader = asyncio.create_task(collect_until_closed(ws, timeout=30))
        for chunk in frames(tone_pcm(4.0)):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await reader
    assert {"type": "status", "state": "live"} in messages  # it did reconnect
    after = scrape(app)

    def moved(prefix):
        return sum(v for k, v in after.items() if k.startswith(prefix)) - sum(
            v for k, v in before.items() if k.startswith(prefix))
    assert moved("caption_relay_upstream_connects_total") == 2
    assert moved("caption_relay_upstream_reconnects_total") == 1
    assert moved("caption_relay_upstream_failures_total") == 1
    received = moved("caption_relay_audio_received_seconds_total")
    assert received == pytest.approx(4.0, abs=0.01)
    # the open turn's audio went up again on the new connection
    assert moved("caption_relay_audio_relayed_seconds_total") > received + 1.0


# ---- who may read /metrics -------------------------------------------------------------------------


def test_metrics_only_for_loopback_or_the_token(app):
    url = f"{app.http}/metrics"
    outside = {"X-Forwarded-For": "203.0.113.7"}  # the app's TRUSTED_PROXIES is 127.0.0.1: this is the client
    cases = [  # (headers, status)
        ({}, 200),
        (outside, 403),
        ({**outside, **bearer(METRICS_TOKEN)}, 200),
        ({**outside, **bearer("wrong")}, 401),
        (bearer("wrong"), 401),
        ({"X-Forwarded-For": "127.0.0.1"}, 200),
    ]
    for headers, status in cases:
        got, _, body = http("GET", url, headers)
        assert got == status, (headers, body)
    assert METRICS_TOKEN not in app.log_text()


async def test_an_api_key_sent_to_the_app_never_reaches_its_log(app, session_tmp):
    key = cli(app_data(app, session_tmp), "create", "--name", "logged").stdout.strip()
    assert http("GET", f"{app.http}/metrics?api_key={key}", bearer(key))[0] == 401  # not the metrics token
    async with connect(f"{app.ws}/ws/listen?api_key={key}", compression=None, additional_headers=bearer(key)) as ws:
        messages = await collect_until_closed(ws)
    assert messages[0]["code"] == "bad_request" and key not in json.dumps(messages)
    log = app.log_text()  # LOG_LEVEL=debug: uvicorn's socket lines name the path and query
    assert "api_key=[redacted]" in log and key not in log and key[4:20] not in log


def test_api_key_query_parameter_is_redacted_from_logs():
    import logging

    from webapp.logs import JsonFormatter
    key = "crk_" + "Zq9" * 14 + "x"
    raw = f'127.0.0.1:5 - "WebSocket /v1/realtime?model=deepgram/flux&api_key={key}&encoding=linear16" [accepted]'
    line = JsonFormatter().format(logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, raw, (), None))
    assert key not in line and "api_key=[redacted]&encoding=linear16" in line


# ---- several worker processes: one /metrics for all of them ------------------------------------------------


async def test_workers_share_one_metrics_page(simulator, session_tmp, redis_url):
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "UPSTREAM_RETRY_SECONDS": "0", "REDIS_URL": redis_url}
    app = start_app(env, session_tmp, "apikeys-workers",
                    argv=["-m", "webapp", "--workers", "2", "--host", "127.0.0.1", "--port", "{port}"])
    try:
        for _ in range(4):  # the kernel spreads the sockets over the workers
            async with connect(f"{app.ws}/ws/listen", compression=None) as ws:
                reader = asyncio.create_task(collect_until_closed(ws, timeout=30))
                for chunk in frames(tone_pcm(1.0)):
                    await ws.send(chunk)
                await ws.send(json.dumps({"type": "CloseStream"}))
                await reader
        # whichever worker answers, the page counts all four sessions' audio
        # (all ten connections reaching one of the two workers: about one run in 500)
        seen = [scrape(app)["caption_relay_audio_received_seconds_total"] for _ in range(6)]
        assert seen == pytest.approx([4.0] * 6, abs=0.01)
    finally:
        stop_app(app)
