"""The owner API for a session's text rules (issue 19): `GET` and `PUT /api/sessions/{id}/rules` (the route is in
app.py). Same owner credential and Origin check as the other /api/sessions calls (webapp/share_pages.py). A PUT
is validated by webapp/textrules.py, stored with the session, and applied at once to the session if it runs in
this process: its page's events and what its viewers get from then on, its new key terms sent to the recognizer;
otherwise the change is published on the session's rules topic, for the process that runs it (webapp/recorder.py).
Exports and viewer snapshots read the stored rules, so they always show the rules as they are now.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .config import Settings
from .live import RULES_CHANGED, rules_topic
from .logs import fields
from .relay import LiveSessions
from .share_pages import SharePages
from .store import STORE_ERRORS
from .textrules import NO_RULES, RulesError, TextRules

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes: 200 rules of 300 characters fit with room; larger bodies are not read


def _bad(message: str) -> Response:
    return JSONResponse({"error": "bad_rules", "message": message}, status_code=400)


class SessionRules:
    def __init__(self, settings: Settings, shares: SharePages, live: LiveSessions):
        self.settings = settings
        self.shares = shares
        self.live = live

    async def api(self, request: Request) -> Response:
        meta = await self.shares.owned_api(request)  # the owner cookie and Origin, as for /share and the exports
        if isinstance(meta, Response):
            return meta
        session_id = meta["id"]
        running = self.live.running.get(session_id)
        if request.method == "GET":
            stored = await self.shares.store.get_rules(session_id)
            rules = running.rules if running is not None else TextRules.load(stored) if stored else NO_RULES
            return JSONResponse(
                {"rules": rules.to_dict(), "running": running is not None}, headers={"Cache-Control": "no-store"}
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _bad(f"the rules are over {MAX_BODY // 1024} KiB; send at most 200 short replacements")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _bad('send JSON: {"replacements": [["from", "to"]], "profanity": false, "keyterms": []}')
        try:
            rules = TextRules.parse(data)
        except RulesError as exc:
            return _bad(str(exc))
        if not await self.shares.store.set_rules(session_id, rules.to_dict()):
            return JSONResponse({"error": "not_found"}, status_code=404)  # deleted meanwhile
        running = self.live.running.get(session_id)  # (it may have ended or resumed while the store wrote)
        if running is not None:
            keyterms = running.set_rules(rules)
        else:  # ended, or running in another process (Redis): that one reads the stored rules again
            keyterms = "not_running"
            try:
                await self.shares.broker.publish(rules_topic(session_id), RULES_CHANGED)
            except STORE_ERRORS as exc:  # stored: the follower reads them again when its feed is back (a gap)
                log.warning("rules_publish_failed", extra=fields(session=session_id, error=type(exc).__name__))
        log.info(
            "rules_set",
            extra=fields(
                session=session_id,
                replacements=len(rules.replacements),
                profanity=rules.profanity,
                keyterms=len(rules.keyterms),
                keyterms_status=keyterms,
            ),
        )
        return JSONResponse({"rules": rules.to_dict(), "keyterms": keyterms}, headers={"Cache-Control": "no-store"})
