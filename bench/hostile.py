"""Hostile probes (issue 17): the attacks and faults of "Trust under fire", each against the app as a black box.

    .venv/bin/python bench/hostile.py             # every probe, a table: probe | item | held/broken | measured
    .venv/bin/python bench/hostile.py flap nan    # only the probes whose name contains one of these words
    .venv/bin/python bench/hostile.py --app-dir ../other-checkout   # the app of another checkout, same probes

Each probe starts what it needs - the app as users run it (`python -m webapp` on a free 127.0.0.1 port, its own
DATA_DIR), the upstream simulator of tests/simulator.py (its HOSTILE MODES), a real redis-server - attacks it over
HTTP / WebSocket / raw TCP, stops everything it started, and returns held or broken with the figure it measured.
Every probe is bounded in count and time (about 20 s at most), loopback only. tests/test_hostile.py runs the same
list, one test per probe, each asserting `held`. Item 7 (browser flows) is proven by the Chromium tests instead.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import server as http_server
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO   # where `python -m webapp` runs (--app-dir: another checkout's code)
sys.path.insert(0, str(REPO / "tests"))

from simulator import HostileSimulator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

KEY = "dg-hostile-key-0123456789abcdef"
FRAME = 2560                     # 80 ms of 16 kHz 16-bit mono
BYTES_PER_S = 32000


# ---- results ------------------------------------------------------------------------------------------

@dataclass
class Result:
    held: bool
    figure: str


@dataclass
class Probe:
    name: str
    item: str
    run: Callable[[], Result]

    def check(self) -> Result:
        return self.run()


# ---- parts: the app, the simulator, redis-server, clients ------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tone(seconds: float) -> bytes:
    n = int(seconds * 16000)
    return b"".join(((i * 37) % 2000 - 1000).to_bytes(2, "little", signed=True) for i in range(n))


def chunks(pcm: bytes) -> list[bytes]:
    return [pcm[i:i + FRAME] for i in range(0, len(pcm), FRAME)]


class App:
    """`python -m webapp` with `env` (over a clean environment) on a free port, logging to a temp file."""

    def __init__(self, env: dict[str, str], wait: bool = True, timeout: float = 20.0):
        self.tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
        self.port = free_port()
        self.log_path = self.tmp / "app.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("STT_", "AIGATEWAY_", "DEEPGRAM_", "LOCAL_"))
                and k not in ("ACCESS_TOKEN", "ALLOWED_ORIGINS", "REDIS_URL", "TRUSTED_PROXIES")}
        full.update({"DATA_DIR": str(self.tmp / "data"), "LOG_LEVEL": "debug", "PYTHONDONTWRITEBYTECODE": "1"}, **env)
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "webapp", "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=APP_DIR, env=full, stdout=self.log_file, stderr=subprocess.STDOUT)
        if wait and not self.wait_healthy(timeout):
            self.__exit__()
            raise RuntimeError(f"app did not start:\n{self.log()[-3000:]}")

    def wait_healthy(self, timeout: float) -> bool:
        """True once /healthz answers 200; False if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.http}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)  # polling a starting process: there is no event to await
        return False

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, grace: float = 5.0) -> float:
        """SIGTERM, then SIGKILL after `grace` s; returns the seconds until the process was gone."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        took = time.monotonic() - t0
        self.log_file.close()
        return took

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # a probe that wanted a graceful stop did it itself; a frozen app must not linger
            self.proc.wait()
        self.log_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def flux_env(sim: HostileSimulator, **extra) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY, "DEEPGRAM_URL": f"{sim.url}/v2/listen",
            "UPSTREAM_RETRY_SECONDS": "0", **{k: str(v) for k, v in extra.items()}}


class Sim:
    def __init__(self, mode: str | None = None):
        self.sim = HostileSimulator(mode)

    def __enter__(self) -> HostileSimulator:
        return self.sim.start()

    def __exit__(self, *exc) -> None:
        self.sim.stop()


class Redis:
    """A real redis-server on `port` (a free one by default), no persistence."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in self.proc.stdout:  # its own log line says when it serves
            seen.append(line)
            if "Ready to accept connections" in line:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained
                return
        raise RuntimeError("redis-server did not start:\n" + "".join(seen))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http(method: str, url: str, headers: dict | None = None, data: bytes | None = None, timeout: float = 5.0):
    """(status, headers, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode(errors="replace")


def healthz_ms(app: App, timeout: float = 3.0) -> float:
    """Milliseconds for /healthz to answer (any status); `timeout` (as ms) if it does not."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"{app.http}/healthz", timeout=timeout) as r:
            r.read()
        ok = True
    except urllib.error.HTTPError:
        ok = True   # an answer (a 503 "degraded" is one): what is measured is that the server answers
    except OSError:
        ok = False
    return (time.monotonic() - t0) * 1000 if ok else timeout * 1000


class Socket:
    """A WebSocket client that records every raw message and lets a probe await a condition on them."""

    def __init__(self, ws):
        self.ws = ws
        self.raw: list[str] = []
        self.messages: list[dict] = []
        self.closed = False
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, headers=None, **kw) -> Socket:
        return cls(await connect(url, compression=None, additional_headers=headers or {}, open_timeout=5, **kw))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.raw.append(raw if isinstance(raw, str) else repr(raw))
                try:
                    self.messages.append(json.loads(raw))
                except ValueError:
                    self.messages.append({"type": "?unparsable", "raw": raw})
                self.changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.changed.set()

    async def until(self, predicate, timeout: float) -> bool:
        """True once predicate(self) holds; False on timeout or when the socket closed before it did."""
        async def wait():
            while not predicate(self):
                if self.closed:
                    return False
                self.changed.clear()
                await self.changed.wait()
            return True
        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            return False

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def ready(self) -> dict | None:
        return next(iter(self.of("ready")), None)

    def codes(self) -> list[str]:
        return [m.get("code") for m in self.of("error")]

    async def send_audio(self, seconds: float) -> None:
        for chunk in chunks(tone(seconds)):
            await self.ws.send(chunk)

    async def close(self) -> None:
        self.task.cancel()
        self.ws.transport.abort()


def owner_cookie(app: App) -> str:
    _, headers, _ = http("GET", app.http + "/")
    cookie = headers.get("Set-Cookie", "")
    return cookie.split(";")[0]


# ---- item 1: a Redis outage ----------------------------------------------------------------------------

def probe_redis_outage() -> Result:
    """Kill redis-server (SIGKILL) under a running session: /healthz must answer < 1 s, the app must not spin a
    core, and SIGTERM must end it < 5 s (Redis back on the same port by then)."""
    with Sim() as sim:
        redis = Redis()
        try:
            with App(flux_env(sim, REDIS_URL=redis.url)) as app:
                async def run():
                    speaker = await Socket.open(f"{app.ws}/ws/listen")
                    await speaker.until(lambda s: s.ready, 5)
                    token = speaker.ready.get("share_url", "/s/")[3:]
                    viewer = await Socket.open(f"{app.ws}/ws/watch/{token}")
                    await viewer.until(lambda v: v.of("snapshot"), 5)
                    await speaker.send_audio(1.0)
                    redis.kill()
                    await asyncio.sleep(1.5)  # the outage goes on; the listener has noticed by now
                    cpu0, t0 = app.cpu_seconds(), time.monotonic()
                    ms = await asyncio.to_thread(healthz_ms, app, 3.0)
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))  # a CPU sample of >= 1 s
                    cpu = (app.cpu_seconds() - cpu0) / (time.monotonic() - t0)
                    await speaker.close()
                    await viewer.close()
                    return ms, cpu
                ms, cpu = asyncio.run(run())
                back = Redis(redis.port)  # Redis returns on the same port
                try:
                    exit_s = app.stop(grace=6.0)
                finally:
                    back.kill()
        finally:
            redis.kill()
    held = ms < 1000 and cpu < 0.5 and exit_s < 5
    ms_text = f"no answer in {ms / 1000:.0f} s" if ms >= 3000 else f"{ms:.0f} ms"
    exit_text = "ignored (SIGKILLed after 6 s)" if exit_s >= 6 else f"exit after {exit_s:.1f} s"
    return Result(held, f"/healthz {ms_text}, app CPU {cpu * 100:.0f}% of a core, SIGTERM {exit_text}")


# ---- item 2: a client that does not read ------------------------------------------------------------------

FLOOD_FRAMES = 100_000


