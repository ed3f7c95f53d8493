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
