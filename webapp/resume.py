"""Who may continue a session on a new socket (`/ws/listen?resume=<token>`), and with which token.

A resume token (webapp.security.ResumeTokens) names the session, the session's resume nonce when it was issued
and the embed key the session runs under. A socket may resume the session only
- with the owner credential the session was recorded with (the signed `cr_owner` cookie, or none for a widget
  whose frame gets no cookies), so a token lifted from a page is of no use without that browser's cookie;
- with the session's current nonce, which the resume replaces at once: a compare-and-set in the store, so the
  token is spent on every instance and after a restart. The new `ready` carries a token with the new nonce.
A resumed socket that ends before its `ready` (so its page never got the new token) gives the nonce back, and a
page that tries again while the server has not yet noticed that socket is gone takes the claim over: a page
that keeps losing its connection keeps its session.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from .logs import fields
from .store import SessionStore

log = logging.getLogger(__name__)


def new_nonce() -> str:
    return secrets.token_urlsafe(12)


@dataclass
class Known:
    owner: str | None
    nonce: str  # the nonce the session's next resume must present
    prev: str | None = None  # the nonce the socket now running it presented, while its `ready` is not sent


class Resumes:
    KEPT = 10_000  # sessions remembered; beyond, the oldest are decided by the store alone

    def __init__(self, store: SessionStore):
        self.store = store
        self.known: dict[str, Known] = {}  # this process's sessions: and the fallback when the store cannot answer

    def get(self, session_id: str) -> Known | None:
        return self.known.get(session_id)

    def remember(self, session_id: str, known: Known) -> None:
        self.known.pop(session_id, None)
        self.known[session_id] = known
        while len(self.known) > self.KEPT:
            del self.known[next(iter(self.known))]

    async def claim(self, session_id: str, owner: str | None, presented: str, new: str) -> bool:
        """Spend the nonce `presented` (replace it by `new`): True if this socket may resume the session."""
        known = self.known.get(session_id)
        candidates = [presented]
        if known is not None and known.prev == presented:
            # That socket has not delivered its token: take its claim over (or meet its give_back half done).
            candidates.insert(0, known.nonce)
        for expected in candidates:
            try:
                ok = await self.store.claim_resume(session_id, expected, new)
            except Exception as exc:  # the store is down: this process's own view decides
                log.warning("resume_store_failed", extra=fields(session=session_id, error=type(exc).__name__))
                ok = None
            if ok is None:  # not stored (its recording failed) or no answer
                known = self.known.get(session_id)
                ok = known is not None and known.nonce == expected
            if ok:
                self.remember(session_id, Known(owner, new, presented))
                return True
        return False

    async def give_back(self, session_id: str, nonce: str) -> None:
        """The socket that claimed `nonce` ends without having sent it: the page's token is good again."""
        known = self.known.get(session_id)
        if known is None or known.nonce != nonce or known.prev is None:
            return
        prev = known.prev
        known.nonce, known.prev = prev, None
        try:
            await self.store.claim_resume(session_id, nonce, prev)
        except Exception as exc:
            log.warning("resume_store_failed", extra=fields(session=session_id, error=type(exc).__name__))

    def delivered(self, session_id: str, nonce: str) -> None:
        """A `ready` with the token of `nonce` is sent: if that is the current nonce, there is nothing to give back."""
        known = self.known.get(session_id)
        if known is not None and known.nonce == nonce:
            known.prev = None
