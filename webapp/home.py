"""The capture page / and its access-token form (/login, /logout), plus /healthz and /favicon.ico.
The socket the page captures on is /ws/listen (webapp/admission.py)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from .config import Settings
from .security import Login
from .share_pages import SharePages


class Home:
    def __init__(self, settings: Settings, templates: Jinja2Templates, *, login: Login, shares: SharePages):
        self.settings = settings
        self.templates = templates
        self.login = login
        self.shares = shares  # the store's health and the owner cookie

    async def index(self, request: Request) -> Response:
        allowed = self.login.allowed(request)
        response = self.templates.TemplateResponse(
            request,
            "index.html",
            {
                "backend": self.settings.backend,
                "needs_login": not allowed,
                "logged_in": self.login.required and allowed,
            },
        )
        return self.shares.ensure_owner_cookie(request, response)  # the capture socket carries it to the session

    async def healthz(self, request: Request) -> Response:
        # 200 while degraded too: captions still flow without the store, and every instance shares it.
        store = await self.shares.recording.health()
        ok = store["store"] == "ok" and store.get("live", "ok") == "ok"
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "backend": self.settings.backend, **store},
            headers={"Cache-Control": "no-store"},
        )

    async def login_submit(self, request: Request) -> Response:
        # A one-field urlencoded form: parsed here rather than pulling in python-multipart.
        try:
            body = await request.body()
        except ClientDisconnect:  # gone mid-body (or cut by the request timeout, webapp/server.py): nobody to answer
            return Response(status_code=400)
        form = dict(parse_qsl(body[:4096].decode("utf-8", "replace")))
        if not self.login.required:
            return RedirectResponse("/", status_code=303)
        right, wait = self.login.try_token(self.login.client_ip(request), form.get("token", ""))
        if not right:
            error, status, headers = "That access token is not right.", 401, None
            if wait is not None:
                error, status, headers = Login.throttled(wait), 429, {"Retry-After": str(wait)}
            return self.templates.TemplateResponse(
                request,
                "index.html",
                {"backend": self.settings.backend, "needs_login": True, "login_error": error},
                status_code=status,
                headers=headers,
            )
        response = RedirectResponse("/", status_code=303)
        self.login.set_cookie(request, response)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        self.login.delete_cookie(request, response)
        return response

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204)
