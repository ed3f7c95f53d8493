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
from . import metrics
from .admission import Admission
from .apikeys import ApiKeys
from .batch import Batch
from .config import Settings
from .embed import Embeds
from .home import Home
from .logs import fields
from .metrics import MetricsPage
from .outputs.api import OutputsApi
from .outputs.manager import Outputs
from .quotas import Quotas
from .relay import LiveSessions
from .resume import Resumes
from .security import Cookies, HostGuard, Login, ResumeTokens, SecurityHeaders, load_secret_key
from .session_rules import SessionRules
from .share_pages import SharePages
from .store import RedisError
from .templates import STATIC_DIR, asset_version, page_templates
from .usage import Usage

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
    usage = shares.usage = Usage(settings, shares.store)  # audio seconds and cost per key, embed key, IP
    # The one check of the API endpoints (/v1/...): `await api_keys.authenticate(conn)` (webapp/apikeys.py)
    api_keys = ApiKeys(settings, shares.store, login, quotas.client_ip, usage)
    app_metrics = MetricsPage(settings, quotas.client_ip, lambda: usage.key_rows, usage.sync_metrics)
    rules = SessionRules(settings, shares, live)  # a session's text rules (issue 19)
    home = Home(settings, templates, login=login, shares=shares)
    batch = Batch(settings, quotas, login, shares, api_keys, usage)  # OpenAI-compatible file transcription
    outputs = Outputs(settings, shares.store, shares.broker)  # caption outputs (issue 19): their runs
    shares.recording.on_reopen = outputs.resumed  # a resumed session's outputs run again
    outputs_api = OutputsApi(settings, shares, outputs)
    admission = Admission(
        settings,
        shares=shares,
        embeds=embeds,
        login=login,
        quotas=quotas,
        live=live,
        resumes=Resumes(shares.store),
        resume_tokens=ResumeTokens(secret_key),
        usage=usage,
        api_keys=api_keys,
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
            await usage.start()
            await outputs.start()  # sessions whose outputs were running when the app stopped
            yield
        finally:
            await outputs.close()
            await usage.close()  # the last usage of the sessions drained before it
            await shares.close()
            if settings.backend == "local":
                from .upstreams import local

                await local.shutdown()

    # Every route, in one list: each handler is a method of the object that holds what it needs.
    routes = [
        # the capture page and its login (webapp/home.py)
        Route("/", home.index),
        Route("/healthz", home.healthz),
        # Prometheus metrics, for loopback clients or METRICS_TOKEN (webapp/metrics.py)
        Route("/metrics", app_metrics.page),
        Route("/login", home.login_submit, methods=["POST"]),
        Route("/logout", home.logout, methods=["POST"]),
        Route("/favicon.ico", home.favicon),
        # the capture socket: every check before a session runs is in webapp/admission.py
        WebSocketRoute("/ws/listen", admission.listen),
        # the seed's (AIgateway's) realtime socket, same admission and session; its messages: webapp/realtime.py
        WebSocketRoute("/v1/realtime", admission.realtime),
        # a share link's viewer page, its exports and its live socket (webapp/share_pages.py)
        Route("/s/{token}", shares.viewer_page),
        Route("/s/{token}/overlay", shares.overlay_page),  # the OBS/vMix browser source (docs/overlay.md)
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
        Route("/api/sessions/{session_id}/rules", rules.api, methods=["GET", "PUT"]),  # webapp/session_rules.py
        # a session's caption outputs: YouTube, Zoom, webhooks, OBS (webapp/outputs/api.py)
        Route("/api/sessions/{session_id}/outputs", outputs_api.collection, methods=["GET", "POST"]),
        Route("/api/sessions/{session_id}/outputs/{output_id}", outputs_api.item, methods=["DELETE"]),
        # the widget, framable by the sites its key names, and its snippet page (webapp/embed.py)
        Route("/embed", embeds.widget),
        Route("/embed/snippet", embeds.snippet),
        # OpenAI-compatible batch transcription; each result is a session (webapp/batch.py)
        Route("/v1/audio/transcriptions", batch.transcriptions, methods=["POST"]),
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
    metrics.STORE_ERRORS.labels("request").inc()
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