def probe_nonreading_flood() -> Result:
    """100,000 one-byte frames from a socket that never reads, beside a normal session: /healthz < 1 s throughout,
    and the normal session's first final arrives < 2 s after its audio was sent."""
    with Sim() as sim, App(flux_env(sim)) as app:
        async def run():
            normal = await Socket.open(f"{app.ws}/ws/listen")
            await normal.until(lambda s: s.ready, 5)
            # max_queue=1: the client stops reading its socket after one message, as a stuck page does
            hostile = await connect(f"{app.ws}/ws/listen", compression=None, max_queue=1, open_timeout=5)

            async def flood():
                for _ in range(FLOOD_FRAMES):
                    await hostile.send(b"\x00")

            flooding = asyncio.create_task(flood())
            worst = [0.0]
            stop = threading.Event()

            def poll():
                while not stop.is_set():
                    worst[0] = max(worst[0], healthz_ms(app, 3.0))
                    stop.wait(0.1)
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            try:
                await asyncio.wait_for(asyncio.shield(flooding), 6)
            except (TimeoutError, ConnectionClosed):
                pass
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(normal.send_audio(2.56), 5)  # 32 frames: the first turn is final at 2.5 s
                got = await normal.until(lambda s: any(m.get("final") for m in s.of("transcript")), 5)
                final_s = time.monotonic() - t0 if got else float("inf")  # from its first frame: sending counts
            except (TimeoutError, ConnectionClosed):
                final_s = float("inf")
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))  # poll /healthz a moment longer
            stop.set()
            await asyncio.to_thread(poller.join, 5)
            flooding.cancel()
            hostile.transport.abort()
            await normal.close()
            return worst[0], final_s
        worst, final_s = asyncio.run(run())
    held = worst < 1000 and final_s < 2
    final = "no final in 5 s" if math.isinf(final_s) else f"its final after {final_s:.2f} s"
    return Result(held, f"/healthz worst {worst:.0f} ms; a normal session's 2.56 s of audio (sent at once) -> {final}")


# ---- item 3: a flapping upstream -----------------------------------------------------------------------------

FLAP_RETRY_S = 2
FLAP_MAX_CONNECTIONS = 20


def probe_flapping_upstream() -> Result:
    """An upstream that accepts and then fails every connection, UPSTREAM_RETRY_SECONDS=2: the relay makes at most
    20 connections in the 8 s watched, and the page gets upstream_unavailable and closed."""
    with Sim("hostile_flap") as sim, App(flux_env(sim, UPSTREAM_RETRY_SECONDS=FLAP_RETRY_S)) as app:
        async def run():
            page = await Socket.open(f"{app.ws}/ws/listen")
            await page.send_audio(1.0)
            await page.until(lambda s: s.of("closed"), 8)
            await page.close()
            return page
        page = asyncio.run(run())
        conns = len(sim.records)
        replayed = sum(len(r.audio) for r in sim.records) / BYTES_PER_S
    outcome = page.codes()[-1:] + [m.get("reason") for m in page.of("closed")]
    held = conns <= FLAP_MAX_CONNECTIONS and "upstream_unavailable" in page.codes() and bool(page.of("closed"))
    return Result(held, f"{conns} connections, {replayed:.1f} s of audio sent upstream for 1.0 s spoken, "
                        f"page got {outcome or 'no error, no closed in 8 s'}")


# ---- item 4: the key in an upstream's error text --------------------------------------------------------------

def probe_key_echo() -> Result:
    """An upstream whose Error message (and, second session, whose HTTP 401 body) echoes the Authorization header:
    no browser message may contain the key."""
    leaks = []
    for mode in ("hostile_echo_key", "hostile_echo_key_http"):
        with Sim(mode) as sim, App(flux_env(sim)) as app:
            async def run():
                page = await Socket.open(f"{app.ws}/ws/listen")
                await page.send_audio(0.2)
                await page.until(lambda s: s.of("closed"), 5)
                await page.close()
                return page
            page = asyncio.run(run())
            if any(KEY in raw for raw in page.raw):
                leaks.append(mode.replace("hostile_echo_key", "Error message").replace("Error message_http", "HTTP 401"))
    return Result(not leaks, f"key reached the browser via: {', '.join(leaks)}" if leaks else "key never sent to the browser")


# ---- item 5: minute quota vs parallel sessions -----------------------------------------------------------------

QUOTA_SLACK_S = 5.0


def probe_parallel_quota() -> Result:
    """Three parallel sessions of one client, 50 s of audio each, CLIENT_MINUTES_PER_DAY=1: at most 60 s + a few
    seconds reach the upstream."""
    with Sim() as sim, App(flux_env(sim, CLIENT_MINUTES_PER_DAY=1)) as app:
        async def one():
            page = await Socket.open(f"{app.ws}/ws/listen")
            await page.until(lambda s: s.ready or s.of("closed"), 5)
            try:
                for chunk in chunks(tone(50.0)):
                    if page.closed:
                        break
                    await page.ws.send(chunk)
                await page.ws.send(json.dumps({"type": "CloseStream"}))
            except ConnectionClosed:
                pass
            await page.until(lambda s: s.of("closed"), 10)
            await page.close()
            return page

        async def run():
            return await asyncio.gather(one(), one(), one())
        pages = asyncio.run(run())
        relayed = sum(len(r.audio) for r in sim.records) / BYTES_PER_S
    stopped = sum(1 for p in pages if {"quota_exceeded", "session_limit"} & set(p.codes()))
    held = relayed <= 60 + QUOTA_SLACK_S
    return Result(held, f"{relayed:.1f} s relayed against a 60 s allowance ({stopped}/3 sessions told quota_exceeded)")


# ---- item 6: credentials -------------------------------------------------------------------------------------

async def _drop_after_ready(app: App, cookie: str | None) -> dict:
    """A capture session with `cookie` whose socket drops (no close frame) once it is ready: returns `ready`."""
    page = await Socket.open(f"{app.ws}/ws/listen", {"Cookie": cookie} if cookie else {})
    await page.until(lambda s: s.ready, 5)
    await page.send_audio(0.5)
    ready = page.ready
    await page.close()
    return ready


async def _resume(app: App, token: str, cookie: str | None) -> Socket:
    page = await Socket.open(f"{app.ws}/ws/listen?resume={token}", {"Cookie": cookie} if cookie else {})
    await page.until(lambda s: s.ready or s.of("closed"), 5)
    return page


def probe_resume_other_owner() -> Result:
    """A resume token presented by a browser with another owner cookie is refused."""
    with Sim() as sim, App(flux_env(sim)) as app:
        owner, stranger = owner_cookie(app), owner_cookie(app)

        async def run():
            ready = await _drop_after_ready(app, owner)
            page = await _resume(app, ready["resume_token"], stranger)
            await page.close()
            return page
        page = asyncio.run(run())
    took = bool(page.ready)
    return Result(not took, "stranger resumed (took over) the session" if took else f"refused: {page.codes()}")


def probe_resume_token_reuse() -> Result:
    """A resume token is spent once used: presenting it a second time (same owner) is refused."""
    with Sim() as sim, App(flux_env(sim)) as app:
        owner = owner_cookie(app)

        async def run():
            ready = await _drop_after_ready(app, owner)
            first = await _resume(app, ready["resume_token"], owner)
            await first.send_audio(0.2) if first.ready else None
            await first.close()
            second = await _resume(app, ready["resume_token"], owner)
            await second.close()
            return first, second
        first, second = asyncio.run(run())
    reused = bool(second.ready)
    return Result(bool(first.ready) and not reused, f"first use {'resumed' if first.ready else 'refused'}, second use "
                              f"{'resumed again' if reused else 'refused: ' + str(second.codes())}")


