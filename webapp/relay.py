"""One capture session: the browser socket on one side, an upstream recognizer on the other.

Nothing said is lost:
- Audio goes into an AudioLog before it goes upstream. The log keeps everything after the last final
  (bounded by REPLAY_SECONDS), so audio that arrives before the upstream is ready, or while it reconnects,
  is sent once it is, and a new upstream connection is replayed the open turn.
- A dropped upstream (closed, reset, stalled, `Error`, 5xx/429 on reconnect) is retried with capped
  exponential backoff and jitter, honouring Retry-After, while the browser is told `status: reconnecting`
  and then `status: live`. Times from a new connection are shifted onto the session's timeline, turn
  numbers continue, and a final already delivered is never delivered again.
- When an outage outlasts the replay buffer, a `gap` event says exactly which seconds were lost.
Every message the browser can send has a defined outcome (see docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import metrics, protocol
from .browsersocket import BrowserSocket, Outbox
from .config import Settings
from .logs import fields
from .protocol import MAX_AUDIO_FRAME, StreamParams
from .textrules import TextRules
from .timeline import Timeline
from .upstreams import Upstream, UpstreamError, UpstreamListener, make_upstream

log = logging.getLogger(__name__)
monotonic = time.monotonic

MAX_TEXT_MESSAGE = 4096  # bytes; control messages are tiny
CLOSE_GRACE = 5.0  # seconds a browser given up on has to take its last events before it is cut off
BACKLOG_PAUSE = 64  # browser messages held behind a control message before reading pauses
CLOSE_TIMEOUT = 15.0  # seconds to wait for the upstream's last events after CloseStream
BACKOFF_FIRST, BACKOFF_CAP = 0.25, 5.0
HEALTHY_SECONDS = 5.0  # a connection up this long (or that delivered a new final) ends an outage


class SessionSink:
    """Where a session's life is recorded (storage, live fan-out). The default records nothing.

    opened() runs before `ready` and returns extra fields for it (e.g. share_url); event() gets every
    transcript event as it is sent to the browser and must not block; closed() runs once at the end.
    """

    async def opened(self, session: RelaySession) -> dict[str, Any]:
        return {}

    def event(self, event: dict[str, Any]) -> None:
        pass

    async def closed(self, session: RelaySession, reason: str) -> None:
        pass

    async def resume_state(self, session_id: str) -> dict[str, Any] | None:
        """What a stored session needs to continue after a server restart: {"turns", "offset_s", "reason"}."""
        return None


class LiveSessions:
    """The sessions of this process: for resuming a session on a new socket and draining on shutdown."""

    ENDED_KEPT = 10_000

    def __init__(self):
        self.running: dict[str, RelaySession] = {}
        self.ended: dict[str, dict[str, Any]] = {}  # insertion-ordered; oldest dropped first
        self.draining = False

    def add(self, session: RelaySession) -> None:
        self.running[session.id] = session
        metrics.SESSIONS_ACTIVE.set(len(self.running))

    def remove(self, session: RelaySession) -> None:
        if self.running.get(session.id) is session:
            del self.running[session.id]
            metrics.SESSIONS_ACTIVE.set(len(self.running))
        self.ended[session.id] = {
            "turns": session.timeline.finals,
            "offset_s": session.audio_seconds,
            "reason": session.close_reason,
        }
        while len(self.ended) > self.ENDED_KEPT:
            del self.ended[next(iter(self.ended))]

    async def take_over(self, session_id: str, timeout: float = CLOSE_TIMEOUT) -> None:
        """A resumed socket replaces a session whose old socket may not have noticed it is gone yet."""
        old = self.running.get(session_id)
        if old is not None:
            old.request_stop("client_gone")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(old.done.wait(), timeout)

    async def drain(self, timeout: float) -> None:
        """Shutdown: finalize every open turn, tell each page to reconnect elsewhere, wait for them to end."""
        self.draining = True
        sessions = list(self.running.values())
        for session in sessions:
            session.request_stop("server_restart")
        if sessions:
            await asyncio.wait([asyncio.create_task(s.done.wait()) for s in sessions], timeout=timeout)
        log.info("drained", extra=fields(sessions=len(sessions)))


class AudioLog:
    """The session's audio not yet covered by a final, as frames with session-wide byte offsets."""

    def __init__(self, limit_bytes: int):
        self.frames: deque[bytes] = deque()
        self.start = 0  # session offset of frames[0]
        self.end = 0  # session offset just past the last frame
        self.limit = limit_bytes
        self.lost: list[tuple[int, int]] = []  # (start, end) offsets dropped for lack of room, not yet reported

    def append(self, data: bytes, upstream_has_it: bool) -> None:
        """Add a frame; over the limit, forget the oldest. Those count as lost only if no healthy upstream
        connection has them (a turn longer than the buffer on a healthy link loses nothing)."""
        self.frames.append(data)
        self.end += len(data)
        while self.end - self.start > self.limit:
            dropped = len(self.frames.popleft())
            if upstream_has_it:
                self.start += dropped
                continue
            if self.lost and self.lost[-1][1] == self.start:
                self.lost[-1] = (self.lost[-1][0], self.start + dropped)
            else:
                self.lost.append((self.start, self.start + dropped))
            self.start += dropped

    def trim(self, offset: int) -> None:
        """Forget frames that end at or before `offset` (a final covers them)."""
        frames = self.frames
        while frames and self.start + len(frames[0]) <= offset:
            self.start += len(frames.popleft())

    def since(self, offset: int):
        """Frames (sliced where needed) from `offset` to the end."""
        pos = self.start
        for frame in list(self.frames):
            nxt = pos + len(frame)
            if nxt > offset:
                yield frame if pos >= offset else frame[offset - pos :]
            pos = nxt


