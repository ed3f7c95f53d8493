"""Builds the Starlette app. The whole routing table is the `routes` list in create_app()."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from . import config as config_mod
from . import protocol
from .browsersocket import socket_for
from .config import Settings
from .embed import EmbedRefused, Embeds
from .logs import fields
from .protocol import ParamError, parse_params
from .quotas import QuotaError, Quotas
from .relay import LiveSessions, RelaySession
from .resume import Known, Resumes, new_nonce
from .security import Cookies, HostGuard, Login, ResumeTokens, SecurityHeaders, load_secret_key, origin_allowed
from .store import RedisError
from .viewer import Sharing

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
TEMPLATES_DIR = ROOT / "templates"


def _asset_version() -> str:
    """Changes whenever a static file changes, so browsers never run a stale worklet."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.glob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or config_mod.load()
    secret_key = load_secret_key(settings)  # one read of DATA_DIR/secret_key for every signer below
    quotas = Quotas(settings)
    cookies = Cookies(settings)  # __Host- names and Secure over HTTPS
    login = Login(settings, secret_key, cookies, quotas.client_ip)  # token attempts throttled per client
    resume_tokens = ResumeTokens(secret_key)
    live = LiveSessions()
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    asset_version = _asset_version()
    sharing = Sharing(settings, secret_key, asset_version, cookies=cookies)  # sessions, share links, viewers
    embeds = Embeds(settings, secret_key, asset_version)  # the /embed widget and its keys
    resumes = Resumes(sharing.backend)  # who may resume a session, with which token

    async def index(request: Request) -> Response:
        allowed = login.allowed(request)
        response = templates.TemplateResponse(request, "index.html", {
            "backend": settings.backend, "needs_login": not allowed, "logged_in": login.required and allowed,
            "asset_version": asset_version})
        return sharing.ensure_owner_cookie(request, response)  # the capture socket carries it to the session

    async def healthz(request: Request) -> Response:
        # 200 while degraded too: captions still flow without the store, and every instance shares it.
        store = await sharing.backend.health()
        ok = store["store"] == "ok" and store.get("live", "ok") == "ok"
        return JSONResponse({"status": "ok" if ok else "degraded", "backend": settings.backend, **store},
                            headers={"Cache-Control": "no-store"})

    async def login_submit(request: Request) -> Response:
        # A one-field urlencoded form: parsed here rather than pulling in python-multipart.
        try:
            body = await request.body()
        except ClientDisconnect:  # gone mid-body (or cut by the request timeout, webapp/server.py): nobody to answer
            return Response(status_code=400)
        form = dict(parse_qsl(body[:4096].decode("utf-8", "replace")))
        if not login.required:
            return RedirectResponse("/", status_code=303)
        right, wait = login.try_token(quotas.client_ip(request), form.get("token", ""))
        if not right:
            error, status, headers = "That access token is not right.", 401, None
            if wait is not None:
                error, status, headers = _throttled(wait), 429, {"Retry-After": str(wait)}
            return templates.TemplateResponse(request, "index.html", {
                "backend": settings.backend, "needs_login": True, "login_error": error,
                "asset_version": asset_version}, status_code=status, headers=headers)
        response = RedirectResponse("/", status_code=303)
        login.set_cookie(request, response)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        login.delete_cookie(request, response)
        return response

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def listen(ws: WebSocket) -> None:
        if not origin_allowed(ws, settings):
            log.warning("origin_refused", extra=fields(origin=ws.headers.get("origin")))
            await ws.close(code=1008)  # before accept: the handshake is answered with HTTP 403
            return
        await ws.accept()
        # Widget sockets carry their embed key (webapp/embed.py): a bad, expired or revoked one is refused; a good
        # capture key stands in for the login, which a frame on another site cannot have.
        try:
            embed_key = embeds.socket_key(ws.query_params.get("key"))
        except EmbedRefused as exc:
            await _refuse(ws, exc.code, exc.message)
            return
        if embed_key is None:
            allowed, wait = login.admit(ws)
            if wait is not None:
                await _refuse(ws, "login_throttled", _throttled(wait), retry_after=wait)
                return
            if not allowed:
                await _refuse(ws, "unauthorized", "This server needs its access token: reload the page and log in.")
                return
        try:
            params = parse_params(ws.query_params.multi_items())
        except ParamError as exc:
            await _refuse(ws, "bad_request", str(exc))
            return
        if live.draining:
            await _refuse(ws, "server_restart", "This server is restarting; reconnect in a moment.", retry_after=1)
            return
        sink = sharing.sink(ws)
        owner = getattr(sink, "owner", None)
        key_id = embed_key.id if embed_key is not None else ""
        nonce = new_nonce()  # the resume token this session's `ready` gives carries it
        resume = None
        if "resume" in ws.query_params:
            resume = await _resume_state(ws.query_params["resume"], sink, owner, key_id, nonce)
            if resume is None:
                await _refuse(ws, "resume_refused", "That session cannot be continued; a new one will start.")
                return

        async def refuse(code: str, message: str, retry_after: float | None) -> None:
            if resume is not None:
                await resumes.give_back(resume["session_id"], nonce)  # refused before `ready`: the token stays good
            await _refuse(ws, code, message, retry_after=retry_after)

        try:
            lease = quotas.admit(quotas.client_ip(ws), (resume or {}).get("offset_s", 0.0))
        except QuotaError as exc:
            log.info("quota_refused", extra=fields(code=exc.code))
            await refuse(exc.code, exc.message, exc.retry_after)
            return

        def issue_token(session_id: str) -> str:
            """For `ready`: from now on the page holds the token of the new nonce (unless its socket is known gone:
            a socket that is replaced or dropped while the recognizer connects gets its `ready` too late)."""
            if not (session.closing and session.close_reason == "client_gone"):
                resumes.delivered(session_id, nonce)
            return resume_tokens.issue(session_id, nonce, key_id)

        sink.resume_nonce = nonce
        session = RelaySession(socket_for(ws), settings, params, sink=sink, resume=resume, resume_token=issue_token,
                               meter=lease.charge, on_limit=lambda: (lease.limit_code, *quotas.limit_message(lease)))
        if resume is None:
            resumes.remember(session.id, Known(owner, nonce))
        try:  # the embed key's --max-streams; its slot lets a revocation end the session
            embed_slot = embeds.take_slot(embed_key, session)
        except EmbedRefused as exc:
            lease.release()
            await refuse(exc.code, exc.message, exc.retry_after)
            return
        def settle(session: RelaySession) -> None:
            """Runs before the page hears `closed`, so a client that reconnects at once meets up-to-date
            limits and a resumable record."""
            live.remove(session)
            lease.release()
            embed_slot.release()

        session.on_end = settle
        live.add(session)
        try:
            await session.run()
        finally:
            settle(session)  # idempotent; covers a session that failed before its own end
            await resumes.give_back(session.id, nonce)  # only if it ended before its `ready`

    async def _resume_state(token: str, sink, owner: str | None, key_id: str, nonce: str) -> dict | None:
        """The state to continue a session from, or None when it must not be continued. Spends the token."""
        claim = resume_tokens.verify(token)
        if claim is None or claim.key_id != key_id:
            return None
        session_id = claim.session_id
        known = resumes.get(session_id)
        stored = None if known is not None and session_id in (live.running.keys() | live.ended.keys()) \
            else await sink.resume_state(session_id)
        recorded_owner = known.owner if known is not None else (stored or {}).get("owner")
        if (known is None and stored is None) or recorded_owner != owner:
            log.info("resume_refused", extra=fields(session=session_id, why="owner"))
            return None  # a token without the cookie of the browser it was given to
        ended = live.ended.get(session_id) or stored
        if ended is not None and ended.get("reason") == "client_closed" and session_id not in live.running:
            return None  # the user pressed Stop: a stopped session is never restarted
        if not await resumes.claim(session_id, owner, claim.nonce, nonce):
            log.info("resume_refused", extra=fields(session=session_id, why="spent"))
            return None
        await live.take_over(session_id)
        state = live.ended.get(session_id) or stored or await sink.resume_state(session_id)
        if state is None or state.get("reason") == "client_closed":
            await resumes.give_back(session_id, nonce)
            return None  # unknown here, or the user pressed Stop: a stopped session is never restarted
        return {"session_id": session_id, **{k: state[k] for k in ("turns", "offset_s", "reason")}}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if settings.backend == "local":
            from .upstreams import local
            await local.startup(settings)
        log.info("app_started", extra=fields(backend=settings.backend, model=settings.model,
                                             allowed_origins=list(settings.allowed_origins),
                                             access_token=bool(settings.access_token)))
        try:
            await sharing.start()
            yield
        finally:
            await sharing.close()
            if settings.backend == "local":
                from .upstreams import local
                await local.shutdown()

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/favicon.ico", favicon),
        WebSocketRoute("/ws/listen", listen),
        *sharing.routes(),  # /s/<token>…, /ws/watch/<token>, /sessions, /api/sessions/…
        *embeds.routes(),  # /embed (the widget, framable by the sites its key names), /embed/snippet
        Mount("/static", NoCache(StaticFiles(directory=str(STATIC_DIR))), name="static"),
    ]
    async def store_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("store_unavailable", extra=fields(error=type(exc).__name__))  # not the path: it may hold a share token
        return JSONResponse({"error": "store_unavailable"}, status_code=503, headers={"Retry-After": "5"})

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={RedisError: store_unavailable, sqlite3.Error: store_unavailable})
    app.add_middleware(HostGuard, settings=settings)
    app.add_middleware(SecurityHeaders)
    app.state.settings = settings
    app.state.live = live  # the CLI drains it on SIGTERM
    return app


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


def _throttled(seconds: int) -> str:
    return f"Too many wrong access tokens from your address. Try again in {seconds} seconds."


async def _refuse(ws: WebSocket, code: str, message: str, retry_after: float | None = None) -> None:
    """Tell the browser why, then close: a refused handshake alone would give it no reason to show."""
    await ws.send_json(protocol.error(code, message, retryable=retry_after is not None, retry_after=retry_after))
    await ws.send_json({"type": "closed", "reason": code})
    await ws.close(code=1008)
