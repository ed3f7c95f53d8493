"""The owner's API for a session's outputs (routes in app.py): add (POST), list with states (GET), remove
(DELETE) under /api/sessions/{id}/outputs. Same rules as the other /api/sessions calls: the owner cookie
names the session's owner, and a browser's Origin must be this site's (CSRF); a POST must also be JSON, which
a form on another site cannot send without the browser asking first."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import Settings
from ..live import PAUSING_REASONS
from ..share_pages import SharePages
from .allowlist import Refused
from .manager import MAX_OUTPUTS, Outputs, new_record, public

log = logging.getLogger(__name__)
BODY_LIMIT = 8192  # bytes of a POST body
NO_STORE = {"Cache-Control": "no-store"}


def _error(status: int, code: str, message: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code}
    if message:
        body["message"] = message
    return JSONResponse(body, status_code=status, headers=NO_STORE)


class OutputsApi:
    def __init__(self, settings: Settings, shares: SharePages, outputs: Outputs):
        self.settings = settings
        self.shares = shares
        self.outputs = outputs

    async def collection(self, request: Request) -> Response:
        """GET: the session's outputs; POST: add one."""
        meta = await self.shares.owned_api(request)  # the owner cookie and Origin, as the other /api/sessions calls
        if isinstance(meta, Response):
            return meta
        if request.method == "GET":
            running = self.outputs.running(meta["id"])
            rows = []
            records = sorted(await self.shares.store.get_outputs(meta["id"]), key=lambda r: r["created_at"])
            for record in records:
                run = running.get(record["id"])
                rows.append(public(run.record if run is not None else record, run))
            return JSONResponse({"outputs": rows}, headers=NO_STORE)
        return await self._add(request, meta)

    async def _add(self, request: Request, meta: dict[str, Any]) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "unsupported_media_type", "send the output as JSON (Content-Type: application/json)")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > BODY_LIMIT:
                return _error(413, "too_large", f"an output is at most {BODY_LIMIT} bytes of JSON")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # nested past json's recursion limit: a bad body too
            return _error(400, "bad_json", "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "bad_request", 'send a JSON object such as {"type": "youtube", "url": "…"}')
        if not meta["live"] and meta.get("end_reason") not in PAUSING_REASONS:
            return _error(409, "session_ended", "this session has ended: add outputs while it runs")
        if len(await self.shares.store.get_outputs(meta["id"])) >= MAX_OUTPUTS:
            return _error(409, "too_many_outputs", f"a session has at most {MAX_OUTPUTS} outputs: remove one first")
        try:
            record = new_record(meta["id"], body, self.settings)
        except Refused as exc:
            return _error(400, "refused", str(exc))
        show_secret = record["options"].pop("show_secret", False)
        await self.outputs.add(meta["id"], record)
        answer: dict[str, Any] = {"id": record["id"], "output": public(record)}
        if show_secret:  # generated here: shown this once, never again
            answer["secret"] = record["options"]["secret"]
        return JSONResponse(answer, status_code=201, headers=NO_STORE)

    async def item(self, request: Request) -> Response:
        """DELETE: remove one output (it stops at once)."""
        meta = await self.shares.owned_api(request)  # the owner cookie and Origin, as the other /api/sessions calls
        if isinstance(meta, Response):
            return meta
        if not await self.outputs.remove(meta["id"], request.path_params["output_id"][:64]):
            return _error(404, "not_found")
        return Response(status_code=204)
