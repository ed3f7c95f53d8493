"""Admission to the capture socket /ws/listen: every check a socket passes before its RelaySession runs.

In order (HostGuard, webapp/security.py, has already refused a foreign Host header): the Origin, before the
handshake is accepted; the embed key a widget socket carries; the login, for which a good capture key stands in;
the stream parameters; a server that is draining; the resume token; the client's quota; the embed key's stream
slot. A step that says no raises Refused, and the browser is told why (`error`, then `closed`) before the close.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.websockets import WebSocket

from . import protocol, realtime
from .apikeys import ApiAuthError, ApiClient, ApiKeys
from .browsersocket import socket_for
from .config import Settings
from .embed import EmbedKey, EmbedRefused, Embeds, Slot
from .logs import fields
from .protocol import ParamError, StreamParams, parse_params
from .quotas import Lease, QuotaError, Quotas
from .relay import LiveSessions, RelaySession
from .resume import Known, Resumes, new_nonce
from .security import Login, ResumeTokens, origin_allowed
from .share_pages import SharePages
from .store import STORE_ERRORS
from .upstreams import language_problem
from .usage import ApiQuotaError, Usage

log = logging.getLogger(__name__)


REALTIME_KEY = (
    "This server needs a key: pass ?api_key=<key> (or an Authorization: Bearer <key> header), a relay API key "
    "from `./scripts/caption-relay api-key create` or the access token."
)


class Refused(Exception):
    """A step's no: what the browser is told, and when it may try again (None: not retryable)."""

    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


