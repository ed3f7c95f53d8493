"""Live fan-out of sessions' messages to this process's viewers (encode/broadcaster's shape): `publish(session,
msg)` and `subscribe(session)`, which returns a `Feed`, an async iterator of that session's messages. Chosen by
URL (make_broker):
  memory://  MemoryBroker: publish delivers to this process's feeds. One app process.
  redis://…  RedisBroker: PUBLISH on channel live:<id>; one pattern subscription per process delivers here.
A broker stores nothing: what a feed missed (an outage) its viewer reads from the store (webapp/live.py).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .live import Live
from .logs import fields
from .store import REDIS_TIMEOUT, backoff, redis_client

log = logging.getLogger(__name__)

VIEWER_QUEUE = 64  # messages queued for one viewer before its oldest interim is dropped
VIEWER_BACKLOG = 2000  # finals queued for one viewer before it is cut off (it reconnects to a snapshot)
GAP = Live("gap", "")  # the feed was interrupted: what was published meanwhile is only in the store
OVERFLOW = Live("overflow", "")  # the subscriber fell VIEWER_BACKLOG finals behind: its feed ends here


class Feed:
    """One subscriber's queue of one session. put() never blocks the publisher: a subscriber that falls behind
    loses interim updates (a newer interim of the same turn replaces an unsent one; past VIEWER_QUEUE the oldest
    interim goes), never finals. One so far behind that VIEWER_BACKLOG finals wait gets OVERFLOW."""

    __slots__ = ("closed", "gap", "items", "on_close", "overflow", "wake")

    def __init__(self, on_close: Callable[[Feed], None] | None = None):
        self.items: deque[Live] = deque()
        self.wake = asyncio.Event()
        self.gap = False
        self.overflow = False
        self.closed = False
        self.on_close = on_close

    def put(self, msg: Live) -> None:
        if self.closed:
            return
        items = self.items
        if msg.kind == "interim" and items and items[-1].kind == "interim" and items[-1].turn == msg.turn:
            items[-1] = msg
        else:
            items.append(msg)
            if len(items) > VIEWER_QUEUE:
                for i, item in enumerate(items):
                    if item.kind == "interim":
                        del items[i]
                        break
                else:
                    self.overflow = len(items) > VIEWER_BACKLOG
        self.wake.set()

    def interrupted(self) -> None:
        if not self.closed:
            self.gap = True
            self.wake.set()

    def close(self) -> None:
        """Unsubscribe: nothing more is queued."""
        self.closed = True
        if self.on_close is not None:
            self.on_close(self)

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Live:
        while not (self.items or self.gap or self.overflow):
            self.wake.clear()
            await self.wake.wait()
        if self.overflow:
            return OVERFLOW
        if self.gap:
            self.gap = False
            return GAP
        return self.items.popleft()


class Broker(abc.ABC):
    """This process's feeds by session id, and how published messages reach them."""

    def __init__(self) -> None:
        self.topics: dict[str, set[Feed]] = {}
        self.restored = asyncio.Event()  # set while the feed is connected; a fresh one is made when it drops
        self.restored.set()

    @property
    def available(self) -> bool:
        return self.restored.is_set()

    async def start(self) -> None:  # noqa: B027 - optional hook: only backends with a connection need it
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook, as start
        pass

    async def health(self) -> dict[str, Any]:
        return {}

    def subscribe(self, session_id: str) -> Feed:
        """A feed of the session's messages from now on: registered before this returns, so nothing published
        later is missed. close() it when done."""
        feed = Feed(functools.partial(self._unsubscribe, session_id))
        self.topics.setdefault(session_id, set()).add(feed)
        return feed

    def _unsubscribe(self, session_id: str, feed: Feed) -> None:
        group = self.topics.get(session_id)
        if group is not None:
            group.discard(feed)
            if not group:
                del self.topics[session_id]

    def has_subscribers(self, session_id: str) -> bool:
        """Whether a live interim for this session can reach anyone. Subscribers may be in other processes
        unless the fan-out is in-process, so the default is yes."""
        return True

    @abc.abstractmethod
    async def publish(self, session_id: str, live: Live) -> None: ...

    def deliver(self, session_id: str, live: Live) -> None:
        for feed in self.topics.get(session_id, ()):
            feed.put(live)

    def interrupted(self) -> None:
        """The feed was down: every subscriber here is told to fetch what it missed from the store."""
        for group in self.topics.values():
            for feed in group:
                feed.interrupted()


def make_broker(url: str) -> Broker:
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisBroker(url)
    if scheme == "memory":
        return MemoryBroker()
    raise ValueError(f"no broker for {scheme!r} URLs")


class MemoryBroker(Broker):
    async def publish(self, session_id: str, live: Live) -> None:
        self.deliver(session_id, live)

    def has_subscribers(self, session_id: str) -> bool:
        return session_id in self.topics  # the fan-out is in this process: it knows (empty groups are removed)


class RedisBroker(Broker):
    """Channel live:<id> (prefix `cr:`). Every process holds one pattern subscription to live:*, made before it
    serves, so a viewer needs no per-session subscribe round trip and cannot miss a message published after it
    subscribed.

    Redis down: publish fails within REDIS_TIMEOUT; the listener retries with backoff (store.STORE_RETRY) and,
    once subscribed again, interrupts every feed here so its viewer fetches what it missed."""

    def __init__(self, url: str, prefix: str = "cr:"):
        super().__init__()
        self.url = url
        self.p = prefix
        self.redis: Any = None  # a redis.asyncio client once started
        self.pubsub: Any = None  # its live:* subscription, None while reconnecting
        self.listener: asyncio.Task | None = None

    async def start(self) -> None:
        self.redis = redis_client(self.url)
        await self._subscribe()
        self.listener = asyncio.create_task(self._listen(), name="redis-live-listener")

    async def _subscribe(self) -> None:
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        await self.pubsub.psubscribe(f"{self.p}live:*")
        # Wait for the confirmation: from here on every PUBLISH reaches this process.
        deadline = time.monotonic() + REDIS_TIMEOUT
        while True:
            msg = await self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError("redis did not confirm the live:* subscription")
            if msg["type"] == "psubscribe":
                return

    async def _drop_pubsub(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None

    async def _listen(self) -> None:
        prefix_len = len(f"{self.p}live:")
        failures = 0
        while True:
            try:
                if self.pubsub is None:
                    await self._subscribe()
                    log.info("redis_listener_restored", extra=fields(tries=failures))
                    failures = 0
                    self.restored.set()
                    self.interrupted()  # what was published while we were away is in the store
                async for msg in self.pubsub.listen():
                    if msg["type"] != "pmessage":
                        continue
                    session_id = msg["channel"][prefix_len:]
                    if session_id in self.topics:  # decode only what someone here watches
                        self.deliver(session_id, Live.decode(msg["data"]))
                # listen() also ends, at once and without an error, when nothing is subscribed: never loop on it
                raise ConnectionError("the live:* subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost or refused: wait, then subscribe again
                failures += 1
                if failures == 1:
                    log.warning("redis_listener_lost", extra=fields(error=type(exc).__name__))
                if self.restored.is_set():
                    self.restored = asyncio.Event()
                await self._drop_pubsub()
                await asyncio.sleep(backoff(failures))

    async def close(self) -> None:
        if self.listener:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.listener
        await self._drop_pubsub()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def health(self) -> dict[str, Any]:
        return {"live": "ok" if self.pubsub is not None else "reconnecting"}

    async def publish(self, session_id: str, live: Live) -> None:
        await self.redis.publish(f"{self.p}live:{session_id}", live.text)