def probe_foreign_host() -> Result:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends `Host: evil.example:<port>`
    and a matching Origin; it is refused over HTTP and WebSocket."""
    with Sim() as sim, App(flux_env(sim)) as app:
        evil = f"evil.example:{app.port}"
        status, _, _ = http("GET", app.http + "/", {"Host": evil})

        async def run():
            sock = socket.create_connection(("127.0.0.1", app.port), timeout=5)  # "DNS" answers 127.0.0.1
            sock.setblocking(False)
            try:
                page = Socket(await connect(f"ws://{evil}/ws/listen", sock=sock, origin=f"http://{evil}",
                                            compression=None, open_timeout=5))
            except InvalidStatus as exc:
                return f"HTTP {exc.response.status_code}"
            except (OSError, ConnectionClosed) as exc:
                return f"refused ({type(exc).__name__})"
            await page.until(lambda s: s.ready or s.of("closed"), 5)
            await page.close()
            return "ready (a session on the server's key)" if page.ready else f"refused: {page.codes()}"
        ws = asyncio.run(run())
    held = status >= 400 and not ws.startswith("ready")
    return Result(held, f"HTTP GET / -> {status}; WS /ws/listen -> {ws}")


def probe_tokens_in_logs() -> Result:
    """After a session with an owner cookie, a viewer on its share link and a resume, the app's log (LOG_LEVEL=debug)
    holds no resume token, share token, cookie value or key."""
    with Sim() as sim, App(flux_env(sim)) as app:
        cookie = owner_cookie(app)

        async def run():
            page = await Socket.open(f"{app.ws}/ws/listen", {"Cookie": cookie})
            await page.until(lambda s: s.ready, 5)
            ready = page.ready
            share = ready.get("share_url", "/s/")[3:]
            viewer = await Socket.open(f"{app.ws}/ws/watch/{share}", {"Cookie": cookie})
            await viewer.until(lambda v: v.of("snapshot"), 5)
            await page.send_audio(0.5)
            await page.close()
            again = await _resume(app, ready["resume_token"], cookie)
            await again.ws.send(json.dumps({"type": "CloseStream"}))
            await again.until(lambda s: s.of("closed"), 5)
            await again.close()
            await viewer.close()
            return ready, share
        ready, share = asyncio.run(run())
        http("GET", f"{app.http}/s/{share}", {"Cookie": cookie})
        app.stop()  # the shutdown's lines too
        log = app.log_path.read_text(errors="replace")
    secrets = {"resume token": ready["resume_token"], "share token": share, "cookie": cookie.split("=", 1)[-1], "key": KEY}
    found = [name for name, value in secrets.items() if value and value in log]
    return Result(not found, f"log holds: {', '.join(found)}" if found else f"no credential in {len(log.splitlines())} log lines")


LOGIN_TRIES = 10


def hidden_fields(page: str) -> dict[str, str]:
    """name -> value of every <input type="hidden"> of a page (whatever the attribute order)."""
    out = {}
    for tag in re.findall(r"<input\b[^>]*>", page):
        attrs = dict(re.findall(r'([\w-]+)\s*=\s*"([^"]*)"', tag))
        if attrs.get("type") == "hidden" and attrs.get("name"):
            out[attrs["name"]] = attrs.get("value", "")
    return out


def probe_login_guessing() -> Result:
    """Ten wrong ACCESS_TOKEN guesses from one client: some answer is 429 (throttled)."""
    with Sim() as sim, App(flux_env(sim, ACCESS_TOKEN="the-right-token-0123456789")) as app:
        statuses = []
        for i in range(LOGIN_TRIES):
            # Look like a browser submitting the page's form: its hidden fields (a CSRF token, if any) too.
            status, headers, page = http("GET", app.http + "/")
            cookie = "; ".join(c.split(";")[0] for c in headers.get_all("Set-Cookie") or [])
            form = hidden_fields(page)
            form["token"] = f"guess-{i}"
            body = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in form.items()).encode()
            status, _, _ = http("POST", app.http + "/login", {
                "Content-Type": "application/x-www-form-urlencoded", "Origin": app.http, "Sec-Fetch-Site": "same-origin",
                **({"Cookie": cookie} if cookie else {})}, body)
            statuses.append(status)
            if status == 429:
                break
    held = 429 in statuses
    return Result(held, f"{len(statuses)} wrong guesses answered {', '.join(map(str, statuses))}")


def probe_forwarded_for() -> Result:
    """Behind a trusted proxy the client is the rightmost untrusted X-Forwarded-For entry of ALL header lines: two
    sessions whose first line is spoofed differently but whose proxy-appended line is the same client count as one
    client (MAX_STREAMS_PER_CLIENT=1)."""
    with Sim() as sim, App(flux_env(sim, TRUSTED_PROXIES="127.0.0.1", MAX_STREAMS_PER_CLIENT=1)) as app:
        async def run():
            a = await Socket.open(f"{app.ws}/ws/listen", [("X-Forwarded-For", "203.0.113.1"),
                                                          ("X-Forwarded-For", "198.51.100.7")])
            await a.until(lambda s: s.ready, 5)
            b = await Socket.open(f"{app.ws}/ws/listen", [("X-Forwarded-For", "203.0.113.2"),
                                                          ("X-Forwarded-For", "198.51.100.7")])
            await b.until(lambda s: s.ready or s.of("closed"), 5)
            await a.close()
            await b.close()
            return a, b
        a, b = asyncio.run(run())
    held = bool(a.ready) and not b.ready and "too_many_streams" in b.codes()
    return Result(held, "second session of 198.51.100.7 " + ("refused: too_many_streams" if held else
                        "admitted (client taken from the first, spoofed line)" if b.ready else f"got {b.codes()}"))


def probe_secure_cookie_behind_tls() -> Result:
    """Behind a TLS proxy (TRUSTED_PROXIES, `X-Forwarded-Proto: https`) every cookie the page sets is `Secure`."""
    with Sim() as sim, App(flux_env(sim, TRUSTED_PROXIES="127.0.0.1")) as app:
        _, headers, _ = http("GET", app.http + "/", {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"})
        cookies = headers.get_all("Set-Cookie") or []
    insecure = [c.split("=", 1)[0] for c in cookies if "secure" not in [a.strip().lower() for a in c.split(";")]]
    held = bool(cookies) and not insecure
    return Result(held, f"{len(cookies)} cookies set, without Secure: {', '.join(insecure) or 'none'}")


def probe_new_link_drops_old_viewer() -> Result:
    """After "New link" (POST /api/sessions/<id>/share), a viewer still on the old link is disconnected < 3 s."""
    with Sim() as sim, App(flux_env(sim)) as app:
        cookie = owner_cookie(app)

        async def run():
            page = await Socket.open(f"{app.ws}/ws/listen", {"Cookie": cookie})
            await page.until(lambda s: s.ready, 5)
            old = page.ready["share_url"][3:]
            viewer = await Socket.open(f"{app.ws}/ws/watch/{old}")
            await viewer.until(lambda v: v.of("snapshot"), 5)
            status, _, _ = await asyncio.to_thread(
                http, "POST", f"{app.http}/api/sessions/{page.ready['session_id']}/share",
                {"Cookie": cookie, "Origin": app.http, "Sec-Fetch-Site": "same-origin"}, b"")
            t0 = time.monotonic()
            await viewer.until(lambda v: False, 3)   # returns when the viewer's socket closes, or after 3 s
            gone = time.monotonic() - t0 if viewer.closed else None
            await viewer.close()
            await page.close()
            return status, gone
        status, gone = asyncio.run(run())
    held = status in (200, 201) and gone is not None
    return Result(held, f"new link: HTTP {status}; old-link viewer " +
                  (f"disconnected after {gone:.2f} s" if gone is not None else "still connected after 3 s"))


# ---- item 8: smaller holes -------------------------------------------------------------------------------------

def probe_unicode_digits_param() -> Result:
    """`eot_timeout_ms=²` (a Unicode digit) is answered with bad_request and closed."""
    with Sim() as sim, App(flux_env(sim)) as app:
        async def run():
            page = await Socket.open(f"{app.ws}/ws/listen?eot_timeout_ms=%C2%B2")
            await page.until(lambda s: s.of("closed"), 5)
            await page.close()
            return page
        page = asyncio.run(run())
        crashed = "Traceback" in app.log()
    held = page.codes()[:1] == ["bad_request"] and bool(page.of("closed"))
    got = [m.get("type") + ":" + str(m.get("code", m.get("reason"))) for m in page.messages][:3]
    return Result(held, (f"got {', '.join(got)}" if got else "socket closed without a message")
                  + ("; traceback in the log" if crashed else ""))


def probe_embed_font_size() -> Result:
    """`/embed?font_size=²` is answered as bad input, not a 500."""
    with Sim() as sim, App(flux_env(sim)) as app:
        status, _, _ = http("GET", f"{app.http}/embed?font_size=%C2%B2")
    return Result(status < 500, f"HTTP {status}")


def probe_bad_local_setting() -> Result:
    """`LOCAL_BEAMS=abc` stops the app at start-up with a message naming LOCAL_BEAMS (embedded backend)."""
    app = App({"STT_BACKEND": "local", "LOCAL_BEAMS": "abc"}, wait=False)
    try:
        started = app.wait_healthy(15)
        if not started:
            try:
                app.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        code = app.proc.poll()
        log = app.log()
    finally:
        app.__exit__()
    named = "LOCAL_BEAMS" in log
    held = not started and code not in (None, 0) and named
    return Result(held, "app started and serves" if started else
                  f"exit {code}, message {'names' if named else 'does not name'} LOCAL_BEAMS")


SLOWLORIS_SOCKETS = 20
SLOWLORIS_WINDOW_S = 12.0


def probe_slowloris() -> Result:
    """20 sockets that send a request's headers one byte a second: the server closes them within 12 s."""
    with Sim() as sim, App(flux_env(sim)) as app:
        socks = []
        for _ in range(SLOWLORIS_SOCKETS):
            s = socket.create_connection(("127.0.0.1", app.port), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.setblocking(False)
            socks.append(s)
        t0, closed_at = time.monotonic(), {}
        while len(closed_at) < len(socks) and time.monotonic() - t0 < SLOWLORIS_WINDOW_S:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    if s.recv(4096) == b"":
                        closed_at[i] = time.monotonic() - t0
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - t0
                    continue
                try:
                    s.send(b"X")   # one more byte of a header that never ends
                except OSError:
                    closed_at[i] = time.monotonic() - t0
            time.sleep(1.0)  # the attack's own pace: one byte a second
        for s in socks:
            s.close()
        ms = healthz_ms(app)
    held = len(closed_at) == len(socks)
    when = f", the last after {max(closed_at.values()):.1f} s" if closed_at else ""
    return Result(held, f"{len(closed_at)}/{len(socks)} closed by the server within {SLOWLORIS_WINDOW_S:.0f} s{when}; "
                        f"/healthz {ms:.0f} ms")


NAN_MAX_CONNECTIONS = 3
SECOND_TURN = "Second turn here."


def probe_nan_times() -> Result:
    """An upstream whose first turn has the times "NaN" (then, second run, "Infinity"), UPSTREAM_RETRY_SECONDS=5: the
    relay does not loop reconnecting (<= 3 connections), the sound second turn's final reaches the page, and no
    browser message carries NaN/Infinity (not JSON)."""
    problems, figures = [], []
    for mode in ("hostile_nan", "hostile_inf"):
        with Sim(mode) as sim, App(flux_env(sim, UPSTREAM_RETRY_SECONDS=5)) as app:
            async def run():
                page = await Socket.open(f"{app.ws}/ws/listen")
                await page.until(lambda s: s.ready, 5)
                await page.send_audio(4.4)   # turn 1 ends at 2.5 s of audio, turn 2 at 3.8 s
                await page.until(lambda s: any(m.get("final") and m.get("text") == SECOND_TURN
                                               for m in s.of("transcript")), 4)
                await page.close()
                return page
            page = asyncio.run(run())
            conns = len(sim.records)
        bad = sum(1 for raw in page.raw if re.search(r"\bNaN\b|Infinity", raw))
        second = any(m.get("final") and m.get("text") == SECOND_TURN for m in page.of("transcript"))
        word = mode.split("_")[1]
        if conns > NAN_MAX_CONNECTIONS or bad or not second:
            problems.append(word)
        figures.append(f"{word}: {conns} connections, second turn {'delivered' if second else 'lost'}"
                       + (f", {bad} messages with NaN/Infinity" if bad else ""))
    return Result(not problems, "; ".join(figures))


# ---- issue 21: the surfaces added since (outputs, names, search, keys, metrics, uploads) -------------------

OUTPUT_PREFIX_PATH = "/captions"


async def _owned_session(app: App, cookie: str) -> tuple[Socket, dict]:
    """A live capture session of the owner `cookie`: its socket and `ready`."""
    page = await Socket.open(f"{app.ws}/ws/listen", {"Cookie": cookie})
    await page.until(lambda s: s.ready, 5)
    return page, page.ready or {}


def _json(method: str, url: str, cookie: str, body=None, origin: str | None = None):
    headers = {"Cookie": cookie, "Content-Type": "application/json", **({"Origin": origin} if origin else {})}
    status, _, text = http(method, url, headers, None if body is None else json.dumps(body).encode())
    return status, text


# Output URLs that must NOT pass when OUTPUT_ALLOWED_URLS is "https://hooks.example.org/captions,
# http://127.0.0.1:<port>/captions": each reaches another host, port or path than the prefix allows.
def _ssrf_urls(port: int) -> list[str]:
    loop = f"http://127.0.0.1:{port}"
    return [
        "https://hooks.example.org.evil.com/captions",       # a prefix of the host name
        "https://hooks.example.org@evil.com/captions",       # userinfo: the host is evil.com
        "https://hooks.example.org:x@evil.com/captions",
        "https://evil.com\\@hooks.example.org/captions",     # a backslash parsers disagree about
        "https://hooks.example.org./captions",               # a trailing dot
        "https://hooks%2eexample.org/captions",              # percent-encoding in the host
        "https://hooks.example.org:8443/captions",           # another port
        "http://hooks.example.org/captions",                 # another scheme
        "https://hooks.example.org/captions/../admin",       # dot segments: httpx posts to /admin
        "https://hooks.example.org/captions/%2e%2e/admin",   # the same, percent-encoded (receivers decode it)
        "https://hooks.example.org/captions/..%2fadmin",
        "https://hooks.example.org/captionsx",               # a path-segment boundary
        f"{loop}/captions/../metrics",
        f"http://localhost:{port}/captions",                 # other names and forms of loopback
        f"http://127.0.0.1.nip.io:{port}/captions",
        f"http://2130706433:{port}/captions",
        f"http://0x7f000001:{port}/captions",
        f"http://0177.0.0.1:{port}/captions",
        f"http://[::1]:{port}/captions",
        f"http://[::ffff:127.0.0.1]:{port}/captions",
        f"http://127.1:{port}/captions",
        f"http://0.0.0.0:{port}/captions",
        f"http://127.0.0.1:{port + 1}/captions",
        "http://169.254.169.254/latest/meta-data",
        f"{loop}/captions\r\nX-Evil: 1",                     # header / request-line injection
        f" {loop}/../captions",
    ]


def probe_output_ssrf() -> Result:
    """The owner API refuses every output URL that reaches another place than OUTPUT_ALLOWED_URLS allows (prefix
    tricks, userinfo, loopback spellings, dot segments, encodings); the allowed one is taken as a control; and
    whatever an accepted URL is, httpx (what posts) goes to the allowed host, port and path."""
    import httpx

    port = free_port()
    allowed = f"https://hooks.example.org{OUTPUT_PREFIX_PATH},http://127.0.0.1:{port}{OUTPUT_PREFIX_PATH}"
    with Sim() as sim, App(flux_env(sim, OUTPUT_ALLOWED_URLS=allowed)) as app:
        cookie = owner_cookie(app)

        async def run():
            page, ready = await _owned_session(app, cookie)
            url = f"{app.http}/api/sessions/{ready.get('session_id')}/outputs"
            control = await asyncio.to_thread(_json, "POST", url, cookie,
                                              {"type": "webhook", "url": f"http://127.0.0.1:{port}/captions/a"})
            passed = []
            for bad in _ssrf_urls(port):
                status, _ = await asyncio.to_thread(_json, "POST", url, cookie, {"type": "webhook", "url": bad})
                if status < 400:
                    target = httpx.URL(bad.strip())
                    under = target.host in ("hooks.example.org", "127.0.0.1") and target.path.startswith("/captions/")
                    passed.append(f"{bad!r} ({status}, posts to {target.host}:{target.port}{target.path}"
                                  f"{'' if under else ' OUTSIDE the prefix'})")
            await page.close()
            return control, passed
        control, passed = asyncio.run(run())
    held = control[0] == 201 and not passed
    n = len(_ssrf_urls(port))
    return Result(held, f"control {control[0]}; {n - len(passed)}/{n} tricks refused" +
                  (f"; accepted: {'; '.join(passed)}" if passed else ""))


def probe_output_count_and_secret() -> Result:
    """More outputs than a session may have are refused (409), and a secret (the URL's query, its path after the
    first segment, a webhook's own signing secret, an OBS password) is in no API answer and not in the log."""
    port = free_port()
    secret = "SeCrEt0123456789stream-key"
    allowed = f"http://127.0.0.1:{port}/,ws://127.0.0.1:{port}/"
    with Sim() as sim, App(flux_env(sim, OUTPUT_ALLOWED_URLS=allowed)) as app:
        cookie = owner_cookie(app)

        async def run():
            page, ready = await _owned_session(app, cookie)
            url = f"{app.http}/api/sessions/{ready.get('session_id')}/outputs"
            statuses, answers = [], []
            for body in ({"type": "webhook", "url": f"http://127.0.0.1:{port}/h", "secret": secret},
                         {"type": "obs", "url": f"ws://127.0.0.1:{port}", "password": secret}):
                status, text = await asyncio.to_thread(_json, "POST", url, cookie, body)
                statuses.append(status)
                answers.append(text)
            for i in range(40):
                status, text = await asyncio.to_thread(_json, "POST", url, cookie, {
                    "type": "webhook", "url": f"http://127.0.0.1:{port}/hook/{secret}/{i}?token={secret}"})
                statuses.append(status)
                answers.append(text)
                if status == 409:
                    break
            answers.append((await asyncio.to_thread(_json, "GET", url, cookie))[1])
            await page.close()
            return statuses, answers
        statuses, answers = asyncio.run(run())
        log = app.log()
    created = statuses.count(201)
    leaked = [i for i, a in enumerate(answers) if secret in a]
    held = 409 in statuses and created <= 16 and not leaked and secret not in log
    return Result(held, f"{created} outputs made, then {statuses[-1]}; secret in {len(leaked)} answers"
                        f"{', and in the log' if secret in log else ''}")


# (tabs and NEL are whitespace: a name's runs of whitespace become one space, so they are not here)
NAME_TRICKS = ["report\u202egpj.exe", "a\u2066b\u2069", "x\u202d", "bell\x07", "nul\x00", "del\x7f", "csi\x9b"]


def probe_session_name_controls() -> Result:
    """Session names with control or text-direction (bidi override/isolate) characters are refused (400) by the
    owner API; a plain name is taken as a control."""
    with Sim() as sim, App(flux_env(sim)) as app:
        cookie = owner_cookie(app)

        async def run():
            page, ready = await _owned_session(app, cookie)
            url = f"{app.http}/api/sessions/{ready.get('session_id')}"
            control = (await asyncio.to_thread(_json, "PATCH", url, cookie, {"name": "Sunday service"}))[0]
            taken = []
            for name in NAME_TRICKS:
                status, _ = await asyncio.to_thread(_json, "PATCH", url, cookie, {"name": name})
                if status < 400:
                    taken.append(name)
            await page.close()
            return control, taken
        control, taken = asyncio.run(run())
    held = control < 300 and not taken
    return Result(held, f"control {control}; taken: {[ascii(n) for n in taken]}" if taken else
                  f"control {control}; all {len(NAME_TRICKS)} refused")


def probe_other_owner_session() -> Result:
    """Another owner cookie can neither delete a session (DELETE /api/sessions/<id>, the /sessions form), rename
    it, fetch its QR code, its transcript, its outputs or rules: each answers 4xx and the session is still there."""
    with Sim() as sim, App(flux_env(sim)) as app:
        owner, stranger = owner_cookie(app), owner_cookie(app)

        async def run():
            page, ready = await _owned_session(app, owner)
            await page.send_audio(0.5)
            await page.ws.send(json.dumps({"type": "CloseStream"}))
            await page.until(lambda s: s.of("closed"), 5)
            await page.close()
            return ready.get("session_id")
        sid = asyncio.run(run())
        base = f"{app.http}/api/sessions/{sid}"
        tries = [("DELETE", base, None), ("PATCH", base, {"name": "mine now"}), ("GET", f"{base}/qr.svg", None),
                 ("GET", f"{base}/transcript.txt", None), ("GET", f"{base}/outputs", None),
                 ("GET", f"{base}/rules", None), ("PUT", f"{base}/rules", {"replacements": []}),
                 ("POST", f"{base}/share", None), ("DELETE", f"{base}/share", None)]
        got = [(m, u.rsplit("/", 1)[-1], _json(m, u, stranger, b, app.http)[0]) for m, u, b in tries]
        form = http("POST", f"{app.http}/sessions/{sid}/delete", {
            "Cookie": stranger, "Origin": app.http, "Content-Type": "application/x-www-form-urlencoded"}, b"")[0]
        still = _json("GET", f"{base}/qr.svg", owner)[0]
    opened = [g for g in got if g[2] < 400]
    held = not opened and still == 200
    return Result(held, f"stranger: {', '.join(f'{m} {p} {s}' for m, p, s in got)}, form delete {form}; "
                        f"owner's QR afterwards {still}")


SEARCHES = ["%", "_", "\\", "%%%%", "a%b", ".*", "(((((a*)*)*)*)*)$", "[", "'; DROP TABLE sessions; --", "x" * 5000]


def probe_search_metacharacters() -> Result:
    """/sessions?q= with LIKE and regex metacharacters matches them literally (none matches a session named
    "plain"), a 5000-character query is answered with what the limit is; every answer < 1 s and no 5xx."""
    with Sim() as sim, App(flux_env(sim)) as app:
        cookie = owner_cookie(app)

        async def run():
            page, ready = await _owned_session(app, cookie)
            await asyncio.to_thread(_json, "PATCH", f"{app.http}/api/sessions/{ready.get('session_id')}", cookie,
                                    {"name": "plain"})
            await page.close()
        asyncio.run(run())
        rows, worst = [], 0.0
        for q in SEARCHES:
            t0 = time.monotonic()
            status, _, body = http("GET", f"{app.http}/sessions?q={urllib.request.quote(q)}", {"Cookie": cookie})
            worst = max(worst, time.monotonic() - t0)
            too_long = len(q) > 100
            # a match is a wrong answer; a too-long query must say so (the list may show unfiltered beside it)
            wrong = ("at most" not in body) if too_long else ("plain" in body)
            rows.append((q[:12], status, wrong))
        control = "plain" in http("GET", f"{app.http}/sessions?q=pla", {"Cookie": cookie})[2]
    bad = [r for r in rows if r[1] >= 500 or r[2]]
    held = control and not bad and worst < 1.0
    return Result(held, f"control found: {control}; slowest {worst * 1000:.0f} ms; "
                        + (f"wrong: {bad}" if bad else f"{len(rows)} queries matched nothing, no 5xx"))


def probe_metrics_forwarded_for() -> Result:
    """/metrics is for loopback clients: behind TRUSTED_PROXIES=127.0.0.1 a remote client (the proxy's appended
    X-Forwarded-For entry) is refused even when it spoofs a loopback first entry; a direct loopback scrape works."""
    with App({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY, "TRUSTED_PROXIES": "127.0.0.1"}) as app:
        direct = http("GET", f"{app.http}/metrics")[0]
        spoofed = http("GET", f"{app.http}/metrics", {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})[0]
        remote = http("GET", f"{app.http}/metrics", {"X-Forwarded-For": "203.0.113.9"})[0]
    with App({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY}) as app:
        untrusted = http("GET", f"{app.http}/metrics", {"X-Forwarded-For": "203.0.113.9"})[0]
    held = direct == 200 and spoofed == 403 and remote == 403 and untrusted == 200
    return Result(held, f"direct {direct}, spoofed loopback entry {spoofed}, remote {remote}; "
                        f"without TRUSTED_PROXIES the header is ignored: {untrusted}")


WRONG_KEYS = 200


def probe_wrong_key_flood() -> Result:
    """With a relay API key minted, 200 wrong `crk_` keys from one client (8 at a time) on /v1/audio/transcriptions:
    each is a 401 (never a 5xx), /healthz answers < 1 s throughout, and the right key from the same client is
    still taken during the flood. (Not throttled on purpose: a key is 256 random bits, so a guess cannot succeed,
    and a lockout per address would let a guesser behind the same NAT or proxy lock out the key's real users.)"""
    import concurrent.futures

    with tempfile.TemporaryDirectory(prefix="hostile-keys-") as data:
        env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY, "DATA_DIR": data}
        made = subprocess.run([sys.executable, "-m", "webapp", "api-key", "create", "--name", "probe"], cwd=APP_DIR,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        key = next(iter(re.findall(r"crk_[A-Za-z0-9_-]{20,}", made.stdout)), None)
        if key is None:
            return Result(False, f"could not mint a key: {made.stderr[-300:]}")
        with App(env) as app:
            def post(bearer: str) -> int:
                return http("POST", f"{app.http}/v1/audio/transcriptions", {
                    "Authorization": f"Bearer {bearer}", "Content-Type": "multipart/form-data; boundary=x"},
                    b"--x--\r\n")[0]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = pool.map(post, [f"crk_{i:040d}" for i in range(WRONG_KEYS)])
                slowest = max(healthz_ms(app) for _ in range(10))
                right = post(key)  # an empty form: 400 once the key is taken, 401/429 if it is not
                statuses = list(answers)
    held = statuses.count(401) == WRONG_KEYS and slowest < 1000 and right == 400
    return Result(held, f"{statuses.count(401)}/{WRONG_KEYS} answered 401 (others: "
                        f"{sorted(set(statuses) - {401})}); /healthz slowest {slowest:.0f} ms during the flood; "
                        f"the right key answered {right}")


def _multipart(fields: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, value, filename in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _wav(channels: int, rate: int, data_bytes: int, body: bytes) -> bytes:
    """A WAV header that claims `channels`, `rate` and `data_bytes` of PCM, followed by `body` (what is really there)."""
    bits = 16
    fmt = (b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + channels.to_bytes(2, "little")
           + rate.to_bytes(4, "little") + ((rate * channels * bits // 8) % 2**32).to_bytes(4, "little")
           + (channels * bits // 8 % 2**16).to_bytes(2, "little") + bits.to_bytes(2, "little"))
    data = b"data" + data_bytes.to_bytes(4, "little") + body
    return b"RIFF" + ((4 + len(fmt) + len(data)) % 2**32).to_bytes(4, "little") + b"WAVE" + fmt + data


def _chunked_post(app: App, path: str, body: bytes, boundary: str, timeout: float = 10.0) -> tuple[int, float]:
    """POST without Content-Length (Transfer-Encoding: chunked, 64 KiB chunks): (status, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", app.port), timeout=timeout) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode())
        try:
            for i in range(0, len(body), 65536):
                part = body[i:i + 65536]
                s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the end: what is measured is its answer
        head = s.recv(200).decode(errors="replace")
    status = int(head.split()[1]) if head.startswith("HTTP/") else 0
    return status, time.monotonic() - t0


def probe_upload_bombs() -> Result:
    """Hostile uploads to /v1/audio/transcriptions (MAX_UPLOAD_MB=1): 5000 form fields, a 900 KB field name, a
    2 MB body without Content-Length, WAVs whose header claims 37 hours / 65535 channels / a 4 GHz rate / zero
    channels over 1 KB of data, random bytes, an HLS playlist and an ffconcat script naming a local URL (which
    FFmpeg must not fetch) and /etc/passwd. Each is answered in < 5 s with a 4xx, or with the dead backend's 502
    (FFmpeg measured the real length, never the claimed one: nothing is refused or charged for 37 h), never a
    500, and /healthz answers < 1 s after each."""
    noise = bytes((i * 7919) % 251 for i in range(1000))
    cases = [
        ("5000 fields", _multipart([(f"f{i}", b"x", None) for i in range(5000)])),
        ("900 KB field name", _multipart([("n" * 900_000, b"x", None)])),
        ("2 MB, no length", None),
        ("claims 37 h", _multipart([("model", b"whisper-1", None), ("file", _wav(1, 16000, 0xFFFFFFF0, noise), "a.wav")])),
        ("65535 channels", _multipart([("file", _wav(65535, 16000, 1000, noise), "a.wav")])),
        ("4 GHz rate", _multipart([("file", _wav(1, 0xFFFFFFFF, 1000, noise), "a.wav")])),
        ("0 channels", _multipart([("file", _wav(0, 16000, 1000, noise), "a.wav")])),
        ("random bytes", _multipart([("file", noise * 50, "a.mp3")])),
    ]
    # Playlists FFmpeg could follow to other URLs or files (server-side request forgery through the demuxer)
    hits: list[str] = []

    class Spy(http_server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass
    spy = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Spy)
    threading.Thread(target=spy.serve_forever, daemon=True).start()
    there = f"http://127.0.0.1:{spy.server_address[1]}"
    cases += [
        ("HLS playlist", _multipart([("file", f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{there}/seg.ts\n"
                                              "#EXT-X-ENDLIST\n".encode(), "a.m3u8")])),
        ("ffconcat", _multipart([("file", f"ffconcat version 1.0\nfile {there}/c.wav\nfile /etc/passwd\n".encode(),
                                  "a.ffconcat")])),
    ]
    dead = free_port()  # the backend's URL: nothing listens (a job that gets that far fails cleanly)
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY, "DEEPGRAM_URL": f"ws://127.0.0.1:{dead}/v2/listen",
           "DEEPGRAM_BATCH_URL": f"http://127.0.0.1:{dead}/v1/listen", "MAX_UPLOAD_MB": "1"}
    rows = []
    with App(env) as app:
        for name, body in cases:
            if body is None:
                status, took = _chunked_post(app, "/v1/audio/transcriptions",
                                             _multipart([("file", noise * 2000, "a.wav")]), "b0undary")
            else:
                t0 = time.monotonic()
                status = http("POST", f"{app.http}/v1/audio/transcriptions",
                              {"Content-Type": "multipart/form-data; boundary=b0undary"}, body, timeout=10)[0]
                took = time.monotonic() - t0
            rows.append((name, status, took, healthz_ms(app)))
    spy.shutdown()
    spy.server_close()
    # 502: the job got as far as the (dead) backend, the defined outcome for an unreachable one
    bad = [r for r in rows if r[1] not in range(400, 500) and r[1] not in (200, 502) or r[2] >= 5 or r[3] >= 1000]
    text = ", ".join(f"{n}: {s} in {t:.1f} s" for n, s, t, _ in rows)
    if hits:
        bad.append(("playlist followed", 0, 0, 0))
    return Result(not bad, text + f"; URLs fetched by FFmpeg: {hits or 'none'}"
                  + (f"; BROKEN: {[r[0] for r in bad]}" if bad else ""))


REALTIME_FLOOD = 2000
REALTIME_QUERY = "/v1/realtime?model=deepgram/flux&encoding=linear16&sample_rate=16000&interim_results=true"


def probe_realtime_frames() -> Result:
    """/v1/realtime (no keys: anyone) fed a 4 MB frame (answered and closed at once), and on a second socket non-JSON
    text, a 3-byte frame and 2000 KeepAlive/Finalize commands in a burst: /healthz < 1 s throughout, the upstream
    gets a bounded number of Finalize messages, and CloseStream still ends the session with Metadata < 5 s."""
    with Sim() as sim, App(flux_env(sim)) as app:
        async def run():
            big = await Socket.open(app.ws + REALTIME_QUERY)
            t0 = time.monotonic()
            try:
                await big.ws.send(b"\x00" * (4 * 1024 * 1024))
            except ConnectionClosed:
                pass
            await big.until(lambda s: s.closed, 5)
            big_s, big_raw = time.monotonic() - t0, list(big.raw) + [f"close {big.ws.close_code}"]
            await big.close()

            page = await Socket.open(app.ws + REALTIME_QUERY)
            await page.ws.send("not json {")
            await page.ws.send(b"\x01\x02\x03")
            await page.send_audio(0.5)
            worst = [0.0]
            stop = threading.Event()

            def poll():
                while not stop.is_set():
                    worst[0] = max(worst[0], healthz_ms(app, 3.0))
                    stop.wait(0.1)
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            try:
                for i in range(REALTIME_FLOOD):
                    await page.ws.send(json.dumps({"type": "KeepAlive" if i % 2 else "Finalize"}))
                await page.ws.send(json.dumps({"type": "CloseStream"}))
                t1 = time.monotonic()
                ended = await page.until(lambda s: s.of("Metadata") or s.closed, 8)
                end_s = time.monotonic() - t1 if ended and page.of("Metadata") else float("inf")
            except ConnectionClosed:
                end_s = float("inf")
            stop.set()
            await asyncio.to_thread(poller.join, 5)
            errors = [m.get("description") or m.get("message") for m in page.of("Error")]
            await page.close()
            return big_s, big_raw, worst[0], end_s, errors
        big_s, big_raw, worst, end_s, errors = asyncio.run(run())
        finalizes = sum(1 for r in sim.records for t in getattr(r, "texts", [])
                        if isinstance(t, str) and '"Finalize"' in t)
    held = big_s < 3 and worst < 1000 and end_s < 5 and finalizes <= REALTIME_FLOOD // 2
    return Result(held, f"4 MB frame: closed after {big_s:.2f} s ({'; '.join(r[:60] for r in big_raw)}); "
                        f"flood: /healthz worst {worst:.0f} ms, {finalizes} Finalize upstream of "
                        f"{REALTIME_FLOOD // 2}, errors {errors[:3]}, Metadata after CloseStream "
                        + ("never" if math.isinf(end_s) else f"{end_s:.2f} s"))


SLOW_UPLOAD_WINDOW_S = 14.0


def probe_slow_upload() -> Result:
    """Uploads that never finish (MAX_UPLOAD_MB=1): a body declared as 1 MB that stops after 1 KB, a chunked body
    (no Content-Length) trickling a byte a second, a Content-Length of 10^12: the server answers or closes each
    within 14 s (its body deadline is Content-Length / 128 KiB/s, at least 10 s), and /healthz stays < 1 s."""
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY, "MAX_UPLOAD_MB": "1"}
    with App(env) as app:
        head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n"
                "Content-Type: multipart/form-data; boundary=b0undary\r\n")
        plans = {
            "1 MB declared, 1 KB sent": (head + "Content-Length: 1048576\r\n\r\n").encode() + b"--b0undary\r\n" + b"x" * 1000,
            "chunked, a byte a second": (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"c\r\n--b0undary\r\n\r\n",
            "10^12 declared": (head + "Content-Length: 1000000000000\r\n\r\n").encode() + b"--b0undary\r\n",
        }
        socks = {}
        for name, first in plans.items():
            s = socket.create_connection(("127.0.0.1", app.port), timeout=2)
            s.sendall(first)
            s.setblocking(False)
            socks[name] = s
        t0, ended, worst = time.monotonic(), {}, 0.0
        while len(ended) < len(socks) and time.monotonic() - t0 < SLOW_UPLOAD_WINDOW_S:
            for name, s in socks.items():
                if name in ended:
                    continue
                try:
                    data = s.recv(4096)
                    if data == b"" or data.startswith(b"HTTP/"):
                        ended[name] = (time.monotonic() - t0, data.split(b" ", 2)[1].decode() if data else "closed")
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    ended[name] = (time.monotonic() - t0, "reset")
                    continue
                if name.startswith("chunked"):
                    try:
                        s.send(b"1\r\nx\r\n")
                    except OSError:
                        ended[name] = (time.monotonic() - t0, "reset")
            worst = max(worst, healthz_ms(app))
            time.sleep(1.0)  # the attack's own pace
        for s in socks.values():
            s.close()
    held = len(ended) == len(socks) and worst < 1000
    return Result(held, "; ".join(f"{n}: " + (f"{ended[n][1]} after {ended[n][0]:.1f} s" if n in ended else
                                               f"still open after {SLOW_UPLOAD_WINDOW_S:.0f} s") for n in socks)
                  + f"; /healthz worst {worst:.0f} ms")


OVERLAY_PARAMS = {
    "color": "red;}</style><script>alert(1)</script>",
    "bg": "url(javascript:alert(1))",
    "font": "x\" onload=\"alert(1)",
    "size": "48px;position:fixed",
    "box": "expression(alert(1))",
}


def probe_overlay_params() -> Result:
    """The overlay page /s/<token>/overlay with style parameters that try to inject HTML, CSS or JS: the server's
    page never repeats them (the page's script validates them, tests/js/style.test.mjs) and answers < 500."""
    with Sim() as sim, App(flux_env(sim)) as app:
        async def run():
            page = await Socket.open(f"{app.ws}/ws/listen")
            await page.until(lambda s: s.ready, 5)
            await page.close()
            return (page.ready or {}).get("share_url", "/s/")[3:]
        token = asyncio.run(run())
        query = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in OVERLAY_PARAMS.items())
        status, headers, body = http("GET", f"{app.http}/s/{token}/overlay?{query}")
    echoed = [k for k, v in OVERLAY_PARAMS.items() if v in body or urllib.request.quote(v) in body
              or "alert(1)" in body]
    held = status == 200 and not echoed
    csp = headers.get("Content-Security-Policy", "none") if headers else "none"
    return Result(held, f"status {status}; echoed: {echoed or 'none'}; CSP {csp[:60]}")


RULES_TIMING = r"""
import json, time
from webapp.textrules import TextRules, RulesError
literal = []
for src in ["(a+)+$", "a.*", "x|y", "\\d+"]:
    try:
        r = TextRules.parse({"replacements": [[src, "HIT"]]})
        literal.append(r.apply("aaaa xy 123") == "aaaa xy 123")
    except RulesError:
        literal.append(True)   # refused is as good as literal
reps = []   # the worst rules: 10 first words x 20 rules that each match ~45 words of "a a a ..." and then fail
for w in range(10):
    first = "a" if w == 0 else f"w{w}"
    for i in range(20):
        reps.append([(first + " " + " ".join(["a"] * 45))[:94].rsplit(" ", 1)[0] + f" q{i}", "X"])
rules = TextRules.parse({"replacements": reps, "profanity": True})
text = " ".join(["a"] * 5000)
t = time.perf_counter(); rules.apply(text); took = time.perf_counter() - t
print(json.dumps({"literal": all(literal), "seconds": took}))
"""


def probe_text_rules_worst_case() -> Result:
    """Text rules that look like regular expressions are taken literally (or refused), and the slowest legal rule set
    (200 rules, 20 per first word, each matching ~45 words before it fails) on a 5000-word turn applies < 1 s."""
    out = subprocess.run([sys.executable, "-c", RULES_TIMING], cwd=APP_DIR, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return Result(False, f"failed: {out.stderr[-300:]}")
    got = json.loads(out.stdout)
    held = got["literal"] and got["seconds"] < 1.0
    return Result(held, f"patterns literal: {got['literal']}; worst rules on 5000 words: {got['seconds'] * 1000:.0f} ms")


def _spy_server(answer: Callable[[http_server.BaseHTTPRequestHandler], None]):
    """A loopback HTTP server that records each request's path and answers with `answer(handler)`."""
    hits: list[str] = []

    class Spy(http_server.BaseHTTPRequestHandler):
        def _any(self):
            hits.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            answer(self)
        do_GET = do_POST = do_PUT = _any  # noqa: N815 - the stdlib's names

        def log_message(self, *a):
            pass
    server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Spy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


async def _webhook_session(app: App, cookie: str, hook: str) -> tuple[Socket, int, str]:
    """A capture session given a webhook output that posts to `hook`, spoken until its first final: the page, the
    output POST's status and the session's outputs URL."""
    page, ready = await _owned_session(app, cookie)
    url = f"{app.http}/api/sessions/{ready.get('session_id')}/outputs"
    made = (await asyncio.to_thread(_json, "POST", url, cookie, {"type": "webhook", "url": hook}))[0]
    await page.send_audio(3.0)
    await page.until(lambda s: any(m.get("final") for m in s.of("transcript")), 8)
    return page, made, url


def probe_output_redirect() -> Result:
    """A webhook receiver (allowed) that answers every post with 307 to another loopback server (not allowed): the
    relay does not follow it (the other server gets nothing), and the output shows the redirect as its error."""
    target, stolen = _spy_server(lambda h: (h.send_response(204), h.end_headers()))
    where = f"http://127.0.0.1:{target.server_address[1]}/steal"

    def redirect(h):
        h.send_response(307)
        h.send_header("Location", where)
        h.send_header("Content-Length", "0")
        h.end_headers()
    receiver, posted = _spy_server(redirect)
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with Sim() as sim, App(flux_env(sim, OUTPUT_ALLOWED_URLS=hook)) as app:
            cookie = owner_cookie(app)

            async def run():
                page, made, url = await _webhook_session(app, cookie, hook)
                deadline = time.monotonic() + 8
                listed = ""
                while time.monotonic() < deadline:  # the output's post is made after the final: poll its status
                    listed = (await asyncio.to_thread(_json, "GET", url, cookie))[1]
                    if posted and "redirect" in listed:
                        break
                    await asyncio.sleep(0.2)
                await page.close()
                return made, listed
            made, listed = asyncio.run(run())
    finally:
        for server in (target, receiver):
            server.shutdown()
            server.server_close()
    told = "redirect" in listed
    held = made == 201 and bool(posted) and not stolen and told
    return Result(held, f"output {made}; {len(posted)} posts to the receiver, {len(stolen)} followed to the other "
                        f"server; the output's error {'names' if told else 'does not name'} the redirect")


HUGE_ANSWER_MB = 300


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def probe_output_huge_answer() -> Result:
    """An allowed webhook receiver that answers each post with a 300 MB body (sent as fast as loopback goes): the
    app's peak memory grows < 50 MB (the answer is read only as far as it is needed) and the speaker's page keeps
    getting its captions."""
    sent = [0]

    def huge(h):
        h.send_response(200)
        h.send_header("Content-Length", str(HUGE_ANSWER_MB << 20))
        h.end_headers()
        block = b"\0" * (1 << 20)
        try:
            for _ in range(HUGE_ANSWER_MB):
                h.wfile.write(block)
                sent[0] += 1
        except OSError:
            pass  # the relay stopped reading and closed: what it should do
    receiver, posted = _spy_server(huge)
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with Sim() as sim, App(flux_env(sim, OUTPUT_ALLOWED_URLS=hook)) as app:
            cookie = owner_cookie(app)
            before = _peak_rss_mb(app.proc.pid)

            async def run():
                page, made, url = await _webhook_session(app, cookie, hook)
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline and not posted:  # the post follows the final
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # the answer's time to arrive (300 MB over loopback: < 1 s)
                await page.send_audio(3.0)
                finals = await page.until(lambda s: sum(1 for m in s.of("transcript") if m.get("final")) >= 2, 8)
                await page.close()
                return made, finals
            made, finals = asyncio.run(run())
            grew = _peak_rss_mb(app.proc.pid) - before
    finally:
        receiver.shutdown()
        receiver.server_close()
    held = made == 201 and bool(posted) and grew < 50 and finals
    return Result(held, f"{len(posted)} posts; the receiver wrote {sent[0]} of {HUGE_ANSWER_MB} MB; app peak memory "
                        f"+{grew:.0f} MB; the page's second final {'arrived' if finals else 'did not arrive'}")


def probe_output_trickle_answer() -> Result:
    """An allowed webhook receiver that answers 200 and then sends its body a byte every 2 s (each read within
    httpx's 5 s read timeout): the post is given up within 16 s and the output's error says so (no post held for
    ever, the output's captions stuck behind it)."""
    stop = threading.Event()

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            while not stop.wait(2.0):
                h.wfile.write(b"x")
                h.wfile.flush()
        except OSError:
            pass  # the relay gave up and closed: what it should do
    receiver, posted = _spy_server(trickle)
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with Sim() as sim, App(flux_env(sim, OUTPUT_ALLOWED_URLS=hook)) as app:
            cookie = owner_cookie(app)

            async def run():
                page, made, url = await _webhook_session(app, cookie, hook)
                t0, listed, took = time.monotonic(), "", None
                while time.monotonic() - t0 < 16:  # the output's error, once its post is given up
                    listed = (await asyncio.to_thread(_json, "GET", url, cookie))[1]
                    if posted and "in time" in listed:
                        took = time.monotonic() - t0
                        break
                    await asyncio.sleep(0.5)
                await page.close()
                return made, took
            made, took = asyncio.run(run())
    finally:
        stop.set()
        receiver.shutdown()
        receiver.server_close()
    held = made == 201 and took is not None
    return Result(held, f"{len(posted)} posts; " + (f"given up after {took:.1f} s (from the final)" if took is not None
                                                     else "still posting after 16 s"))


def probe_api_key_in_logs() -> Result:
    """LOG_LEVEL=debug; a relay API key used as /v1/realtime's `?api_key=` (the query string of a WebSocket
    request) and as a Bearer on /v1/audio/transcriptions, and a wrong one of each: no key is in the app's log."""
    with tempfile.TemporaryDirectory(prefix="hostile-keys-") as data, Sim() as sim:
        env = {**flux_env(sim), "DATA_DIR": data}
        made = subprocess.run([sys.executable, "-m", "webapp", "api-key", "create", "--name", "probe"], cwd=APP_DIR,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        key = next(iter(re.findall(r"crk_[A-Za-z0-9_-]{20,}", made.stdout)), None)
        if key is None:
            return Result(False, f"could not mint a key: {made.stderr[-300:]}")
        wrong = "crk_" + "w" * 43
        with App(env) as app:
            async def run():
                states = []
                for k in (key, wrong):
                    try:
                        page = await Socket.open(f"{app.ws}{REALTIME_QUERY}&api_key={k}")
                        await page.send_audio(0.3)
                        await page.ws.send(json.dumps({"type": "CloseStream"}))
                        await page.until(lambda s: s.closed, 5)
                        errors = [(m.get("error") or {}).get("type") or m.get("description", "")[:30]
                                  for m in page.of("Error")]
                        states.append(f"refused in the socket ({errors[0]})" if errors else "open")
                        await page.close()
                    except InvalidStatus as exc:
                        states.append(exc.response.status_code)
                return states
            states = asyncio.run(run())
            for k in (key, wrong):
                http("POST", f"{app.http}/v1/audio/transcriptions", {
                    "Authorization": f"Bearer {k}", "Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n")
            log = app.log()
    found = [name for name, k in (("the key", key), ("the wrong key", wrong)) if k in log or k[4:] in log]
    return Result(not found and states[0] == "open", f"realtime: right key {states[0]}, wrong key {states[1]}; "
                  f"in {log.count(chr(10))} log lines: {', '.join(found) or 'no key'}")


def probe_deep_json() -> Result:
    """The owner API's JSON bodies nested 2000 deep (`[[[…]]]`, within each body limit): the output POST, the
    session PATCH, the rules PUT answer 4xx (json's recursion limit is a bad body, not a 500)."""
    with Sim() as sim, App(flux_env(sim, OUTPUT_ALLOWED_URLS="http://127.0.0.1:9/")) as app:
        cookie = owner_cookie(app)

        async def run():
            page, ready = await _owned_session(app, cookie)
            await page.close()
            return ready.get("session_id")
        sid = asyncio.run(run())
        deep = b"[" * 2000 + b"]" * 2000
        base = f"{app.http}/api/sessions/{sid}"
        got = []
        for method, url in (("POST", f"{base}/outputs"), ("PATCH", base), ("PUT", f"{base}/rules")):
            status = http(method, url, {"Cookie": cookie, "Content-Type": "application/json"}, deep)[0]
            got.append((method, url.rsplit("/", 1)[-1] if url != base else "session", status))
        traceback = "Traceback" in app.log()
    held = all(400 <= s < 500 for *_, s in got) and not traceback
    return Result(held, ", ".join(f"{m} {p} {s}" for m, p, s in got) + ("; a traceback in the log" if traceback else ""))


PROBES = [
    Probe("redis_outage", "1", probe_redis_outage),
    Probe("nonreading_flood", "2", probe_nonreading_flood),
    Probe("flapping_upstream", "3", probe_flapping_upstream),
    Probe("key_echo", "4", probe_key_echo),
    Probe("parallel_quota", "5", probe_parallel_quota),
    Probe("resume_other_owner", "6", probe_resume_other_owner),
    Probe("resume_token_reuse", "6", probe_resume_token_reuse),
    Probe("foreign_host", "6", probe_foreign_host),
    Probe("tokens_in_logs", "6", probe_tokens_in_logs),
    Probe("login_guessing", "6", probe_login_guessing),
    Probe("forwarded_for", "6", probe_forwarded_for),
    Probe("secure_cookie_behind_tls", "6", probe_secure_cookie_behind_tls),
    Probe("new_link_drops_old_viewer", "6", probe_new_link_drops_old_viewer),
    Probe("unicode_digits_param", "8", probe_unicode_digits_param),
    Probe("embed_font_size", "8", probe_embed_font_size),
    Probe("bad_local_setting", "8", probe_bad_local_setting),
    Probe("slowloris", "8", probe_slowloris),
    Probe("nan_times", "8", probe_nan_times),
    Probe("output_ssrf", "new", probe_output_ssrf),
    Probe("output_count_and_secret", "new", probe_output_count_and_secret),
    Probe("output_redirect", "new", probe_output_redirect),
    Probe("output_huge_answer", "new", probe_output_huge_answer),
    Probe("output_trickle_answer", "new", probe_output_trickle_answer),
    Probe("session_name_controls", "new", probe_session_name_controls),
    Probe("other_owner_session", "new", probe_other_owner_session),
    Probe("search_metacharacters", "new", probe_search_metacharacters),
    Probe("deep_json", "new", probe_deep_json),
    Probe("metrics_forwarded_for", "new", probe_metrics_forwarded_for),
    Probe("wrong_key_flood", "new", probe_wrong_key_flood),
    Probe("api_key_in_logs", "new", probe_api_key_in_logs),
    Probe("upload_bombs", "new", probe_upload_bombs),
    Probe("realtime_frames", "new", probe_realtime_frames),
    Probe("slow_upload", "new", probe_slow_upload),
    Probe("overlay_params", "new", probe_overlay_params),
    Probe("text_rules_worst_case", "new", probe_text_rules_worst_case),
]


def _git_head(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return out.stdout.strip()[:60] + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def main(argv: list[str]) -> int:
    global APP_DIR
    if "--app-dir" in argv:
        i = argv.index("--app-dir")
        APP_DIR = Path(argv[i + 1]).resolve()
        argv = argv[:i] + argv[i + 2:]
    chosen = [p for p in PROBES if not argv or any(a in p.name for a in argv)]
    rows, t_all = [], time.monotonic()
    for p in chosen:
        t0 = time.monotonic()
        try:
            r = p.check()
            verdict = "held" if r.held else "broken"
            figure = r.figure
        except Exception as exc:  # a probe that could not run says so; the rest still run
            verdict, figure = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        rows.append((p.name, p.item, verdict, f"{figure} ({time.monotonic() - t0:.1f} s)"))
        print(f"  {p.name}: {verdict}", file=sys.stderr, flush=True)
    print("| probe | item | result | measured |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    held = sum(1 for r in rows if r[2] == "held")
    print(f"\napp: {APP_DIR} ({_git_head(APP_DIR)})")
    print(f"{held}/{len(rows)} held, {time.monotonic() - t_all:.0f} s in all")
    return 0 if held == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
