"""Runs each session's caption outputs: the table of kinds, one `SessionRun` per session with outputs (its live
feed from the broker: interims for the stable-prefix rule, finals as a wake-up) and one `OutputRun` task per
output, which reads the stored finals from its own cursor and delivers them in order, retrying with backoff.

Nothing lost, nothing doubled: an output's cursor (finals delivered, its own post number, what it sent early of
the open turn) is written to the store after every accepted post, so a restart or a network fault resumes at
the first caption not yet accepted, with the same post number (receivers treat a repeated number as a retry).
Zoom, which can say the last number it accepted, also gets the cursor-to-be before each post. A dead or
stalled receiver holds only its own task: the recorder, the speaker's socket, viewers and other outputs never
wait on it (each request has a timeout; early captions are one slot per session, replaced, never queued).

Which process delivers: the one holding the session's output lease in the store (taken when an output is added,
when a session with outputs resumes here, and at start-up for every session that has outputs still running),
renewed while it runs. One SQLite or memory store belongs to one process; with Redis, the lease keeps two
processes from delivering the same session twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..broker import Broker, Feed
from ..config import Settings
from ..exports import JOIN_GAP, ends_sentence
from ..live import PAUSE_GRACE, PAUSING_REASONS
from ..logs import fields
from ..store import STORE_ERRORS, SessionStore, backoff
from ..textrules import TextRules
from . import allowlist
from .base import Caption, DeliveryError, Destination
from .obs import ObsDestination
from .stable import EARLY_EVERY, StablePrefix, remainder
from .webhook import WebhookDestination, new_secret
from .youtube import YoutubeDestination
from .zoom import DEFAULT_LANG, ZoomDestination

log = logging.getLogger(__name__)

MAX_OUTPUTS = 16  # per session
DELIVER_TIMEOUT = 15.0  # seconds one delivery may take, whatever the kind does inside (httpx has its own 5 s)
RETRY = (0.5, 30.0)  # seconds: first and longest wait between tries of a failing receiver
GIVE_UP = 3600.0  # seconds of failures in a row after which an output is marked failed
LEASE_TTL = 10.0  # seconds a process's right to deliver a session's outputs lasts unless renewed (every third)
TICK = 0.25  # seconds between stable-prefix checks while a turn is open
LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}")


# ---- the kinds ----------------------------------------------------------------------------------


def _secret(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise allowlist.Refused(f"{name}: give a string of at most 200 characters")
    return value


def _youtube(body: dict[str, Any]) -> dict[str, Any]:
    return {}


def _zoom(body: dict[str, Any]) -> dict[str, Any]:
    lang = body.get("lang", DEFAULT_LANG)
    if not isinstance(lang, str) or not LANG.fullmatch(lang):
        raise allowlist.Refused("lang: give a language tag such as en-US")
    return {"lang": lang}


def _webhook(body: dict[str, Any]) -> dict[str, Any]:
    secret = _secret(body, "secret")
    if secret is not None and len(secret) < 16:
        raise allowlist.Refused("secret: at least 16 characters (or leave it out to get a generated one)")
    return {"secret": secret or new_secret(), "show_secret": secret is None}


def _obs(body: dict[str, Any]) -> dict[str, Any]:
    return {"password": _secret(body, "password")}


@dataclass(frozen=True)
class Kind:
    schemes: tuple[str, ...]  # what its URL may be
    options: Callable[[dict[str, Any]], dict[str, Any]]  # the request's other fields -> what the record keeps
    build: Callable[[str, dict[str, Any]], Destination]  # (url, options) -> a Destination
    early: str  # "new": an early post carries only the words not yet sent; "prefix": the whole stable beginning


KINDS: dict[str, Kind] = {
    "youtube": Kind(("https", "http"), _youtube, lambda url, o: YoutubeDestination(url), "new"),
    "zoom": Kind(("https", "http"), _zoom, lambda url, o: ZoomDestination(url, o["lang"]), "new"),
    "webhook": Kind(("https", "http"), _webhook, lambda url, o: WebhookDestination(url, o["secret"]), "prefix"),
    # obs-websocket 5 ({"url": "ws://host:4455", "password": …}); its host must be in OUTPUT_ALLOWED_URLS too
    "obs": Kind(("ws", "wss"), _obs, lambda url, o: ObsDestination(url, o.get("password")), "new"),
}


def new_record(session_id: str, body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A stored output from the owner's request, or Refused saying which field is wrong."""
    kind_name = body.get("type")
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise allowlist.Refused(f"type: one of {', '.join(KINDS)}")
    url = body.get("url")
    allowlist.check(kind_name, url, settings.output_allowed_urls, kind.schemes)  # type: ignore[arg-type]
    return {
        "id": secrets.token_hex(6),
        "session_id": session_id,
        "type": kind_name,
        "url": url.strip(),  # type: ignore[union-attr]
        "options": kind.options(body),
        "created_at": time.time(),
        "status": "active",  # or "failed", "stopped" (what is stored; "retrying" is only while it runs)
        "sent": 0,
        "failed": 0,
        "last_error": None,
        "cursor": {"next": 0, "seq": 0, "turn": None, "early": None, "ts": 0.0},
        "inflight": None,  # the cursor once the post being made is accepted (kinds whose receiver tells its seq)
    }


