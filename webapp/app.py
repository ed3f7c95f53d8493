"""Builds the Starlette app. The whole routing table is the `routes` list in create_app()."""

from __future__ import annotations

import contextlib
import logging
import sqlite3

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import config as config_mod
from .admission import Admission
from .config import Settings
from .embed import Embeds
from .home import Home
from .logs import fields
from .quotas import Quotas
from .relay import LiveSessions
from .resume import Resumes
from .security import Cookies, HostGuard, Login, ResumeTokens, SecurityHeaders, load_secret_key
from .share_pages import SharePages
from .store import RedisError
from .templates import STATIC_DIR, asset_version, page_templates

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or config_mod.load()
    secret_key = load_secret_key(settings)  # one read of DATA_DIR/secret_key for every signer below
    quotas = Quotas(settings)
    cookies = Cookies(settings, quotas)  # __Host- names and Secure over HTTPS
    login = Login(settings, secret_key, cookies, quotas.client_ip)  # token attempts throttled per client
    live = LiveSessions()
    templates = page_templates(asset_version())  # the one Jinja2Templates, for every page
    shares = SharePages(settings, secret_key, templates, cookies=cookies)  # sessions, share links, viewers
    embeds = Embeds(settings, secret_key, templates)  # the /embed widget and its keys
    home = Home(settings, templates, login=login, shares=shares)
    admission = Admission(
        settings,
        shares=shares,
        embeds=embeds,
        login=login,
        quotas=quotas,
        live=live,
        resumes=Resumes(shares.store),
        resume_tokens=ResumeTokens(secret_key),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if settings.backend == "local":
            from .upstreams import local

            await local.startup(settings)
        log.info(
            "app_started",
            extra=fields(
                backend=settings.backend,
                model=settings.model,
                allowed_origins=list(settings.allowed_origins),
                access_token=bool(settings.access_token),
            ),
        )
        try:
            await shares.start()
            yield
        finally:
            await shares.close()
            if settings.backend == "local":
                from .upstreams import local

                await local.shutdown()

    # Every route, in one list: each handler is a method of the object that holds what it needs.
    routes = [
        # the capture page and its login (webapp/home.py)
        Route("/", home.index),
        Route("/healthz", home.healthz),
        Route("/login", home.login_submit, methods=["POST"]),
        Route("/logout", home.logout, methods=["POST"]),
        Route("/favicon.ico", home.favicon),
        # the capture socket: every check before a session runs is in webapp/admission.py
        WebSocketRoute("/ws/listen", admission.listen),
        # a share link's viewer page, its exports and its live socket (webapp/share_pages.py)
        Route("/s/{token}", shares.viewer_page),
        Route("/v/{short}", shares.short_viewer_page),  # a short link: a random id the store maps to the token
        Route("/s/{token}/transcript.{fmt}", shares.export),
        WebSocketRoute("/ws/watch/{token}", shares.watch),
        # the owner's sessions: the page, its buttons, the JSON API (webapp/share_pages.py)
        Route("/sessions", shares.sessions_page),
        Route("/sessions/{session_id}/revoke", shares.revoke_form, methods=["POST"]),
        Route("/sessions/{session_id}/share", shares.new_link_form, methods=["POST"]),
        Route("/sessions/{session_id}/name", shares.name_form, methods=["POST"]),
        Route("/sessions/{session_id}/delete", shares.delete_form, methods=["POST"]),
        Route("/api/sessions", shares.api_list),
        Route("/api/sessions/{session_id}", shares.api_session, methods=["PATCH", "DELETE"]),
        Route("/api/sessions/{session_id}/share", shares.api_share, methods=["POST", "DELETE"]),
        Route("/api/sessions/{session_id}/qr.svg", shares.qr_code),
        Route("/api/sessions/{session_id}/transcript.{fmt}", shares.owner_export),
        # the widget, framable by the sites its key names, and its snippet page (webapp/embed.py)
        Route("/embed", embeds.widget),
        Route("/embed/snippet", embeds.snippet),
        Mount("/static", NoCache(StaticFiles(directory=str(STATIC_DIR))), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={RedisError: store_unavailable, sqlite3.Error: store_unavailable},
    )
    app.add_middleware(HostGuard, settings=settings)
    app.add_middleware(SecurityHeaders)
    app.state.settings = settings
    app.state.live = live  # the CLI drains it on SIGTERM
    return app


async def store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store_unavailable", extra=fields(error=type(exc).__name__))  # not the path: it may hold a share token
    return JSONResponse({"error": "store_unavailable"}, status_code=503, headers={"Retry-After": "5"})


class NoCache:
    """ES module imports cannot carry ?v=, so make browsers revalidate static files (cheap 304s)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_no_cache(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [(b"cache-control", b"no-cache")]
            await send(message)

        await self.app(scope, receive, send_no_cache)
