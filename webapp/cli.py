"""Command line: `caption-relay [--host H] [--port P]` serves the app; `caption-relay engine` serves the
Flux-compatible embedded recognizer on its own."""
from __future__ import annotations

import argparse
import gc
import sys

from . import config, embed, logs


def _serve_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"port to bind (default PORT or {port})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caption-relay", description="Live captions relay server")
    _serve_args(parser, 8000)
    sub = parser.add_subparsers(dest="command")
    engine = sub.add_parser("engine", help="serve the embedded recognizer as a Flux-compatible /v2/listen endpoint")
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=8765)
    embed.add_cli(sub)  # embed-key: mint or revoke a key for the /embed widget
    args = parser.parse_args(argv)

    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"caption-relay: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.secrets)

    if args.command == "embed-key":
        return embed.cli(args, settings)

    if args.command == "engine":
        from . import engine as engine_mod
        engine_mod.run(args.host, args.port)
        return 0

    import uvicorn

    from .app import create_app
    from .server import DrainingServer
    app = create_app(settings)
    server_config = uvicorn.Config(app, host=args.host or settings.host, port=args.port or settings.port, loop="uvloop",
                            http="httptools", ws="websockets-sansio", ws_per_message_deflate=False, log_config=None,
                            access_log=False, timeout_graceful_shutdown=10,
                            proxy_headers=False)  # X-Forwarded-For is judged by webapp.quotas (TRUSTED_PROXIES)
    # The start-up heap (imports, templates) never dies: keep it out of every later full collection.
    gc.collect()
    gc.freeze()
    DrainingServer(server_config, app.state.live).run()
    return 0
