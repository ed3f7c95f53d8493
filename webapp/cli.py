"""Command line: `caption-relay [--host H] [--port P] [--workers N]` serves the app; `caption-relay engine` serves the
Flux-compatible embedded recognizer on its own; `caption-relay embed-key` and `caption-relay api-key` manage the
widget's and the API's keys."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from . import apikeys, config, embed, logs

# Young-generation collections every 10,000 (not 700) surviving allocations: at a thousand streams the default
# ran one every ~40 ms, each stopping the loop for milliseconds (docs/benchmarks.md, "Relay performance").
GC_THRESHOLDS = (10_000, 10, 10)
# A WebSocket message over this closes its socket (1009); uvicorn's default, 16 MiB, is what each socket could be
# made to buffer. Audio frames over 64 KiB are refused anyway (`frame_too_large`), and events are tiny.
WS_MAX_SIZE = 2**20
# An idle keep-alive connection is closed after this (uvicorn's default, said here: it bounds what idle clients hold).
KEEP_ALIVE_SECONDS = 5


def _serve_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"port to bind (default PORT or {port})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caption-relay", description="Live captions relay server")
    _serve_args(parser, 8000)
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (needs REDIS_URL when more than 1)"
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for --workers' children
    sub = parser.add_subparsers(dest="command")
    engine = sub.add_parser("engine", help="serve the embedded recognizer as a Flux-compatible /v2/listen endpoint")
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=8765)
    embed.add_cli(sub)  # embed-key: mint or revoke a key for the /embed widget
    apikeys.add_cli(sub)  # api-key: the relay API keys (create, list, revoke)
    args = parser.parse_args(argv)

    try:
        settings = config.load()
        if args.command != "engine":  # the start-up checks of the files and services the app needs
            config.check_data_dir(settings.data_dir)
            if settings.redis_url and args.command is None and args.workers <= 1:  # --workers: each child checks
                config.check_redis(settings.redis_url)
    except config.ConfigError as exc:
        print(f"caption-relay: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.secrets)

    if args.command == "embed-key":
        return embed.cli(args, settings)
    if args.command == "api-key":
        return apikeys.cli(args, settings)

    if args.command == "engine":
        from .local import engine as engine_mod

        engine_mod.run(args.host, args.port, settings)
        return 0

    host, port = args.host or settings.host, args.port or settings.port
    settings = dataclasses.replace(settings, host=host, port=port)  # the Host check knows the bind address
    if args.workers > 1:
        return _supervise(args.workers, host, port, settings)

    import uvicorn

    from .app import create_app
    from .audiosocket import DirectWebSocketProtocol
    from .server import DrainingServer, guarded_http

    app = create_app(settings)
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=guarded_http(settings.request_timeout),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        ws=DirectWebSocketProtocol,
        ws_per_message_deflate=False,
        ws_max_size=WS_MAX_SIZE,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
    )  # X-Forwarded-For is judged by webapp.quotas (TRUSTED_PROXIES)
    # The start-up heap (imports, templates) never dies: keep it out of every later collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sockets = [_reuse_port_socket(host, port)] if args.reuse_port else None
    DrainingServer(server_config, app.state.live).run(sockets=sockets)
    return 0


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """Each worker listens on its own socket of the shared port; the kernel spreads connections evenly."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _supervise(workers: int, host: str, port: int, settings: config.Settings) -> int:
    """Run `workers` copies of the server on one port and pass SIGTERM/SIGINT on to them (each drains itself)."""
    if not settings.redis_url:
        print(
            "caption-relay: --workers needs REDIS_URL: sessions, share links and live captions must be shared "
            "between the worker processes",
            file=sys.stderr,
        )
        return 2
    if settings.backend == "local":
        print(
            "caption-relay: --workers is for the relay to remote recognizers; the embedded recognizer already "
            "uses every core (set LOCAL_MAX_STREAMS instead)",
            file=sys.stderr,
        )
        return 2
    cmd = [sys.executable, "-m", "webapp", "--host", host, "--port", str(port), "--reuse-port"]
    # The workers' metrics are summed through files in one directory (prometheus-client's multiprocess mode,
    # webapp/metrics.py): a fresh one per run, so a scrape never adds an earlier run's counters.
    metrics_dir = tempfile.mkdtemp(prefix="caption-relay-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    children = [subprocess.Popen(cmd, env=env) for _ in range(workers)]

    forwarded: set[int] = set()

    def forward(sig, frame):
        forwarded.add(sig)
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # uvicorn re-raises the signal it stopped for once it has drained: that is a clean stop
    codes = [0 if -child.wait() in forwarded else child.returncode for child in children]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return max(codes, key=abs)