class RelaySession:
    """One capture session between two declared edges: the browser's socket (browsersocket.BrowserSocket; the
    session is its audiosocket.Listener) and the upstream (the session is its upstreams.UpstreamListener)."""

    def __init__(
        self,
        sock: BrowserSocket,
        settings: Settings,
        params: StreamParams,
        upstream_factory: Callable[[Settings, StreamParams, UpstreamListener], Upstream] = make_upstream,
        sink: SessionSink | None = None,
        *,
        resume: dict[str, Any] | None = None,
        resume_token: Callable[[str], str] | None = None,
        meter: Callable[[float], bool] | None = None,
        on_limit: Callable[[], tuple[str, str, float | None]] | None = None,
    ):
        self.settings = settings
        self.params = params
        self.sink = sink or SessionSink()
        self.factory = upstream_factory
        self.id = resume["session_id"] if resume else secrets.token_urlsafe(9)
        self.bps = params.bytes_per_second
        # the browser's edge
        self.sock = sock
        self.out = Outbox(sock, self._slow_client, self.id, settings.slow_client_seconds)
        self.on_batch = sock.hold  # the upstream's events of one message leave in one write
        self._backlog: deque | None = None  # browser messages waiting behind a control message
        self.on_bytes: Callable[[bytes], None] = self._on_audio  # the socket's audio: see on_text
        self._backlog_task: asyncio.Task | None = None
        self._paused: set[str] = set()  # why reading the browser is paused: "backlog", "upstream"
        self._browser_gone: asyncio.Future | None = None
        # the audio and where it stands upstream
        self.audio = AudioLog(settings.replay_seconds * self.bps)
        # Set by _connect() before anything uses it (every use is after a connect, or behind self.live).
        self.upstream: Upstream = None  # type: ignore[assignment]  # no Optional checks on the per-frame path
        self.live = False
        self.ever_live = False
        self.sent_to = 0  # session offset sent on the current upstream connection
        self.relayed = 0  # bytes sent upstream on earlier connections (replays included), for the metrics
        self.conn_from = 0  # session offset where the current connection's audio started
        self.timeline = Timeline(self.bps, int(resume["turns"]) if resume else 0)
        # What people see of the text (webapp/textrules.py); the sink records the recognizer's own. set_rules.
        self.rules = TextRules.build((), False, params.keyterms)
        self.closing = False  # the session is ending (CloseStream, browser gone, stop request)
        self.user_closed = False  # ...because the browser sent CloseStream
        self.close_reason = "client_closed"
        self.started = time.monotonic()
        self.last_audio = self.started
        self.resumed = resume is not None
        if resume:
            # Continue the session: times after the audio it had (turn numbers: the Timeline).
            self.audio.start = self.audio.end = self.sent_to = self.conn_from = int(resume["offset_s"] * self.bps) & ~1
        self.resume_token = resume_token
        self.meter = meter  # charges audio seconds to the quotas; False = over a limit
        self.on_limit = on_limit
        self.on_end: Callable[[RelaySession], None] | None = None  # bookkeeping before `closed` is sent
        self.done = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_error: dict[str, Any] | None = None

    @property
    def audio_seconds(self) -> float:
        """Where the session stands on its timeline: seconds of audio received (a resumed session included)."""
        return self.audio.end / self.bps

    @property
    def relayed_seconds(self) -> float:
        """Seconds of audio sent upstream over all connections (a replay after a reconnect counts again)."""
        return (self.relayed + self.sent_to - self.conn_from) / self.bps

    def touch(self) -> None:
        """The client is silent on purpose (a seed client's KeepAlive, webapp/realtime.py): not idle."""
        self.last_audio = monotonic()

    def request_stop(self, reason: str, error: dict[str, Any] | None = None) -> None:
        """End the session from outside (shutdown, a quota): finalize, deliver what is left, close."""
        if not self._stop.is_set():
            self.close_reason, self._stop_error = reason, error
            self._stop.set()

    def set_rules(self, rules: TextRules) -> str:
        """Text rules from now on (the page's events, and what the sink publishes). New key terms go to the live
        recognizer without reconnecting. Returns what became of the key terms: "unchanged", "sent" (its answer
        comes as a `notice`), "next_connection" (not live: the next connection's parameters carry them) or
        "unsupported" (the embedded recognizer takes no key terms)."""
        self.rules = rules
        if rules.keyterms == self.params.keyterms:
            return "unchanged"
        self.params = dataclasses.replace(self.params, keyterms=rules.keyterms)
        if self.live and self.upstream.configure(rules.keyterms):
            return "sent"
        return "unsupported" if self.settings.backend == "local" else "next_connection"

    # ---- browser -> relay ----------------------------------------------------------------------

    def _slow_client(self, why: str) -> None:
        """The browser takes none of its events (Outbox gave up on it): finalize, record, and close it."""
        self.request_stop(
            "slow_client",
            protocol.error(
                "slow_client",
                "This page stopped reading the captions, so the session was closed. Reload to caption again.",
            ),
        )

    def _on_audio(self, data: bytes) -> None:
        n = len(data)
        if n > MAX_AUDIO_FRAME:
            return self.out.bad_input(
                "frame_too_large",
                f"audio frame of {n} bytes dropped: the limit is {MAX_AUDIO_FRAME} bytes (send 80 ms frames)",
            )
        if n == 0 or n & 1:
            return self.out.bad_input(
                "bad_audio", f"audio frame of {n} bytes dropped: 16-bit PCM needs a non-zero, even byte count"
            )
        if self.closing:
            if self.user_closed:
                self.out.bad_input("bad_message", "audio after CloseStream is ignored")
            return  # the server is ending the session (restart, limit): the page will resend on resume
        self.last_audio = monotonic()
        if self.meter is not None and not self.meter(n / self.bps):
            if not self._stop.is_set():
                assert self.on_limit is not None  # admission gives both or neither
                code, message, retry_after = self.on_limit()
                self.request_stop(
                    code, protocol.error(code, message, retryable=retry_after is not None, retry_after=retry_after)
                )
            return  # over a limit (shared by the client's sessions, so checked per frame): not relayed
        self.audio.append(data, self.live)
        if self.live:
            self.sent_to += n
            self.upstream.send_audio(data)
        elif self.audio.lost:
            self._report_gaps()

    async def _on_text(self, text: str) -> None:
        if len(text) > MAX_TEXT_MESSAGE:
            return self.out.bad_input(
                "bad_message",
                f"text message over {MAX_TEXT_MESSAGE} bytes ignored; control messages are small JSON objects",
            )
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return self.out.bad_input("bad_message", 'text messages must be JSON, e.g. {"type":"CloseStream"}')
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in ("Finalize", "CloseStream", "KeepAlive"):
            shown = kind if isinstance(kind, str) and len(kind) <= 40 else "?"
            return self.out.bad_input(
                "unknown_message", f"unknown message type {shown!r}; send Finalize, CloseStream or KeepAlive"
            )
        if kind == "KeepAlive" or self.closing:
            return  # the relay keeps the upstream alive itself; repeated CloseStream is harmless
        if kind == "CloseStream":
            self.closing = self.user_closed = True
            if self.live:
                await self.upstream.close()
        elif self.live:
            await self.upstream.finalize()
        else:
            self.timeline.finalize_at(self.audio.end)  # applied at this point of the audio once connected
        # Not live: CloseStream is applied after the replay (self.closing).

    # The browser socket's listener (webapp.audiosocket.Listener): called as messages arrive (the direct socket:
    # from its data_received). Audio goes through the `on_bytes` attribute: _on_audio, or _hold while a control
    # message is being applied.
    def on_text(self, text: str) -> None:
        if self._backlog is None:
            self._backlog = deque()
            self.on_bytes = self._hold
            self._backlog_task = asyncio.get_running_loop().create_task(self._apply_backlog())
        self._hold(text)

    def _hold(self, message: bytes | str) -> None:
        """Audio after a control message waits for it (e.g. CloseStream, a Finalize the recognizer confirms)."""
        backlog = self._backlog
        assert backlog is not None  # on_text made it before routing anything here
        backlog.append(message)
        if len(backlog) == BACKLOG_PAUSE:
            self._pause_reading("backlog", True)

    async def _apply_backlog(self) -> None:
        backlog = self._backlog
        try:
            while backlog:
                message = backlog.popleft()
                if isinstance(message, str):
                    await self._on_text(message)
                else:
                    self._on_audio(message)
        finally:
            self._backlog = None
            self.on_bytes = self._on_audio
            self._pause_reading("backlog", False)

    def on_disconnect(self) -> None:
        if self._browser_gone is not None and not self._browser_gone.done():
            self._browser_gone.set_result(None)

    def on_writable(self) -> None:
        self.out.flush()

    def _pause_reading(self, reason: str, pause: bool) -> None:
        was = bool(self._paused)
        self._paused.add(reason) if pause else self._paused.discard(reason)
        if was != bool(self._paused):
            self.sock.pause_reading() if self._paused else self.sock.resume_reading()

    # ---- upstream -> browser: the upstream's listener (webapp.upstreams.UpstreamListener) -------------------
    # (on_batch is the socket's hold, set in __init__)

    def on_pressure(self, full: bool) -> None:
        """The upstream's send buffer is full (it reads slower than the browser sends): stop reading the browser."""
        self._pause_reading("upstream", full)

    def on_silence(self, data: bytes) -> None:
        """The upstream bridged a pause with silence: count it on the session timeline too."""
        self.audio.append(data, True)
        self.sent_to += len(data)

    def _report_gaps(self) -> None:
        for start, end in self.audio.lost:
            s, e = round(start / self.bps, 2), round(end / self.bps, 2)
            self.out.put(
                {
                    "type": "gap",
                    "start": s,
                    "end": e,
                    "message": f"The recognizer was unreachable too long: speech from {s} s to {e} s "
                    f"could not be transcribed.",
                }
            )
            log.warning("audio_lost", extra=fields(session=self.id, start=s, end=e))
        self.audio.lost.clear()

    def on_event(self, event: dict[str, Any]) -> None:
        """One upstream event: on the session's timeline and numbering (replays dropped), recorded, sent."""
        if not self.timeline.place(event):
            return
        if event["type"] == "transcript":
            if event["final"]:
                self.audio.trim(int(event["end"] * self.bps) & ~1)
                metrics.FINALS.inc()
                # End-of-turn latency in audio time: what arrived after the turn's last word (wall time for a mic).
                metrics.END_OF_TURN.observe(max(0.0, self.audio_seconds - event["end"]))
            self.sink.event(event)  # as recognized: the store keeps the original text
            if self.rules.active:
                event = self.rules.apply_turn(event)
        self.out.put(event)

    async def _connect(self) -> None:
        """(Re)connect upstream, then send everything the log holds that this connection has not had."""
        up = self.upstream = self.factory(self.settings, self.params, self)
        await up.connect()
        if not self.ever_live:
            extra = await self.sink.opened(self)
            ready = {
                "type": "ready",
                "session_id": self.id,
                "backend": self.settings.backend,
                "sample_rate": self.params.sample_rate,
                "resumed": self.resumed,
                # where this socket's audio starts on the session's timeline: a page may resend from here
                "offset_s": round(self.audio.start / self.bps, 3),
                **extra,
            }
            if self.resume_token is not None:
                ready["resume_token"] = self.resume_token(self.id)
            self.out.put(ready)
        if up.params.keyterms != self.params.keyterms:  # changed while this connection was being made
            up.configure(self.params.keyterms)
        self._report_gaps()
        self.relayed += self.sent_to - self.conn_from  # the previous connection's share
        self.sent_to = self.conn_from = self.audio.start
        timeline = self.timeline
        timeline.connected(self.sent_to)
        # Frames arriving during the replay are appended to the log and picked up by this loop.
        while self.sent_to < self.audio.end:
            for frame in self.audio.since(self.sent_to):
                self.sent_to += len(frame)
                up.send_audio(frame)
                for _ in range(timeline.due(self.sent_to)):
                    await up.finalize()
        self.live = True
        if self.closing:
            await up.close()

    async def _upstream_lifecycle(self) -> dict[str, Any] | None:
        """Run the upstream, reconnecting while it fails retryably. Returns the fatal error event, or None.

        A run of failures is one outage, bounded by UPSTREAM_RETRY_SECONDS however it happens: refused
        handshakes, or connections that open and fail soon after (a flapping upstream, a stretch of audio it
        chokes on, each replayed). Backoff and budget start again only after a connection proved healthy: it
        stayed up HEALTHY_SECONDS or delivered a new final."""
        outage_since: float | None = None
        attempt = 0
        said_live = True  # the page's view: the next failure is announced with `status: reconnecting`
        while True:
            connected_at: float | None = None
            finals_before = self.timeline.finals
            try:
                await self._connect()
                connected_at = time.monotonic()
                metrics.UPSTREAM_CONNECTS.labels(self.settings.backend).inc()
                if outage_since is not None:
                    metrics.UPSTREAM_RECONNECTS.labels(self.settings.backend).inc()
                    gap_ms = round((connected_at - outage_since) * 1000)
                    self.out.put({"type": "status", "state": "live"})
                    log.info("upstream_reconnected", extra=fields(session=self.id, outage_ms=gap_ms, attempts=attempt))
                elif not self.ever_live:
                    log.info(
                        "session_live",
                        extra=fields(
                            session=self.id,
                            backend=self.settings.backend,
                            connect_ms=round((connected_at - self.started) * 1000),
                        ),
                    )
                self.ever_live, said_live = True, True
                async for event in self.upstream.events():
                    self.on_event(event)  # only when an upstream ignores its listener
                return None
            except (TimeoutError, UpstreamError, OSError) as exc:
                if not isinstance(exc, UpstreamError):
                    exc = UpstreamError("upstream_unavailable", "lost the connection to the recognizer", retryable=True)
                metrics.UPSTREAM_FAILURES.labels(self.settings.backend, exc.code).inc()
                self.live = False
                if self.upstream is not None:
                    await self.upstream.abort()
                now = time.monotonic()
                if connected_at is not None and (
                    now - connected_at >= HEALTHY_SECONDS or self.timeline.finals > finals_before
                ):
                    outage_since, attempt = None, 0  # it worked for a while: a new outage
                outage_since = outage_since or now
                attempt += 1
                # First retry at once (a dropped connection usually reconnects fine), then capped backoff with jitter.
                delay = (
                    0.0
                    if attempt == 1
                    else min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 2)) * random.uniform(0.5, 1.0)
                )
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                spent = now - outage_since
                budget = self.settings.upstream_retry_seconds - spent
                # A full embedded recognizer is answered at once: the user may retry, the relay should not wait.
                if not exc.retryable or exc.code == "capacity" or delay >= budget:
                    self.close_reason = "capacity" if exc.code == "capacity" else "upstream_error"
                    log.warning(
                        "upstream_failed",
                        extra=fields(session=self.id, code=exc.code, attempts=attempt, outage_ms=round(spent * 1000)),
                    )
                    if attempt > 1 and exc.retryable and exc.code not in ("capacity", "rate_limited"):
                        reason = exc.message.rstrip(". ")  # our own words per error class, never the provider's
                        return protocol.error(
                            "upstream_unavailable",
                            f"The recognizer kept failing for {spent:.0f} s "
                            f"({attempt} attempts): {reason}. Press Start to try again.",
                            retryable=True,
                        )
                    return exc.event()
                log.info(
                    "upstream_retry",
                    extra=fields(session=self.id, code=exc.code, attempt=attempt, delay_ms=round(delay * 1000)),
                )
                if said_live:
                    said_live = False
                    self.out.put({"type": "status", "state": "reconnecting", "code": exc.code, "message": exc.message})
                await asyncio.sleep(delay)  # backoff before the next attempt

    async def _idle_watch(self) -> None:
        """End a session that nobody feeds (a page left open on a dead tab, a stuck client)."""
        limit = self.settings.idle_timeout
        while True:
            left = self.last_audio + limit - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def run(self) -> None:
        reader = self._browser_gone = asyncio.get_running_loop().create_future()
        self.sock.attach(self)
        upstream_done = asyncio.create_task(self._upstream_lifecycle())
        idle = asyncio.create_task(self._idle_watch())
        stopper = asyncio.create_task(self._stop.wait())
        error: dict[str, Any] | None = None
        try:
            done, _ = await asyncio.wait({reader, upstream_done, idle, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if upstream_done in done:
                error = upstream_done.result()
            else:
                # Browser gone, idle, or stopped from outside: still finalize the open turn, then stop.
                self.closing = True
                if stopper in done:
                    error = self._stop_error
                elif idle in done:
                    self.close_reason = "idle_timeout"
                    error = protocol.error(
                        "idle_timeout",
                        f"No audio for {self.settings.idle_timeout} s, so the "
                        "session was closed. Press Start to caption again.",
                    )
                else:
                    self.close_reason = "client_gone"
                # Live: close now. Still connecting: _connect() replays the buffered audio and closes
                # (self.closing), so what was said before the stop is still transcribed.
                with contextlib.suppress(UpstreamError, asyncio.TimeoutError, OSError):
                    if self.live:
                        await self.upstream.close()
                    await asyncio.wait_for(upstream_done, CLOSE_TIMEOUT)
        finally:
            for task in (reader, upstream_done, idle, stopper, self._backlog_task):
                if task is not None:
                    task.cancel()
            self.out.bad_input_summary()  # counted bad input is reported before `closed`
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upstream_done
            if self.upstream is not None:
                await self.upstream.abort()
            if self.ever_live:
                try:
                    await self.sink.closed(self, self.close_reason)
                except Exception:
                    log.exception("sink_close_failed", extra=fields(session=self.id))
            if self.on_end is not None:
                self.on_end(self)
            closed = {"type": "closed", "reason": self.close_reason}
            out = self.out
            if not out.slow:
                if error is not None:
                    out.put(error)
                out.put(closed)
                await out.finish(5)
            out.cancel()
            # Events left behind a full buffer (a send still blocked, on ASGI, is abandoned by a plain close).
            if out.slow or out.queued and not self.sock.sending:
                # It does not read: its last events go behind what its buffer holds, with the close frame.
                last = [e for e in (error, closed) if e is not None] if out.slow else []
                await self.sock.drop(1008, "slow_client", last, CLOSE_GRACE)
            else:
                code = 1012 if self.close_reason == "server_restart" else 1000 if error is None else 1011
                await self.sock.close(code, CLOSE_GRACE)
            self.done.set()
            log.info(
                "session_end",
                extra=fields(
                    session=self.id,
                    reason=self.close_reason,
                    error=(error or {}).get("code"),
                    audio_s=round(self.audio_seconds, 2),
                    finals=self.timeline.finals,
                    wall_s=round(time.monotonic() - self.started, 2),
                ),
            )
