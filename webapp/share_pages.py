"""Sharing a live transcript: the viewer page /s/<token> (and its short link /v/<id>), its OBS/vMix overlay
/s/<token>/overlay, its live socket /ws/watch/<token>, exports, the owner's /sessions list (names, search, delete,
QR codes) and the owner API (their routes are listed in app.py). `SharePages` also
runs the store's lifecycle and hands the relay its sink.

Every bad link gets the same generic page (404, or 410 once expired), whatever session it names or not,
so nothing of another session can be learned from a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import io
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

import segno
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import exports, live, metrics
from .broker import make_broker
from .config import Settings
from .links import SHORT_ID, Owners, ShareLinks, share_urls, short_id
from .live import PAUSING_REASONS, REVOKED, Viewer, live_deleted, live_revoked
from .logs import fields
from .protocol import ParamError, session_name
from .recorder import Recorder, Recording
from .security import Cookies, origin_allowed
from .store import STORE_ERRORS, make_store, store_url
from .textrules import TextRules
from .usage import Usage

log = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store"}
RETENTION_EVERY = 3600.0  # seconds between retention sweeps
NOINDEX = {"X-Robots-Tag": "noindex, nofollow", "Cache-Control": "no-store"}
EXPORTS = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json; charset=utf-8",
}

FORM_LIMIT = 4096  # bytes of a /sessions form post (one hidden field)
FORM_NOTICES = {  # what the /sessions page says after one of its buttons (?done=…)
    "off": "The share link is turned off: it no longer opens the captions.",
    "new": "A new share link is on; any earlier link no longer works.",
    "missing": "That session is no longer in your list.",
    "named": "The session's name is saved.",
    "badname": "That name was not saved: a name is at most 80 printable characters.",
    "deleted": "The session is deleted: its captions, downloads and share links are gone.",
    "live": "That session is still live: press Stop on its capture page first, then delete it.",
}
MAX_QUERY_CHARS = 100  # a search of /sessions or /api/sessions
QUERY_TOO_LONG = f"q must be at most {MAX_QUERY_CHARS} characters"
LIVE_NOT_DELETED = "This session is still live: stop it on its capture page first, then delete it."


async def _small_form(request: Request) -> dict[str, str] | None:
    """A urlencoded form of at most FORM_LIMIT bytes (None when larger); parsed here, no python-multipart."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace")))


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def qr_svg(url: str) -> bytes:
    """The QR code of `url` as an SVG image (segno: error correction M, 4-module quiet zone, 8 px a module)."""
    out = io.BytesIO()
    segno.make(url, error="m").save(out, kind="svg", scale=8, border=4, title="QR code of the share link")
    return out.getvalue()