class Admission:
    def __init__(
        self,
        settings: Settings,
        *,
        shares: SharePages,
        embeds: Embeds,
        login: Login,
        quotas: Quotas,
        live: LiveSessions,
        resumes: Resumes,
        resume_tokens: ResumeTokens,
        usage: Usage | None = None,
        api_keys: ApiKeys | None = None,
    ):
        self.settings = settings
        self.shares = shares  # the session's sink (its recorder) and the owner cookie
        self.embeds = embeds
        self.login = login
        self.quotas = quotas
        self.live = live
        self.resumes = resumes
        self.resume_tokens = resume_tokens
        self.usage = usage  # meters the session's audio per embed key and client IP
        self.api_keys = api_keys  # who may use /v1/realtime

    async def listen(self, ws: WebSocket) -> None:
        """The /ws/listen handler: the steps below in order, then the session."""
        settings, quotas = self.settings, self.quotas
        if not origin_allowed(ws, settings):
            log.warning("origin_refused", extra=fields(origin=ws.headers.get("origin")))
            await ws.close(code=1008)  # before accept: the handshake is answered with HTTP 403
            return
        await ws.accept()
        resume = lease = None
        try:
            embed_key = self.embed_key(ws)
            self.check_login(ws, embed_key)
            params = self.params(ws)
            self.check_draining()
            sink = self.shares.sink(ws)
            owner = getattr(sink, "owner", None)
            key_id = embed_key.id if embed_key is not None else ""
            nonce = new_nonce()  # the resume token this session's `ready` gives carries it
            resume = await self.resume(ws, sink, owner, key_id, nonce)
            lease = self.lease(ws, resume)

            def issue_token(session_id: str) -> str:
                """For `ready`: from now on the page holds the token of the new nonce (unless its socket is known
                gone: a socket that is replaced or dropped while the recognizer connects gets its `ready` too late)."""
                if not (session.closing and session.close_reason == "client_gone"):
                    self.resumes.delivered(session_id, nonce)
                return self.resume_tokens.issue(session_id, nonce, key_id)

            sink.resume_nonce = nonce
            session = RelaySession(
                socket_for(ws),
                settings,
                params,
                sink=sink,
                resume=resume,
                resume_token=issue_token,
                # no minute limit configured: nothing to count, so nothing on the per-frame path
                meter=lease.charge if quotas.meters_audio else None,
                on_limit=lambda: (lease.limit_code, *quotas.limit_message(lease)),
            )
            if resume is None:
                self.resumes.remember(session.id, Known(owner, nonce))
            embed_slot = self.slot(embed_key, session)
        except Refused as exc:
            if lease is not None:
                lease.release()
            if resume is not None:
                await self.resumes.give_back(
                    resume["session_id"], nonce
                )  # refused before `ready`: the token stays good
            await refuse(ws, exc)
            return
        await self.run(session, lease, embed_slot, nonce, key_id)

    # ---- the steps, in order -----------------------------------------------------------------------

    def embed_key(self, ws: WebSocket) -> EmbedKey | None:
        """Widget sockets carry their embed key (webapp/embed.py): a bad, expired or revoked one is refused."""
        try:
            return self.embeds.socket_key(ws.query_params.get("key"))
        except EmbedRefused as exc:
            raise Refused(exc.code, exc.message, exc.retry_after) from None

    def check_login(self, ws: WebSocket, embed_key: EmbedKey | None) -> None:
        """A good capture key stands in for the login, which a frame on another site cannot have."""
        if embed_key is not None:
            return
        allowed, wait = self.login.admit(ws)
        if wait is not None:
            raise Refused("login_throttled", Login.throttled(wait), retry_after=wait)
        if not allowed:
            raise Refused("unauthorized", "This server needs its access token: reload the page and log in.")

    def params(self, ws: WebSocket) -> StreamParams:
        try:
            params = parse_params(ws.query_params.multi_items())
        except ParamError as exc:
            raise Refused("bad_request", str(exc)) from None
        self.check_language(params)
        return params

    def check_language(self, params: StreamParams) -> None:
        """A language this server's recognizer does not transcribe is refused before any upstream is asked."""
        problem = language_problem(self.settings, params.language)
        if problem is not None:
            raise Refused("unsupported_language", problem)

    def check_draining(self) -> None:
        if self.live.draining:
            raise Refused("server_restart", "This server is restarting; reconnect in a moment.", retry_after=1)

    async def resume(self, ws: WebSocket, sink, owner: str | None, key_id: str, nonce: str) -> dict | None:
        """The state to continue from when the socket asks to resume (`?resume=<token>`); None for a new session."""
        if "resume" not in ws.query_params:
            return None
        try:
            resume = await self.resume_state(ws.query_params["resume"], sink, owner, key_id, nonce)
        except STORE_ERRORS as exc:  # another instance's session, or after a restart: only the store knows it
            log.warning("resume_store_unavailable", extra=fields(error=type(exc).__name__))
            raise Refused(
                "store_unavailable",
                "The session store is unavailable, so this session cannot be continued yet; reconnecting in a moment.",
                retry_after=2,
            ) from None
        if resume is None:
            raise Refused("resume_refused", "That session cannot be continued; a new one will start.")
        return resume

    async def resume_state(self, token: str, sink, owner: str | None, key_id: str, nonce: str) -> dict | None:
        """The state to continue a session from, or None when it must not be continued. Spends the token."""
        live, resumes = self.live, self.resumes
        claim = self.resume_tokens.verify(token)
        if claim is None or claim.key_id != key_id:
            return None
        session_id = claim.session_id
        known = resumes.get(session_id)
        stored = (
            None
            if known is not None and (session_id in live.running or session_id in live.ended)
            else await sink.resume_state(session_id)
        )
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
        try:
            state = live.ended.get(session_id) or stored or await sink.resume_state(session_id)
        except STORE_ERRORS:
            await resumes.give_back(session_id, nonce)  # claimed, but no `ready` will carry the new token
            raise
        if state is None or state.get("reason") == "client_closed":
            await resumes.give_back(session_id, nonce)
            return None  # unknown here, or the user pressed Stop: a stopped session is never restarted
        return {"session_id": session_id, **{k: state[k] for k in ("turns", "offset_s", "reason")}}

    def lease(self, ws: WebSocket, resume: dict[str, Any] | None) -> Lease:
        """The client's stream and minute quotas; a resumed session's minutes count from where it was."""
        try:
            return self.quotas.admit(self.quotas.client_ip(ws), (resume or {}).get("offset_s", 0.0))
        except QuotaError as exc:
            log.info("quota_refused", extra=fields(code=exc.code))
            raise Refused(exc.code, exc.message, exc.retry_after) from None

    def slot(self, embed_key: EmbedKey | None, session: RelaySession) -> Slot:
        """The embed key's --max-streams; its slot lets a revocation end the session."""
        try:
            return self.embeds.take_slot(embed_key, session)
        except EmbedRefused as exc:
            raise Refused(exc.code, exc.message, exc.retry_after) from None

    # ---- /v1/realtime: the seed's socket (webapp/realtime.py), the same steps where they apply -------

    async def realtime(self, ws: WebSocket) -> None:
        """The /v1/realtime handler: Origin, credentials, parameters, drain, quota; then a RelaySession that
        writes through the seed-message adapter. No resume (seed clients start a new stream) and no embed key."""
        settings = self.settings
        if not origin_allowed(ws, settings):
            log.warning("origin_refused", extra=fields(origin=ws.headers.get("origin")))
            await ws.close(code=1008)  # before accept: HTTP 403, as /ws/listen
            return
        await ws.accept()
        lease = None
        try:
            client = await self.authenticate(ws)
            try:
                params, options = realtime.parse(ws.query_params.multi_items())
            except ParamError as exc:
                raise Refused("bad_request", str(exc)) from None
            self.check_language(params)
            self.check_draining()
            sink = self.shares.sink(ws)
            sink.resume_nonce = new_nonce()  # recorded like any session; no token is ever given out for it
            lease = self.lease(ws, None)
            if self.usage is not None:
                try:
                    self.usage.check(client)  # the key's minutes for today
                except ApiQuotaError as exc:
                    raise Refused("quota_exceeded", str(exc), float(exc.retry_after)) from None
            meter = self.live_meter(client, lease)
            translator = realtime.Translator(options, settings.model)
            session = RelaySession(
                realtime.SeedSocket(socket_for(ws), translator),
                settings,
                params,
                sink=sink,
                meter=meter.charge,
                on_limit=meter.on_limit,
            )
        except Refused as exc:
            if lease is not None:
                lease.release()
            await ws.send_json(realtime.error_message(exc.code, exc.message, exc.retry_after))
            await ws.close(code=1008)
            return
        log.info("realtime_admitted", extra=fields(session=session.id, key_id=client.key_id, key_name=client.name))
        await self.run(session, lease, Slot(), "", api_key=client.key_id)

    async def authenticate(self, ws: WebSocket) -> ApiClient:
        """Who may use /v1/realtime (webapp/apikeys.py): a relay API key (`?api_key=`, as browsers cannot set
        headers, or `Authorization: Bearer`), the access token, or anyone while no key exists and no token is set."""
        if self.api_keys is None:
            return ApiClient("", "anonymous", self.quotas.client_ip(ws))
        try:
            return await self.api_keys.authenticate(ws)
        except ApiAuthError as exc:
            if exc.status != 401:
                raise Refused(
                    {429: "login_throttled"}.get(exc.status, exc.code), exc.message, exc.retry_after
                ) from None
            message = exc.message if exc.code == "api_key_revoked" else REALTIME_KEY
            raise Refused("unauthorized", message) from None

    def live_meter(self, client: ApiClient, lease: Lease):
        """The per-frame charge of a realtime session: the key's minutes per day, then the client's quotas."""
        lease_meter = lease if self.quotas.meters_audio else None
        if self.usage is None:
            return _LeaseMeter(lease_meter, self.quotas, lease)
        return self.usage.live_meter(client, lease_meter)

    async def run(
        self, session: RelaySession, lease: Lease, embed_slot: Slot, nonce: str, key_id: str = "", api_key: str = ""
    ) -> None:
        """Run an admitted session; its audio is charged to the embed key `key_id`, the API key `api_key` (ids)
        and the client's IP."""
        usage = self.usage

        def settle(session: RelaySession) -> None:
            """Runs before the page hears `closed`, so a client that reconnects at once meets up-to-date
            limits and a resumable record."""
            self.live.remove(session)
            lease.release()
            embed_slot.release()
            if usage is not None:
                usage.untrack(session)

        session.on_end = settle
        if usage is not None:
            usage.track(session, api_key=api_key, embed_key=key_id, ip=lease.client)
        self.live.add(session)
        try:
            await session.run()
        finally:
            settle(session)  # idempotent; covers a session that failed before its own end
            await self.resumes.give_back(session.id, nonce)  # only if it ended before its `ready`


async def refuse(ws: WebSocket, refusal: Refused) -> None:
    """Tell the browser why, then close: a refused handshake alone would give it no reason to show."""
    retry_after = refusal.retry_after
    await ws.send_json(
        protocol.error(refusal.code, refusal.message, retryable=retry_after is not None, retry_after=retry_after)
    )
    await ws.send_json({"type": "closed", "reason": refusal.code})
    await ws.close(code=1008)


class _LeaseMeter:
    """Without usage metering (tests that build Admission bare): the client quotas' charge alone."""

    def __init__(self, lease_meter: Lease | None, quotas: Quotas, lease: Lease):
        self.charge = lease_meter.charge if lease_meter is not None else None
        self.on_limit = lambda: (lease.limit_code, *quotas.limit_message(lease))
