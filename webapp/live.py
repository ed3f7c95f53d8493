"""What viewers are sent: `Live` messages (encoded once per process), and the `Viewer` that sends one watching
socket its session's feed (webapp/broker.py) in order, filling gaps from the store and waiting out pauses."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .logs import fields
from .store import STORE_ERRORS

if TYPE_CHECKING:
    from .broker import Feed

log = logging.getLogger(__name__)

# A session stopped by a server restart (or a crash) is continued by its page's resume: viewers wait this
# long for it (the capture page gives up after 120 s, static/reconnect.js GIVE_UP_MS), then hear `ended`.
PAUSE_GRACE = 150.0
PAUSING_REASONS = ("server_restart", "interrupted")


@dataclass(frozen=True, slots=True)
class Live:
    """One live message, encoded once per process and sent as is to every viewer."""

    kind: (
        str  # "interim", "final", "ended", "revoked", "deleted", "paused" or "resumed" (and a Feed's "gap", "overflow")
    )
    text: str  # the JSON a viewer receives
    turn: int | None = None  # recognizer turn index (transcripts)
    seq: int | None = None  # position among the session's stored finals (finals)
    version: int | None = None  # revoked: links of a lower share version are retired (None: every link)

    @classmethod
    def decode(cls, text: str) -> Live:
        msg = json.loads(text)
        if msg.get("type") == "transcript":
            return cls("final" if msg.get("final") else "interim", text, msg.get("turn"), msg.get("seq"))
        if msg.get("type") == "revoked":
            version = msg.get("share_version")
            return cls("revoked", text, version=version if isinstance(version, int) else None)
        return cls(msg.get("type", "?"), text)


def _encode(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def live_transcript(event: dict[str, Any], seq: int | None = None) -> Live:
    """What viewers get of a transcript event: the text and times, not the word list."""
    final = bool(event.get("final"))
    msg = {
        "type": "transcript",
        "turn": event.get("turn"),
        "final": final,
        "text": event.get("text", ""),
        "start": event.get("start"),
        "end": event.get("end"),
    }
    if final:
        msg["seq"] = seq
    elif isinstance(stable := event.get("stable_chars"), int):
        msg["stable_chars"] = stable  # the agreed prefix (docs/protocol.md); the viewer shows the rest fainter
    return Live("final" if final else "interim", _encode(msg), event.get("turn"), seq)


def live_ended(reason: str, ended_at: float) -> Live:
    if reason in PAUSING_REASONS:  # the speaker's page resumes it: viewers wait instead of giving up
        return Live("paused", _encode({"type": "paused", "reason": reason}))
    return Live("ended", _encode({"type": "ended", "reason": reason, "ended_at": ended_at}))


REVOKED = _encode({"type": "revoked"})  # what a viewer gets of a revocation


def live_revoked(version: int | None = None) -> Live:
    """Links below share version `version` stop working ("New link", "Turn off link"); None: every link."""
    if version is None:
        return Live("revoked", REVOKED)
    return Live("revoked", _encode({"type": "revoked", "share_version": version}), version=version)


DELETED = _encode({"type": "deleted"})


def live_deleted() -> Live:
    """The session was deleted by its owner: every viewer is told and closed, whatever link it used."""
    return Live("deleted", DELETED)


def live_resumed() -> Live:
    return Live("resumed", _encode({"type": "resumed"}))


def rules_topic(session_id: str) -> str:
    """The broker topic on which a session's text rules changed (issue 19): its own, so viewers never get it and
    the session's interims are not delivered to the process that follows it."""
    return f"rules:{session_id}"


RULES_CHANGED = Live("rules", _encode({"type": "rules"}))  # the stored rules changed: read them again


class Viewer:
    """Sends one watching socket its feed. Finals and interims the snapshot already holds are skipped (by seq,
    and by turn); a revocation of an older link than the one it watches through is ignored.

    With `replay` (the store's finals from a seq on, as Live), a viewer fills gaps itself: when the feed says it
    was interrupted (a Redis outage) and when a final skips a seq, it sends the missing ones first."""

    __slots__ = ("done_turn", "feed", "min_seq", "paused_until", "replay", "send", "version")

    def __init__(
        self,
        feed: Feed,
        send: Callable[[str], Awaitable[None]],
        version: int | None = None,
        replay: Callable[[int], Awaitable[list[Live]]] | None = None,
    ):
        self.feed = feed
        self.send = send
        self.version = version  # the share version of the link it watches through (None: unknown)
        self.replay = replay
        self.min_seq = 0  # finals below this were in the snapshot
        self.done_turn = -1  # interims of turns up to this one are stale
        self.paused_until: float | None = None  # monotonic deadline while the session waits for its speaker

    def _stale(self, msg: Live) -> bool:
        if msg.kind == "final":
            return msg.seq is not None and msg.seq < self.min_seq
        if msg.kind == "interim":
            return msg.turn is not None and msg.turn <= self.done_turn
        if msg.kind == "revoked":  # it watches through the new link (or a later one): not retired
            return msg.version is not None and self.version is not None and self.version >= msg.version
        return False

    async def run(self) -> str:
        """Send until the session ends, is deleted or the link is revoked; returns why it stopped ("not_resumed" when a
        paused session was not continued within PAUSE_GRACE, "overflow" when it fell too far behind)."""
        while True:
            if self.paused_until is None:
                msg = await anext(self.feed)
            else:
                try:
                    msg = await asyncio.wait_for(anext(self.feed), self.paused_until - time.monotonic())
                except TimeoutError:
                    return "not_resumed"
            if msg.kind == "overflow":
                return "overflow"
            if msg.kind == "gap":
                if self.replay is not None and (why := await self._replay()):
                    return why
                continue
            if self._stale(msg):
                continue
            if msg.kind == "final" and self.replay is not None and (msg.seq or 0) > self.min_seq:
                if why := await self._replay():  # a gap: the missing finals first, in order
                    return why
                if self._stale(msg):
                    continue
            if why := await self._send(msg):
                return why

    async def _send(self, msg: Live) -> str | None:
        await self.send(REVOKED if msg.kind == "revoked" else msg.text)
        if msg.kind == "final":
            self.min_seq = max(self.min_seq, (msg.seq or 0) + 1)
            if msg.turn is not None:
                self.done_turn = max(self.done_turn, msg.turn)
        elif msg.kind in ("ended", "revoked", "deleted"):
            return msg.kind
        if msg.kind == "paused":
            self.paused_until = time.monotonic() + PAUSE_GRACE
        elif msg.kind in ("resumed", "final", "interim"):
            self.paused_until = None
        return None

    async def _replay(self) -> str | None:
        """Send the stored finals from min_seq on (and `ended` if it ended), then carry on live."""
        assert self.replay is not None  # the callers check
        try:
            missed = await self.replay(self.min_seq)
        except STORE_ERRORS as exc:  # still down: the next gap (the feed is back) tries again
            log.debug("viewer_replay_failed", extra=fields(error=type(exc).__name__))
            return None
        for msg in missed:
            if not self._stale(msg) and (why := await self._send(msg)):
                return why
        return None
