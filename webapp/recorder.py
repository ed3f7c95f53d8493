"""Recording a capture session: `Recorder` is the relay's SessionSink. It keeps the one rule that ties the store
(webapp/store.py) to the live fan-out (webapp/broker.py): a final turn is stored before anyone is told about it.
One writer task per session stores each final and only then publishes it, in the order the recognizer produced
the events, so a viewer that has seen a final knows it survives a crash. Interim updates are published, never
stored. `Recording` is what this process's recorders share: the store, the broker, and the finals they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from . import metrics
from .broker import Broker, RedisBroker
from .links import share_urls, short_id
from .live import Live, live_ended, live_resumed, live_transcript, rules_topic
from .logs import fields
from .relay import SessionSink
from .store import STORE_ERRORS, SessionStore, backoff
from .textrules import NO_RULES, TextRules

log = logging.getLogger(__name__)

WRITE_QUEUE = 512  # events a session's writer may lag behind (a stalled store) before interims drop
# A store outage (Redis down or unreachable): what the app holds, and how it waits.
FINALS_HELD = 2000  # finals one session may hold unstored (the store is down) before new ones are lost...
FINALS_HELD_BYTES = 1 << 20  # ...or this many bytes of their JSON (1 MiB: ~1,000 turns of ten words, an hour of speech)
CLOSE_WAIT = 15.0  # seconds a session's end waits for its record to be written, while the store answers
SHUTDOWN_FLUSH = 2.0  # seconds the process gives unwritten records at exit before counting them lost


class Recording:
    """The store and broker this process records into, and what its recorders hold while the store is down."""

    def __init__(self, store: SessionStore, broker: Broker):
        self.store = store
        self.broker = broker
        self.lost = 0  # finals given up since start (held past FINALS_HELD, or at exit)
        self.recorders: set[Recorder] = set()  # those whose writer runs (it may outlive its session)
        self.on_reopen: Callable[[str], None] | None = None  # told of each session resumed here (its outputs)

    @property
    def held(self) -> int:
        """Finals of this process's sessions not yet stored (the store is down)."""
        return sum(r.held for r in self.recorders)

    @property
    def writers(self) -> set[asyncio.Task]:
        return {r.writer for r in self.recorders if r.writer is not None}

    async def health(self) -> dict[str, Any]:
        """For /healthz: the store's and the live feed's state, and the finals held and lost."""
        return {
            **await self.store.health(),
            **await self.broker.health(),
            "finals_held": self.held,
            "finals_lost": self.lost,
        }

    async def finish(self, timeout: float = SHUTDOWN_FLUSH) -> None:
        """At exit: give the records still being written `timeout` seconds, then count what is left as lost."""
        pending = {t for t in self.writers if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            if not task.done():
                task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def catch_up(self, session_id: str, seq: int) -> list[Live]:
        """What a viewer that has finals below `seq` missed: the later stored finals, then `ended` if it ended."""
        rules = TextRules.load(await self.store.get_rules(session_id))
        out = [
            live_transcript(rules.apply_turn({**t, "final": True}), t["seq"])
            for t in await self.store.finals_from(session_id, seq)
        ]
        meta = await self.store.get_session(session_id)
        if meta is not None and not meta["live"]:
            out.append(live_ended(meta.get("end_reason") or "ended", meta.get("ended_at") or 0.0))
        return out


@dataclass(slots=True)
class _Final:
    turn: dict[str, Any]
    size: int  # bytes of its JSON, for FINALS_HELD_BYTES
    stored: bool = False  # stored, not yet published (the publish failed)


@dataclass(slots=True)
class _End:
    values: dict[str, Any]
    live: Live
    stored: bool = False


class Recorder(SessionSink):
    """Records one capture session and publishes its events. event() only queues; one writer task per
    session stores each final before publishing it, in the recognizer's order. The speaker's captions never
    wait on it.

    While the store is down the writer holds the session's finals (at most FINALS_HELD, FINALS_HELD_BYTES),
    tries again with backoff and writes them in order once it answers; finals past the bound are lost,
    counted (/healthz), logged (`finals_lost`) and told to the page (a `notice`), never silently. Interims
    are dropped meanwhile. A session that ends during the outage is closed at once; its writer goes on in
    the background until the store is back or the process exits (Recording.finish)."""

    def __init__(self, recording: Recording, mint: Callable[[str, int], str], owner: str | None):
        self.recording = recording
        self.mint = mint
        self.owner = owner
        self.session = None  # the RelaySession: its page gets our notices
        self.resume_nonce: str | None = None  # recorded with a new session: its first resume token carries it
        self.session_id: str | None = None
        self.started_at = 0.0
        self.queue: deque[Any] = deque()  # interim events (dicts), _Final, then one _End
        self.wake = asyncio.Event()
        self.writer: asyncio.Task | None = None
        self.rules_follower: asyncio.Task | None = None  # with several processes: rules set through another
        self.seq = 0  # the next final's seq: a final's place among the stored ones
        self.held = 0  # finals queued and not yet stored, and their bytes
        self.held_bytes = 0
        self.lost = 0  # finals lost in the current outage
        self.recovering = False  # the store came back: held finals are being written
        self.flushed = 0  # ...this many so far
        self.stalled = asyncio.Event()  # set while the store fails this session's writes
        self.ending = False

    async def opened(self, session) -> dict[str, Any]:
        self.session = session
        if getattr(session, "resumed", False):
            reopened = await self._reopen(session)
            if reopened is not None:
                return reopened
        self.session_id = session.id
        self.started_at = time.time()
        token = self.mint(session.id, 0)
        meta = {
            "id": session.id,
            "owner": self.owner,
            "backend": session.settings.backend,
            "model": session.settings.model,
            "sample_rate": session.params.sample_rate,
            "started_at": self.started_at,
            "share_version": 0,
            "share_token": token,
            "resume_nonce": self.resume_nonce,
            "name": session.params.name,
            "short_id": short_id(),
        }
        try:
            await self.recording.store.create_session(meta)
        except Exception as exc:
            log.error("session_record_failed", extra=fields(session=session.id, error=repr(exc)))
            self.session_id = None
            return {}
        self._start_writer(session.id)
        return share_urls(token, meta["short_id"])

    async def _reopen(self, session) -> dict[str, Any] | None:
        """Continue the stored record of a resumed session: same share link, finals numbered on. A session whose
        record is gone is not recorded again (a new record would revive its deleted links); None: the store failed."""
        try:
            store = self.recording.store
            meta = await store.get_session(session.id)
            if meta is None:  # deleted by its owner since (or never recorded): it stays gone, its old links dead
                log.info("session_resumed_unrecorded", extra=fields(session=session.id))
                return {}
            self.seq = len(await store.get_turns(session.id))
            rules = await store.get_rules(session.id)
            await store.reopen_session(session.id)
            await self.recording.broker.publish(session.id, live_resumed())  # viewers waiting since the pause follow on
        except Exception as exc:
            log.error("session_reopen_failed", extra=fields(session=session.id, error=repr(exc)))
            return None
        self.session_id, self.started_at = session.id, meta["started_at"]
        if rules is not None:  # the rules set before the restart go on (key terms: in the new connection)
            session.set_rules(TextRules.load(rules))
        self._start_writer(session.id)
        if self.recording.on_reopen is not None:
            self.recording.on_reopen(session.id)
        return share_urls(meta["share_token"], meta.get("short_id")) if meta.get("share_token") else {}

    def _start_writer(self, session_id: str) -> None:
        if isinstance(self.recording.broker, RedisBroker):  # one process: the API applies rules itself
            self.rules_follower = asyncio.create_task(self._follow_rules(session_id), name=f"rules-{session_id}")
        self.writer = asyncio.create_task(self._write(session_id), name=f"recorder-{session_id}")
        self.recording.recorders.add(self)
        self.writer.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task) -> None:
        self.recording.recorders.discard(self)
        failed = not task.cancelled() and task.exception() is not None
        if failed:
            log.error("recorder_failed", extra=fields(session=self.session_id, error=repr(task.exception())))
        if self.held:  # stopped at exit (or by a bug) with finals unwritten
            held, self.held, self.held_bytes = self.held, 0, 0
            self._lose(held, "error" if failed else "exit")
        if self.queue and isinstance(self.queue[-1], _End):
            log.error("session_end_record_failed", extra=fields(session=self.session_id))

    async def resume_state(self, session_id: str) -> dict[str, Any] | None:
        """Where a stored session stands, for a page that reconnects after a server restart."""
        meta = await self.recording.store.get_session(session_id)
        if meta is None:
            return None
        turns = await self.recording.store.get_turns(session_id)
        numbered = [t["turn"] for t in turns if isinstance(t.get("turn"), int)]
        last_end = max((t["end"] for t in turns if isinstance(t.get("end"), (int, float))), default=0.0)
        return {
            "turns": max(numbered) + 1 if numbered else len(turns),
            "offset_s": max(meta.get("audio_seconds") or 0.0, last_end),
            "reason": meta.get("end_reason"),
            "owner": meta.get("owner"),
        }

    def event(self, event: dict[str, Any]) -> None:
        if self.writer is None or self.ending or self.session_id is None:  # (the id is set whenever the writer is)
            return
        queue = self.queue
        if event["final"]:
            turn = {
                "turn": event.get("turn"),
                "text": event.get("text", ""),
                "start": event.get("start"),
                "end": event.get("end"),
                "words": event.get("words") or [],
            }
            if "languages" in event:  # a multilingual recognizer's detected languages
                turn["languages"] = event["languages"]
            size = len(orjson.dumps(turn))
            if self.held >= FINALS_HELD or self.held_bytes + size > FINALS_HELD_BYTES:
                return self._lose(1, "held_full")
            self.held += 1
            self.held_bytes += size
            queue.append(_Final(turn, size))
        elif (
            len(queue) >= WRITE_QUEUE
            or self.stalled.is_set()
            or not self.recording.broker.available
            or not self.recording.broker.has_subscribers(self.session_id)
        ):
            return  # interims are only for live viewers, and expendable when the store is stalled or down
        else:
            queue.append(event)
        self.wake.set()

    def _lose(self, count: int, why: str) -> None:
        first = self.lost == 0
        self.lost += count
        self.recording.lost += count
        log.error("finals_lost", extra=fields(session=self.session_id, count=count, lost=self.lost, why=why))
        if first or why != "held_full":
            self._notice()

    def _notice(self) -> None:
        """Tell the speaker's page how many finals its recording lacks (its own captions are all there)."""
        out = getattr(self.session, "out", None)
        if out is not None:
            out.put(
                {
                    "type": "notice",
                    "code": "finals_lost",
                    "lost": self.lost,
                    "message": f"The session store was unavailable: {self.lost} caption line(s) could not be "
                    "saved to the recording or the share link. Live captions continue.",
                }
            )

    async def _follow_rules(self, session_id: str) -> None:
        """Text rules set through another process's API (webapp/session_rules.py publishes RULES_CHANGED on the
        session's rules topic): read the stored rules and apply them to the running session."""
        feed = self.recording.broker.subscribe(rules_topic(session_id))
        try:
            async for _ in feed:  # a change, or a gap (the feed was down: one may have been missed)
                try:
                    stored = await self.recording.store.get_rules(session_id)
                except STORE_ERRORS:
                    continue  # the next change (or gap) reads them again
                if stored is not None and self.session is not None:
                    self.session.set_rules(TextRules.load(stored))
        finally:
            feed.close()

    @property
    def rules(self) -> TextRules:
        """The session's text rules as they are now: what viewers get is written with them."""
        return getattr(self.session, "rules", NO_RULES)

    async def _write(self, session_id: str) -> None:
        store, broker = self.recording.store, self.recording.broker
        failures = 0
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            item = self.queue[0]
            if isinstance(item, dict):  # an interim: a lost one is replaced by the next
                self.queue.popleft()
                if not failures:
                    with contextlib.suppress(Exception):
                        await broker.publish(session_id, live_transcript(self.rules.apply_turn(item)))
                continue
            try:
                # Store, then publish; a retry after the store took it publishes only.
                if isinstance(item, _Final):
                    seq = self.seq
                    # After a failure the write may have landed (only its reply was lost): never store it twice.
                    if not item.stored:
                        landed = (
                            failures and (stored := await store.stored_finals(session_id)) is not None and stored > seq
                        )
                        if not landed:
                            await store.append_final(session_id, seq, item.turn)
                        item.stored = True
                    await broker.publish(
                        session_id, live_transcript(self.rules.apply_turn({**item.turn, "final": True}), seq)
                    )
                else:
                    if not item.stored:
                        await store.end_session(session_id, item.values)
                        item.stored = True
                    await broker.publish(session_id, item.live)
            except STORE_ERRORS as exc:
                failures += 1
                metrics.STORE_ERRORS.labels("recorder").inc()
                if failures == 1:
                    self.stalled.set()
                    log.warning(
                        "store_unavailable", extra=fields(session=session_id, held=self.held, error=type(exc).__name__)
                    )
                # Back off; wake early when the broker hears Redis is back (its listener resubscribed).
                restored, delay = broker.restored, backoff(failures)
                if restored.is_set():
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(restored.wait(), delay)
                continue
            self.queue.popleft()
            if failures:
                log.info("store_restored", extra=fields(session=session_id, tries=failures, held=self.held))
                failures = 0
                self.stalled.clear()
                self.recovering, self.flushed = True, 0
            if isinstance(item, _End):
                log.info(
                    "session_recorded",
                    extra=fields(session=session_id, finals=self.seq, reason=item.values["end_reason"]),
                )
                return
            self.seq += 1
            self.held -= 1
            self.held_bytes -= item.size
            if self.recovering:
                self.flushed += 1
                if self.held == 0:
                    log.info("finals_flushed", extra=fields(session=session_id, flushed=self.flushed, lost=self.lost))
                    if self.lost:
                        self._notice()  # the outage's final count
                    self.recovering, self.lost = False, 0

    async def closed(self, session, reason: str) -> None:
        if self.rules_follower is not None:
            self.rules_follower.cancel()
        if self.writer is None:
            return
        ended_at = time.time()
        values = {
            "ended_at": ended_at,
            "duration": round(ended_at - self.started_at, 3),
            "audio_seconds": round(session.audio_seconds, 3),
            "cost": round(session.audio_seconds / 60 * session.settings.cost_per_minute, 6),
            "end_reason": reason,
        }
        self.ending = True
        self.queue.append(_End(values, live_ended(reason, ended_at)))
        self.wake.set()
        # The page hears `closed` once the record is written, or at once if the store is down.
        stalled = asyncio.create_task(self.stalled.wait())
        try:
            await asyncio.wait({self.writer, stalled}, timeout=CLOSE_WAIT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stalled.cancel()
        if not self.writer.done():
            log.warning("session_record_pending", extra=fields(session=self.session_id, held=self.held))
