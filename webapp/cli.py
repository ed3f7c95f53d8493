"""Command line (`./scripts/caption-relay`): `caption-relay [--host H] [--port P] [--workers N] [--tls]` serves the
app; `caption-relay engine` serves the Flux-compatible embedded recognizer on its own; `caption-relay embed-key` and
`caption-relay api-key` manage the widget's and the API's keys."""

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


DESCRIPTION = """\
Caption Relay: live captions from a browser's microphone. Without a subcommand it serves the capture page, the share
links and the audio socket on http://127.0.0.1:8000 (settings come from the environment: see the README's table).
From a checkout, run it as ./scripts/caption-relay (it creates .venv on the first run); ./scripts/start is the
same command."""

EPILOG = """\
examples:
  ./scripts/caption-relay                                  serve on http://127.0.0.1:8000
  ./scripts/caption-relay --tls --host 0.0.0.0             HTTPS on every address: open it from a phone on this network
  TLS_CERT=cert.pem TLS_KEY=key.pem ./scripts/caption-relay --host 0.0.0.0 --port 8443    HTTPS with your own certificate
  REDIS_URL=redis://127.0.0.1:6379/0 DEEPGRAM_API_KEY=... ./scripts/caption-relay --workers 4
  ./scripts/caption-relay embed-key --origin https://www.example.org
  ./scripts/caption-relay engine --port 8765               the embedded recognizer as a Flux endpoint
  ./scripts/caption-relay SUBCOMMAND --help                a subcommand's own options"""


def _port(text: str) -> int:
    """A --port value: a TCP port number."""
    value = int(text) if text.isdigit() else 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535)")
    return value


def _serve_args(parser: argparse.ArgumentParser, port: int, env: bool = True) -> None:
    where = "HOST or 127.0.0.1" if env else "127.0.0.1"
    parser.add_argument(
        "--host",
        default=None if env else "127.0.0.1",
        metavar="ADDRESS",
        help=f"address to listen on (default {where}); 0.0.0.0 listens on every network of this machine, so other "
        "devices can connect",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None if env else port,
        metavar="N",
        help=f"port to listen on (default {'PORT or ' if env else ''}{port})",
    )


def parser() -> argparse.ArgumentParser:
    """The command line: the server's options, then its subcommands (engine, embed-key)."""
    parser = argparse.ArgumentParser(
        prog="caption-relay",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_args(parser, 8000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (default 1); more than 1 needs REDIS_URL and a remote recognizer",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS and WSS directly, with TLS_CERT/TLS_KEY or else a self-signed certificate generated into "
        "DATA_DIR/tls (its fingerprint is printed); browsers allow the microphone of another device only over HTTPS",
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for --workers' children
    parser.add_argument("--quiet-ready", action="store_true", help=argparse.SUPPRESS)  # all but one of the workers
    sub = parser.add_subparsers(dest="command", title="subcommands", metavar="SUBCOMMAND")
    engine = sub.add_parser(
        "engine",
        help="serve the embedded recognizer as a Flux-compatible /v2/listen endpoint",
        description="Serves the embedded recognizer (Moonshine tiny-en) as a Deepgram-Flux-compatible WebSocket\n"
        "endpoint, ws://HOST:PORT/v2/listen, for any Flux client (another relay: DEEPGRAM_URL=ws://HOST:PORT/v2/listen).",
        epilog="example:\n  ./scripts/caption-relay engine --host 127.0.0.1 --port 8765",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_args(engine, 8765, env=False)
    embed.add_cli(sub)  # embed-key: mint or revoke a key for the /embed widget
    apikeys.add_cli(sub)  # api-key: the relay API keys (create, list, revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

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
    cert = None
    if args.tls or settings.tls_cert:
        from . import tls

        if settings.tls_cert:
            cert = tls.load_given(settings.tls_cert, settings.tls_key)
        else:  # made before --workers' children start: they all serve this one (TLS_CERT/TLS_KEY in their env)
            cert = tls.self_signed(settings.data_dir)
            settings = dataclasses.replace(settings, tls_cert=cert.cert_file, tls_key=cert.key_file)
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
        # direct HTTPS: the scope's scheme is then https/wss, which webapp.security.Cookies takes as a secure page
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
    )  # X-Forwarded-For is judged by webapp.quotas (TRUSTED_PROXIES)
    # The start-up heap (imports, templates) never dies: keep it out of every later collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sockets = [_reuse_port_socket(host, port)] if args.reuse_port else None
    ready = None
    if not args.quiet_ready:
        from .tls import ready_message

        def ready() -> None:  # for the person at the terminal; the JSON log lines say the same for machines
            print(ready_message(host, port, cert), file=sys.stderr, flush=True)

    DrainingServer(server_config, app.state.live, on_ready=ready).run(sockets=sockets)
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
    if settings.tls_cert:  # the one certificate (a generated one too) for every child
        env.update(TLS_CERT=settings.tls_cert, TLS_KEY=settings.tls_key)
    # one of them says where to open the page once it serves
    children = [subprocess.Popen(cmd + ["--quiet-ready"] * (i > 0), env=env) for i in range(workers)]

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
