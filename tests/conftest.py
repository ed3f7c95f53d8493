"""Shared fixtures: the app as users run it (a real `python -m webapp` uvicorn process on 127.0.0.1) and
the upstream simulator (tests/simulator.py)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from simulator import Simulator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).parent / ".artifacts"
ARTIFACTS.mkdir(exist_ok=True)

TEST_DG_KEY = "dg-test-key-0123456789abcdef"
TEST_AIG_KEY = "sk-aig-test-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_app(env: dict[str, str], tmp: Path, name: str = "app", timeout: float = 60.0,
              port: int | None = None, argv: list[str] | None = None, tls: bool = False) -> AppProcess:
    """Start `python -m webapp` (or `python <argv>`, given {port}) with `env` on a free port (or `port`, to
    restart an app where it was); return once /healthz answers (over https, its certificate unchecked, when
    `tls`). DATA_DIR is tmp/data-<name>, so a restart under one name keeps its data."""
    port = port or free_port()
    log_path = ARTIFACTS / f"{name}-{port}-{int(time.time() * 1000) % 100000}.log"
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("STT_BACKEND", "AIGATEWAY_API_KEY", "DEEPGRAM_API_KEY", "ACCESS_TOKEN", "ALLOWED_ORIGINS")}
    full_env.update({"DATA_DIR": str(tmp / f"data-{name}"), "LOG_LEVEL": "debug"}, **env)
    log_file = open(log_path, "wb")
    args = [a.format(port=port) for a in argv] if argv else ["-m", "webapp", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, *args],
                            cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    health = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    context = ssl._create_unverified_context() if tls else None  # only "is it up"; the tests check the certificate
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(health, timeout=1, context=context) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"app did not start:\n{log_path.read_text()}")
        time.sleep(0.05)  # polling a process that is starting: there is no event to await
    return AppProcess(proc, port, log_path)


def stop_app(app: AppProcess) -> None:
    if app.proc.poll() is None:
        app.proc.send_signal(signal.SIGTERM)
        try:
            app.proc.wait(15)
        except subprocess.TimeoutExpired:
            app.proc.kill()
            app.proc.wait()


@contextlib.contextmanager
def running_app(env: dict[str, str], tmp: Path, name: str = "app", argv: list[str] | None = None, tls: bool = False):
    app = start_app(env, tmp, name, argv=argv, tls=tls)
    try:
        yield app
    finally:
        stop_app(app)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("caption-relay")


@pytest.fixture(scope="session")
def simulator():
    sim = Simulator().start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(simulator):
    simulator.reset()
    yield simulator
    simulator.reset()


@pytest.fixture(scope="session")
def flux_app(simulator, session_tmp):
    """App with STT_BACKEND=deepgram pointed at the simulator's Flux endpoint; upstream failures are
    reported at once (no retries), so each failure's own mapping shows. A page may stop reading for up to
    60 s (a frozen tab, test_audiosocket) before it is closed as slow_client."""
    env = {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
           "ALLOWED_ORIGINS": "http://allowed.example", "UPSTREAM_RETRY_SECONDS": "0", "SLOW_CLIENT_SECONDS": "60"}
    with running_app(env, session_tmp, "flux") as app:
        yield app


@pytest.fixture(scope="session")
def gateway_app(simulator, session_tmp):
    """App with STT_BACKEND=aigateway pointed at the simulator's gateway endpoint."""
    env = {"STT_BACKEND": "aigateway", "AIGATEWAY_API_KEY": TEST_AIG_KEY,
           "AIGATEWAY_REALTIME_URL": f"{simulator.url}/v1/realtime", "UPSTREAM_RETRY_SECONDS": "0"}
    with running_app(env, session_tmp, "gateway") as app:
        yield app


@pytest.fixture(scope="session")
def redis_url():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; ./scripts/test installs it (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 20
    for line in proc.stdout:  # its own log line says when it serves; no polling needed
        seen.append(line)
        if "Ready to accept connections" in line:
            break
        if time.monotonic() > deadline:
            break
    else:
        pytest.fail("redis-server exited:\n" + "".join(seen))
    if proc.poll() is not None or "Ready to accept connections" not in seen[-1]:
        proc.kill()
        pytest.fail("redis-server did not start:\n" + "".join(seen))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