def public(record: dict[str, Any], run: OutputRun | None = None) -> dict[str, Any]:
    """What the owner's API shows of an output: never its URL in full, its secret or password."""
    state = run.state if run is not None else record["status"]
    return {
        "id": record["id"],
        "type": record["type"],
        "url": allowlist.mask(record["url"]),
        "state": state,
        "detail": run.dest.detail() if run is not None and run.dest is not None else None,
        "sent": record["sent"],
        "failed": record["failed"],
        "last_error": record["last_error"],
        "seq": record["cursor"]["seq"],
        "delivered_finals": record["cursor"]["next"],
        "created_at": record["created_at"],
    }


# ---- running them -------------------------------------------------------------------------------


class Outputs:
    """This process's output runs, by session."""

    def __init__(self, settings: Settings, store: SessionStore, broker: Broker):
        self.settings = settings
        self.store = store
        self.broker = broker
        self.holder = secrets.token_hex(8)  # this process, for the store's lease
        self.runs: dict[str, SessionRun] = {}
        self.tasks: set[asyncio.Task] = set()
        self.waiting: set[str] = set()  # sessions whose lease is asked for again later
        self.closing = False

    async def start(self) -> None:
        """Pick up, in the background (serving does not wait), every session whose outputs were running when the
        app stopped."""
        task = asyncio.create_task(self._pickup(), name="outputs-pickup")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pickup(self) -> None:
        try:
            session_ids = await self.store.output_sessions()
        except STORE_ERRORS as exc:
            log.error("outputs_pickup_failed", extra=fields(error=type(exc).__name__))
            return
        for session_id in session_ids:
            await self.ensure(session_id)

    async def close(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*(run.stop() for run in list(self.runs.values())), return_exceptions=True)

    def resumed(self, session_id: str) -> None:
        """The recorder reopened a session here (its page resumed): its stopped outputs run again."""
        task = asyncio.create_task(self.ensure(session_id, revive=True))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def ensure(self, session_id: str, revive: bool = False) -> SessionRun | None:
        """The session's run in this process, started if it has outputs to run and this process may run them.
        While another process holds the lease (or the store is down), this one asks again every LEASE_TTL / 3:
        a holder that was killed leaves its lease to expire, and its sessions must not wait for a restart."""
        run = self.runs.get(session_id)
        if run is not None or self.closing:
            if run is not None:
                run.wake_all()
            return run
        try:
            records = await self.store.get_outputs(session_id)
            if revive:
                for record in records:
                    if record["status"] == "stopped":
                        record["status"] = "active"
                        await self.store.update_output(session_id, record["id"], record)
            records = [r for r in records if r["status"] == "active"]
            if not records:
                return None
            meta = await self.store.get_session(session_id)
            if meta is None:
                return None
            if not await self.store.lease_outputs(session_id, self.holder, LEASE_TTL):
                self._later(session_id)
                return None
        except STORE_ERRORS as exc:
            log.warning("outputs_start_failed", extra=fields(session=session_id, error=type(exc).__name__))
            self._later(session_id)
            return None
        if session_id in self.runs:  # started by another caller while this one read the store
            return self.runs[session_id]
        run = SessionRun(self, meta)
        self.runs[session_id] = run
        for record in records:
            run.add(record)
        run.start()
        return run

    def _later(self, session_id: str) -> None:
        if session_id in self.waiting or self.closing:
            return
        self.waiting.add(session_id)

        async def again() -> None:
            try:
                await asyncio.sleep(LEASE_TTL / 3)
            finally:
                self.waiting.discard(session_id)
            await self.ensure(session_id)

        task = asyncio.create_task(again(), name=f"outputs-later-{session_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def add(self, session_id: str, record: dict[str, Any]) -> None:
        await self.store.add_output(session_id, record["id"], record)
        log.info("output_added", extra=fields(session=session_id, output=record["id"], kind=record["type"]))
        run = self.runs.get(session_id)
        if run is not None:
            run.add(record)
        else:
            await self.ensure(session_id)

    async def remove(self, session_id: str, output_id: str) -> bool:
        run = self.runs.get(session_id)
        if run is not None:
            await run.remove(output_id)
        found = await self.store.delete_output(session_id, output_id)
        if found:
            log.info("output_removed", extra=fields(session=session_id, output=output_id))
        return found

    def running(self, session_id: str) -> dict[str, OutputRun]:
        run = self.runs.get(session_id)
        return dict(run.outputs) if run is not None else {}


class SessionRun:
    """One session's outputs in this process: its live feed (interims, finals, end) and its output tasks."""

    def __init__(self, outputs: Outputs, meta: dict[str, Any]):
        self.manager = outputs
        self.meta = meta
        self.id: str = meta["id"]
        self.outputs: dict[str, OutputRun] = {}
        self.feed: Feed | None = None
        self.task: asyncio.Task | None = None
        self.early: Caption | None = None  # the open turn's stable beginning (the one slot every output reads)
        self.prefix: StablePrefix | None = None
        self.last_early = 0.0
        self.ended = not meta["live"] and meta.get("end_reason") not in PAUSING_REASONS
        self.paused_at: float | None = None if meta["live"] or self.ended else time.monotonic()
        self.turn_start: Any = None

    def start(self) -> None:
        self.feed = self.manager.broker.subscribe(self.id)  # before the outputs read the store: nothing slips by
        for run in self.outputs.values():
            run.start()
        self.task = asyncio.create_task(self._pump(), name=f"outputs-{self.id}")

    def add(self, record: dict[str, Any]) -> None:
        run = OutputRun(self, record)
        self.outputs[record["id"]] = run
        if self.task is not None:
            run.start()

    async def remove(self, output_id: str) -> None:
        run = self.outputs.pop(output_id, None)
        if run is not None:
            await run.stop()

    def wake_all(self) -> None:
        for run in self.outputs.values():
            run.wake.set()

    def output_done(self, run: OutputRun) -> None:
        # A failed or stopped output keeps its place (its state is shown) until the whole run ends.
        if all(r.task is None or r.task.done() for r in self.outputs.values()) and self.task is not None:
            self.task.cancel()  # nothing left to deliver: the run ends

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await asyncio.gather(*(r.stop() for r in list(self.outputs.values())), return_exceptions=True)
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _pump(self) -> None:
        assert self.feed is not None
        renewed = time.monotonic()
        try:
            while True:
                timeout = TICK if self.prefix is not None else LEASE_TTL / 3
                try:  # self.feed: an overflow replaces it
                    msg = await asyncio.wait_for(self.feed.__anext__(), timeout)
                except TimeoutError:
                    msg = None
                now = time.monotonic()
                if msg is not None:
                    self._message(msg.kind, msg.text, msg.turn, now)
                elif self.paused_at is not None and now - self.paused_at > PAUSE_GRACE:
                    meta = await self._meta()
                    if meta is not None and not meta["live"]:
                        self.ended = True  # its speaker did not come back
                        self.wake_all()
                    self.paused_at = None if meta is None or meta["live"] or self.ended else now
                self._early(now)
                if now - renewed > LEASE_TTL / 3:
                    renewed = now
                    with contextlib.suppress(*STORE_ERRORS):
                        if not await self.manager.store.lease_outputs(self.id, self.manager.holder, LEASE_TTL):
                            log.warning("outputs_lease_lost", extra=fields(session=self.id))
                            return
                        await self._sync()
        finally:
            self.feed.close()
            for run in list(self.outputs.values()):
                if run.task is not None and not run.task.done():
                    run.task.cancel()
            if self.manager.runs.get(self.id) is self:
                del self.manager.runs[self.id]
            with contextlib.suppress(*STORE_ERRORS):
                await self.manager.store.release_outputs(self.id, self.manager.holder)

    async def _sync(self) -> None:
        """Outputs added or removed through another process (Redis, several workers) join or leave this run."""
        records = {r["id"]: r for r in await self.manager.store.get_outputs(self.id)}
        for output_id, record in records.items():
            if output_id not in self.outputs and record["status"] == "active":
                self.add(record)
        for output_id in [i for i in self.outputs if i not in records]:
            await self.remove(output_id)

    async def _meta(self) -> dict[str, Any] | None:
        with contextlib.suppress(*STORE_ERRORS):
            return await self.manager.store.get_session(self.id)
        return None

    def _message(self, kind: str, text: str, turn: int | None, now: float) -> None:
        if kind == "interim":
            msg = json.loads(text)
            if self.prefix is None or self.prefix.turn != turn:
                self.prefix, self.early = StablePrefix(turn), None
                self.turn_start = msg.get("start")
            self.prefix.update(msg.get("text") or "", now)
        elif kind == "final":
            if self.prefix is not None and self.prefix.turn == turn:
                self.prefix = None
            if self.early is not None and self.early.turn == turn:
                self.early = None  # the final carries the rest (each output kept what it sent early)
            self.wake_all()
        elif kind in ("gap", "overflow"):  # finals published meanwhile are in the store
            if kind == "overflow":
                assert self.feed is not None
                self.feed.close()
                self.feed = self.manager.broker.subscribe(self.id)
            self.wake_all()
        elif kind == "ended":
            self.ended, self.paused_at = True, None
            self.wake_all()
        elif kind == "paused":
            self.paused_at = now
        elif kind == "resumed":
            self.paused_at, self.ended = None, False

    def _early(self, now: float) -> None:
        """Publish the open turn's stable beginning once it grew, at most every EARLY_EVERY seconds."""
        prefix = self.prefix
        if prefix is None or now - self.last_early < EARLY_EVERY:
            return
        n = prefix.stable(now)
        sent = len(self.early.text.split()) if self.early is not None else 0
        if n <= sent or prefix.turn is None:
            return
        start = self.turn_start if isinstance(self.turn_start, (int, float)) else 0.0
        self.early = Caption(
            session_id=self.id,
            turn=prefix.turn,
            text=" ".join(prefix.words[:n]),
            start=start,
            end=start,
            spoken_at=time.time() - (now - prefix.since[n - 1]),  # when its last word settled
            final=False,
        )
        self.last_early = now
        self.wake_all()


class OutputRun:
    """One output's task: deliver the session's finals from its cursor, and the open turn's stable beginning."""

    def __init__(self, session: SessionRun, record: dict[str, Any]):
        self.session = session
        self.record = record
        self.kind = KINDS.get(record["type"])
        self.dest: Destination | None = None
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.state = "active"
        self.failing_since: float | None = None

    @property
    def cursor(self) -> dict[str, Any]:
        return self.record["cursor"]

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"output-{self.record['id']}")
        self.task.add_done_callback(lambda _: self.session.output_done(self))

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def _log_fields(self, **kw) -> dict[str, Any]:
        return fields(session=self.session.id, output=self.record["id"], kind=self.record["type"], **kw)

    async def _run(self) -> None:
        try:
            if self.kind is None:  # stored by a build that had this kind (obs without its module)
                return await self._finish("failed", f"this server has no {self.record['type']} outputs")
            self.dest = dest = self.kind.build(self.record["url"], self.record["options"])
            server_seq = await self._attempt(dest.start)
            if server_seq is not None:
                self._continue_from(server_seq)
            while True:
                self.wake.clear()  # before looking: a final stored while we look wakes the wait below
                item = await self._next()
                if item is None:
                    if self.session.ended:
                        return await self._finish("stopped", None)
                    await self.wake.wait()
                    continue
                caption, after = item
                if caption is not None:
                    if server_seq is not None:  # the receiver can tell after a stop whether this post landed
                        self.record["inflight"] = after
                        await self._save()
                    seq = after["seq"]
                    accepted = await self._attempt(lambda c=caption, s=seq: dest.deliver(c, s))
                    if accepted:
                        self.record["sent"] += 1
                    else:
                        after = {**after, "seq": self.cursor["seq"]}  # skipped on purpose: the number is not used
                self.record["cursor"], self.record["inflight"] = after, None
                await self._save()
        except _Failed as failed:
            await self._finish("failed", failed.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: the output stops, said so, the session goes on
            log.error("output_crashed", extra=self._log_fields(error=repr(exc)))
            await self._finish("failed", "internal error")
        finally:
            if self.dest is not None:
                with contextlib.suppress(Exception):
                    await self.dest.close()

    def _continue_from(self, server_seq: int) -> None:
        """The receiver's last accepted number (Zoom): the post in flight at a stop landed if it has its number."""
        inflight = self.record.get("inflight")
        if inflight is not None and server_seq >= inflight["seq"]:
            self.record["cursor"] = inflight
        self.record["inflight"] = None
        self.cursor["seq"] = max(self.cursor["seq"], server_seq)

    async def _next(self) -> tuple[Caption | None, dict[str, Any]] | None:
        """The next caption to post and the cursor once it is accepted ((None, cursor): move on without a post)."""
        session, cursor = self.session, self.cursor
        finals = await self._store(lambda: session.manager.store.output_finals(session.id, cursor["next"], 1))
        meta = session.meta
        if finals:
            # The store keeps the recognizer's own text: the session's text rules as they are now, as viewers see it
            rules = TextRules.load(await self._store(lambda: session.manager.store.get_rules(session.id)))
            final = rules.apply_turn(finals[0])
            full = final.get("text") or ""
            early = cursor["early"]
            text = full
            words = final.get("words") or []
            if early is not None and early["turn"] == final.get("turn") and self.kind and self.kind.early == "new":
                rest = remainder(full, early["text"])
                if rest is not None:  # else the recognizer changed its mind: the whole final, as a correction
                    text, words = rest, words[len(early["text"].split()) :]
            after = {"next": cursor["next"] + 1, "seq": cursor["seq"] + 1, "turn": final.get("turn"), "early": None}
            if not text.strip():  # all of it went out early
                return None, {**after, "seq": cursor["seq"], "ts": cursor.get("ts", 0.0), "open": cursor.get("open")}
            start = final.get("start") or 0.0
            end = final.get("end") or start
            after["open"] = None if ends_sentence(text) else {"turn": final.get("turn"), "end": end}
            first = words[0].get("start") if words and isinstance(words[0], dict) else None
            spoken = meta["started_at"] + (first if isinstance(first, (int, float)) else start)
            spoken = max(spoken, cursor.get("ts", 0.0))  # timestamps never go back (YouTube orders by them)
            after["ts"] = spoken
            caption = Caption(
                session_id=session.id,
                turn=final.get("turn") or 0,
                text=text,
                start=start,
                end=end,
                spoken_at=spoken,
                final=True,
                seq=final["seq"],
                words=tuple(words),
                continues=_continues(cursor, final.get("turn"), start),
            )
            return caption, after
        early_caption = session.early
        if early_caption is None or self.kind is None:
            return None
        if cursor["turn"] is not None and early_caption.turn <= cursor["turn"]:
            return None  # that turn's final is already delivered
        prefix = early_caption.text  # from a published interim: the text rules are already applied
        sent = cursor["early"]["text"] if cursor["early"] and cursor["early"]["turn"] == early_caption.turn else ""
        new = remainder(prefix, sent) if sent else prefix
        if not new:
            return None  # nothing beyond what went out (or the prefix changed: wait for the final)
        spoken = max(early_caption.spoken_at, cursor.get("ts", 0.0))
        caption = Caption(
            session_id=session.id,
            turn=early_caption.turn,
            text=new if self.kind.early == "new" else prefix,
            start=early_caption.start,
            end=early_caption.end,
            spoken_at=spoken,
            final=False,
            continues=_continues(cursor, early_caption.turn, early_caption.start),
        )
        after = {
            **cursor,
            "seq": cursor["seq"] + 1,
            "early": {"turn": early_caption.turn, "text": prefix},
            "ts": spoken,
            "open": None if ends_sentence(prefix) else {"turn": early_caption.turn, "end": None},
        }
        return caption, after

    async def _attempt(self, call):
        """`call()` until the receiver accepts, with backoff; _Failed when it refuses for good or too long."""
        attempt = 0
        while True:
            try:
                result = await asyncio.wait_for(call(), DELIVER_TIMEOUT)
            except (DeliveryError, TimeoutError) as exc:
                error = exc if isinstance(exc, DeliveryError) else DeliveryError("the delivery took too long")
                attempt += 1
                now = time.monotonic()
                self.failing_since = self.failing_since or now
                self.record["failed"] += 1
                self.record["last_error"] = error.message
                if attempt == 1:
                    log.warning("output_failing", extra=self._log_fields(error=error.message))
                if not error.retryable or now - self.failing_since > GIVE_UP:
                    raise _Failed(error.message) from None
                self.state = "retrying"
                if attempt == 1:
                    await self._save()
                delay = backoff(attempt, *RETRY)
                await asyncio.sleep(max(delay, error.retry_after or 0.0))
                continue
            if attempt:
                log.info("output_restored", extra=self._log_fields(tries=attempt))
            self.state, self.failing_since = "active", None
            return result

    async def _store(self, call):
        """A store read, tried again with backoff while the store is down (the recorder holds the finals)."""
        attempt = 0
        while True:
            try:
                return await call()
            except STORE_ERRORS:
                attempt += 1
                await asyncio.sleep(backoff(attempt))

    async def _save(self) -> None:
        """Write the record (cursor and counts). Deleted meanwhile (another process took the DELETE): stop."""
        session = self.session
        try:
            exists = await self._store(
                lambda: session.manager.store.update_output(session.id, self.record["id"], self.record)
            )
        except asyncio.CancelledError:
            raise
        if not exists:
            raise asyncio.CancelledError

    async def _finish(self, status: str, error: str | None) -> None:
        self.state = self.record["status"] = status
        if error is not None:
            self.record["last_error"] = error
            log.warning("output_failed", extra=self._log_fields(error=error))
        with contextlib.suppress(*STORE_ERRORS, asyncio.CancelledError):
            await self.session.manager.store.update_output(self.session.id, self.record["id"], self.record)


def _continues(cursor: dict[str, Any], turn: Any, start: float) -> bool:
    """This output's last post did not end a sentence, and this caption goes on from it: the same turn, or one
    that starts within JOIN_GAP of its end (the rule the exports' cues follow)."""
    last = cursor.get("open")
    if not last:
        return False
    if last.get("turn") == turn:
        return True
    end = last.get("end")
    return isinstance(end, (int, float)) and isinstance(start, (int, float)) and start - end < JOIN_GAP


class _Failed(Exception):
    def __init__(self, message: str):
        self.message = message