def _pause_left(meta: dict[str, Any]) -> float:
    """Seconds a viewer should still wait for a session that a server restart (or crash) stopped; 0 if none."""
    if meta["live"] or meta.get("end_reason") not in PAUSING_REASONS or meta.get("ended_at") is None:
        return 0.0
    return max(0.0, live.PAUSE_GRACE - (time.time() - meta["ended_at"]))


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What a link holder may know of a session: never its owner or its other links."""
    return {
        k: meta.get(k)
        for k in (
            "id",
            "backend",
            "model",
            "sample_rate",
            "started_at",
            "ended_at",
            "duration",
            "audio_seconds",
            "end_reason",
            "live",
        )
    }


class SharePages:
    def __init__(self, settings: Settings, secret_key: str, templates: Jinja2Templates, cookies: Cookies | None = None):
        self.settings = settings
        self.store = make_store(store_url(settings))
        self.broker = make_broker(settings.redis_url or "memory://")
        self.recording = Recording(self.store, self.broker)
        self.links = ShareLinks(secret_key, settings.share_ttl_days)
        self.owners = Owners(secret_key, cookies or Cookies(settings))
        self.templates = templates
        self.retention_task: asyncio.Task | None = None
        self.usage: Usage | None = None  # set by create_app: the live sessions' audio so far, for /sessions

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.broker.start()
        recovered = await self.store.recover()
        if recovered:
            log.warning("sessions_interrupted", extra=fields(count=recovered))
        if self.settings.retention_days > 0:
            await self._purge()
            self.retention_task = asyncio.create_task(self._retention(), name="retention")
        log.info(
            "store_ready",
            extra=fields(
                store=type(self.store).__name__,
                broker=type(self.broker).__name__,
                retention_days=self.settings.retention_days,
                share_ttl_days=self.settings.share_ttl_days,
            ),
        )

    async def close(self) -> None:
        if self.retention_task:
            self.retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.retention_task
        await self.recording.finish()  # records still held for a down store: a short grace, then counted lost
        await self.broker.close()
        await self.store.close()

    async def _purge(self) -> None:
        try:
            cutoff = dt.datetime.now(dt.UTC).timestamp() - self.settings.retention_days * 86400
            removed = await self.store.purge(cutoff)
            log.info("retention_sweep", extra=fields(removed=removed, retention_days=self.settings.retention_days))
        except Exception as exc:
            log.error("retention_failed", extra=fields(error=repr(exc)))

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_EVERY)
            await self._purge()

    # ---- hooks for app.py ------------------------------------------------------------------------

    def sink(self, conn: HTTPConnection) -> Recorder:
        return Recorder(self.recording, self.links.mint, self.owners.read(conn))

    def ensure_owner_cookie(self, conn: HTTPConnection, response: Response) -> Response:
        self.owners.ensure_cookie(conn, response)
        return response

    # ---- link resolution -------------------------------------------------------------------------

    async def _resolve(self, token: str) -> tuple[int, dict[str, Any] | None]:
        """(200, session) for a good link; (404|410, None) otherwise."""
        check = self.links.check(token)
        if check.status == "expired":
            return 410, None
        if check.status != "ok":
            return 404, None
        meta = await self.store.get_session(check.session_id)
        if meta is None or meta.get("share_version") != check.version:
            return 404, None  # unknown, deleted by retention, or revoked: all look the same
        return 200, meta

    def _link_error(self, request: Request, status: int) -> Response:
        return self.templates.TemplateResponse(
            request,
            "link_error.html",
            {"status": status, "expired": status == 410},
            status_code=status,
            headers=NOINDEX,
        )

    # ---- viewer ----------------------------------------------------------------------------------

    async def _resolve_short(self, short: str) -> tuple[int, dict[str, Any] | None]:
        """A short link resolves through its session's current token: turned off, renewed or deleted, it is gone."""
        if not SHORT_ID.fullmatch(short):
            return 404, None
        meta = await self.store.session_by_short(short)
        if meta is None or not meta.get("share_token"):
            return 404, None
        return await self._resolve(meta["share_token"])

    async def short_viewer_page(self, request: Request) -> Response:
        status, meta = await self._resolve_short(request.path_params["short"])
        if meta is None:
            return self._link_error(request, status)
        return await self._viewer(request, meta["share_token"], meta)

    async def viewer_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        status, meta = await self._resolve(token)
        if meta is None:
            return self._link_error(request, status)
        return await self._viewer(request, token, meta)

    async def _viewer(self, request: Request, token: str, meta: dict[str, Any]) -> Response:
        turns = await self._shown_turns(meta["id"])
        return self.templates.TemplateResponse(
            request,
            "viewer.html",
            {
                "session": meta,
                "turns": turns,
                "token": token,
                "paused": _pause_left(meta) > 0,
                "started": _when(meta["started_at"]),
                "started_iso": _iso(meta["started_at"]),
                "name": meta.get("name"),
                "formats": list(EXPORTS),
            },
            headers=NOINDEX,
        )

    async def overlay_page(self, request: Request) -> Response:
        """The OBS/vMix browser source: the same link checks and live socket as the viewer; its style
        parameters are read and validated by static/caption-style.js (docs/overlay.md)."""
        token = request.path_params["token"]
        status, meta = await self._resolve(token)
        if meta is None:
            return self._link_error(request, status)
        return self.templates.TemplateResponse(
            request,
            "overlay.html",
            {"session": meta, "token": token, "paused": _pause_left(meta) > 0},
            headers=NOINDEX,
        )

    async def export(self, request: Request) -> Response:
        fmt = request.path_params["fmt"]
        status, meta = await self._resolve(request.path_params["token"])
        if meta is None:
            return self._link_error(request, status)
        if fmt not in EXPORTS:
            return self._link_error(request, 404)
        return await self._export(meta, fmt)

    async def _shown_turns(self, session_id: str) -> list[dict[str, Any]]:
        """The stored finals as people are shown them: with the session's text rules as they are now."""
        rules = TextRules.load(await self.store.get_rules(session_id))
        return rules.apply_turns(await self.store.get_turns(session_id))

    async def _export(self, meta: dict[str, Any], fmt: str) -> Response:
        turns = await self._shown_turns(meta["id"])
        if fmt == "txt":
            body = exports.to_txt(turns)
        elif fmt == "srt":
            body = exports.to_srt(turns)
        elif fmt == "vtt":
            body = exports.to_vtt(turns)
        else:
            body = exports.to_json(_public_meta(meta), turns)
        stamp = dt.datetime.fromtimestamp(meta["started_at"], dt.UTC).strftime("%Y%m%d-%H%M")
        headers = {**NOINDEX, "Content-Disposition": f'inline; filename="captions-{stamp}.{fmt}"'}
        return PlainTextResponse(body, media_type=EXPORTS[fmt], headers=headers)

    async def watch(self, ws: WebSocket) -> None:
        metrics.VIEWERS.inc()
        try:
            await self._watch(ws)
        finally:
            metrics.VIEWERS.dec()

    async def _watch(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            status, meta = await self._resolve(ws.path_params["token"])
        except STORE_ERRORS as exc:  # the store is down: the page says "reconnecting" and tries again
            log.info("viewer_store_unavailable", extra=fields(error=type(exc).__name__))
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await ws.close(1013, "store unavailable")
            return
        if meta is None:
            code = "expired" if status == 410 else "not_found"
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await ws.send_text(json.dumps({"type": "error", "code": code, "status": status}))
                await ws.close(1008)
            return
        session_id = meta["id"]
        # Subscribe before reading the snapshot: whatever is published from here on is queued, and the
        # viewer drops what the snapshot already holds (finals by seq, interims of finished turns).
        feed = self.broker.subscribe(session_id)
        viewer = Viewer(
            feed, ws.send_text, meta["share_version"], functools.partial(self.recording.catch_up, session_id)
        )
        sender = reader = None
        try:
            meta = await self.store.get_session(session_id) or meta
            if meta.get("share_version") != viewer.version:  # retired while it was resolved: its announcement went by
                await ws.send_text(REVOKED)
                await ws.close(1000)
                return
            turns = await self._shown_turns(session_id)
            wait = _pause_left(meta)  # stopped by a restart: its speaker's page is expected back
            await ws.send_text(
                json.dumps(
                    {
                        "type": "snapshot",
                        "live": meta["live"],
                        "paused": wait > 0,
                        "end_reason": meta.get("end_reason"),
                        "turns": [
                            {
                                "seq": t["seq"],
                                "turn": t["turn"],
                                "text": t["text"],
                                "start": t["start"],
                                "end": t["end"],
                            }
                            for t in turns
                        ],
                    },
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
            )
            if not meta["live"] and not wait:
                await ws.close(1000)
                return
            if wait:
                viewer.paused_until = time.monotonic() + wait
            viewer.min_seq = len(turns)
            viewer.done_turn = max((t["turn"] for t in turns if isinstance(t["turn"], int)), default=-1)
            sender = asyncio.create_task(viewer.run())
            reader = asyncio.create_task(self._drain(ws))
            done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and not sender.exception():
                why = sender.result()
                log.debug("viewer_done", extra=fields(session=session_id, why=why))
                if why == "not_resumed":
                    meta = await self.store.get_session(session_id)
                    if meta is not None and not meta["live"]:  # the speaker did not come back: it is over
                        await ws.send_text(
                            json.dumps(
                                {"type": "ended", "reason": meta.get("end_reason"), "ended_at": meta.get("ended_at")}
                            )
                        )
                        why = "ended"
                await ws.close(1000 if why in ("ended", "revoked", "deleted") else 1013)  # 1013: try again (overflow)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the viewer left
        except STORE_ERRORS as exc:  # the snapshot could not be read: the page reconnects
            log.info("viewer_store_unavailable", extra=fields(session=session_id, error=type(exc).__name__))
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await ws.close(1013, "store unavailable")
        finally:
            feed.close()
            for task in (sender, reader):
                if task is not None:
                    task.cancel()

    @staticmethod
    async def _drain(ws: WebSocket) -> None:
        """Viewers send nothing that matters; read only to notice when they leave."""
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return

    # ---- owner -----------------------------------------------------------------------------------

    async def _owned(self, request: Request) -> dict[str, Any] | None:
        owner = self.owners.read(request)
        if owner is None:
            return None
        meta = await self.store.get_session(request.path_params["session_id"][:64])
        return meta if meta is not None and meta.get("owner") == owner else None

    async def owned_api(self, request: Request) -> dict[str, Any] | Response:
        """The session of an owner's `/api/sessions/{id}/…` call, or the answer refusing it: 403 for another
        site's page (its Origin), 404 for a session that is not the caller's (or not there at all)."""
        if not origin_allowed(request, self.settings):
            return JSONResponse({"error": "forbidden"}, status_code=403, headers=NO_STORE)
        meta = await self._owned(request)
        return meta if meta is not None else JSONResponse({"error": "not_found"}, status_code=404, headers=NO_STORE)

    async def _revoke(self, meta: dict[str, Any]) -> None:
        await self._replace_link(meta, mint=False)

    async def _new_link(self, meta: dict[str, Any]) -> str:
        token = await self._replace_link(meta, mint=True)
        assert token is not None
        return token

    async def _replace_link(self, meta: dict[str, Any], mint: bool) -> str | None:
        """Retire the current link and its short link (their open viewers close now) and, with `mint`, make the
        next pair."""
        version = meta["share_version"] + 1
        token = self.links.mint(meta["id"], version) if mint else None
        await self.store.set_share(meta["id"], version, token)
        await self.store.set_short(meta["id"], short_id() if mint else None)
        await self.broker.publish(meta["id"], live_revoked(version))
        log.info("share_created" if mint else "share_revoked", extra=fields(session=meta["id"]))
        return token

    async def _delete(self, meta: dict[str, Any]) -> bool:
        """Delete a session that is not live: its record, finals and links; its open viewers are told now.
        (No audio is ever stored: the relay keeps only seconds of it in memory while a session runs.)"""
        if meta["live"]:
            return False
        await self.store.delete_session(meta["id"])
        await self.broker.publish(meta["id"], live_deleted())
        log.info("session_deleted", extra=fields(session=meta["id"]))
        return True

    async def _rename(self, meta: dict[str, Any], name: str | None) -> None:
        await self.store.rename_session(meta["id"], name)
        log.info("session_named", extra=fields(session=meta["id"], named=name is not None))

    def _absolute(self, request: Request, path: str) -> str:
        """`path` on this server as the browser reaches it (the Host header, which HostGuard checked)."""
        scheme = "https" if self.owners.cookies.https(request) else "http"
        return f"{scheme}://{request.headers.get('host', request.url.netloc)}{path}"

    async def api_share(self, request: Request) -> Response:
        meta = await self.owned_api(request)
        if isinstance(meta, Response):
            return meta
        if request.method == "DELETE":
            await self._revoke(meta)
            return Response(status_code=204)
        token = await self._new_link(meta)
        fresh = await self.store.get_session(meta["id"])
        return JSONResponse(share_urls(token, fresh.get("short_id") if fresh else None), status_code=201)

    async def api_session(self, request: Request) -> Response:
        """PATCH {"name": …} names a session (null or "" clears it); DELETE deletes it (409 while it is live)."""
        meta = await self.owned_api(request)
        if isinstance(meta, Response):
            return meta
        if request.method == "DELETE":
            if not await self._delete(meta):
                return JSONResponse({"error": "live", "message": LIVE_NOT_DELETED}, status_code=409)
            return Response(status_code=204)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                return JSONResponse(
                    {"error": "bad_request", "message": f"the body must be at most {FORM_LIMIT} bytes"}, status_code=400
                )
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or set(data) != {"name"}:
                raise ParamError('send a JSON object {"name": "…"} (null or "" clears the name)')
            name = None if data["name"] is None else session_name(data["name"])
        except (ValueError, ParamError, RecursionError) as exc:  # a JSONDecodeError is a ValueError too; too deep
            message = str(exc) if isinstance(exc, ParamError) else 'the body must be JSON: {"name": "…"}'
            return JSONResponse({"error": "bad_request", "message": message}, status_code=400)
        await self._rename(meta, name)
        return JSONResponse({**_public_meta(meta), "name": name}, headers={"Cache-Control": "no-store"})

    async def qr_code(self, request: Request) -> Response:
        """The QR code of the session's share link (its short link when it has one), for viewers in the room."""
        meta = await self._owned(request)
        if meta is None or not meta.get("share_token"):
            return JSONResponse({"error": "not_found"}, status_code=404)
        path = f"/v/{meta['short_id']}" if meta.get("short_id") else f"/s/{meta['share_token']}"
        return Response(
            qr_svg(self._absolute(request, path)), media_type="image/svg+xml", headers={"Cache-Control": "no-store"}
        )

    async def revoke_form(self, request: Request) -> Response:
        async def action(meta: dict[str, Any], form: dict[str, str]) -> str:
            await self._revoke(meta)
            return "off"

        return await self._owner_form(request, action)

    async def new_link_form(self, request: Request) -> Response:
        async def action(meta: dict[str, Any], form: dict[str, str]) -> str:
            await self._new_link(meta)
            return "new"

        return await self._owner_form(request, action)

    async def name_form(self, request: Request) -> Response:
        async def action(meta: dict[str, Any], form: dict[str, str]) -> str:
            try:
                name = session_name(form.get("name", ""))
            except ParamError:
                return "badname"
            await self._rename(meta, name)
            return "named"

        return await self._owner_form(request, action)

    async def delete_form(self, request: Request) -> Response:
        async def action(meta: dict[str, Any], form: dict[str, str]) -> str:
            return "deleted" if await self._delete(meta) else "live"

        return await self._owner_form(request, action)

    async def _owner_form(self, request: Request, action) -> Response:
        """A /sessions button. Browsers post these with `Origin: null` (Referrer-Policy: no-referrer), so the
        defence is the page's signed per-session token, plus Sec-Fetch-Site (or a foreign Origin) for what
        browsers mark as another site's. A refusal is a page that says so, never a silent redirect."""
        session_id = request.path_params["session_id"][:64]
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        form = await _small_form(request)
        other_site = site not in (None, "same-origin", "none") or (
            origin not in (None, "null") and not origin_allowed(request, self.settings)
        )
        if (
            other_site
            or form is None
            or not self.owners.form_token_ok(self.owners.read(request), session_id, form.get("csrf", ""))
        ):
            log.info(
                "form_refused",
                extra=fields(
                    session=session_id,
                    sec_fetch_site=(site or "")[:40],
                    origin=(origin or "")[:200],
                    other_site=other_site,
                ),
            )
            return self.templates.TemplateResponse(
                request, "form_refused.html", {}, status_code=403, headers={"Cache-Control": "no-store"}
            )
        meta = await self._owned(request)
        if meta is None:
            return RedirectResponse("/sessions?done=missing", status_code=303)  # deleted since the page was shown
        done = await action(meta, form)
        return RedirectResponse(f"/sessions?done={done}", status_code=303)

    async def owner_export(self, request: Request) -> Response:
        meta = await self._owned(request)
        if meta is None or request.path_params["fmt"] not in EXPORTS:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return await self._export(meta, request.path_params["fmt"])

    async def _listing(self, request: Request, query: str) -> list[dict[str, Any]]:
        """The owner's sessions (those matching `query` when one is given), with their previews and links."""
        owner = self.owners.read(request)
        if owner is None:
            return []
        if query:
            rows = await self.store.search_sessions(owner, query)
        else:
            rows = await self.store.list_sessions(owner)
        previews = await self.store.previews([r["id"] for r in rows])
        live_s = self.usage.live_seconds() if self.usage is not None else {}
        price = self.settings.cost_per_minute
        for row in rows:
            # Audio and cost: as recorded at the session's end; a live one's so far (this process's sessions).
            audio = live_s.get(row["id"], row["audio_seconds"]) if row["live"] else row["audio_seconds"]
            row["audio_minutes"] = None if audio is None else audio / 60
            cost = row.get("cost")
            row["cost"] = (
                cost if cost is not None and not row["live"] else None if audio is None else audio / 60 * price
            )
            row["form_token"] = self.owners.form_token(owner, row["id"])  # the page's forms only, never the API
            row.update(share_url=None, short_url=None)
            if row.get("share_token"):
                row.update(share_urls(row["share_token"], row.get("short_id")))
            row["started"] = _when(row["started_at"])
            row["started_iso"] = _iso(row["started_at"])
            row["preview"] = previews.get(row["id"], "")
            row["short_abs"] = self._absolute(request, row["short_url"]) if row["short_url"] else None
        return rows

    @staticmethod
    def _query(request: Request) -> str | None:
        """The search words of ?q= (spaces trimmed), or None when too long."""
        query = " ".join(request.query_params.get("q", "").split())
        return query if len(query) <= MAX_QUERY_CHARS else None

    async def api_list(self, request: Request) -> Response:
        query = self._query(request)
        if query is None:
            return JSONResponse({"error": "bad_request", "message": QUERY_TOO_LONG}, status_code=400)
        rows = await self._listing(request, query)
        return JSONResponse(
            {
                "sessions": [
                    {
                        **_public_meta(r),
                        "name": r.get("name"),
                        "preview": r["preview"],
                        "share_url": r["share_url"],
                        "short_url": r["short_url"],
                        "cost": r["cost"],
                    }
                    for r in rows
                ]
            },
            headers={"Cache-Control": "no-store"},
        )

    async def sessions_page(self, request: Request) -> Response:
        query = self._query(request)
        rows = await self._listing(request, query or "")
        response = self.templates.TemplateResponse(
            request,
            "sessions.html",
            {
                "sessions": rows,
                "total_minutes": sum(r["audio_minutes"] or 0 for r in rows),
                "total_cost": sum(r["cost"] or 0 for r in rows),
                "query": query if query is not None else request.query_params.get("q", "")[:MAX_QUERY_CHARS],
                "query_error": QUERY_TOO_LONG.replace("q must", "A search must") if query is None else None,
                "formats": list(EXPORTS),
                "notice": FORM_NOTICES.get(request.query_params.get("done", "")),
            },
            headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"},
        )
        return self.ensure_owner_cookie(request, response)
