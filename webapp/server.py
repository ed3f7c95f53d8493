"""uvicorn's server with a graceful drain: live sessions are finished before the process stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .relay import LiveSessions

DRAIN_TIMEOUT = 8.0  # seconds for open turns to be finalized and stored


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first finalize every live session and tell its page to reconnect (`closed` with
    reason server_restart, close code 1012), then stop as uvicorn does. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, live: LiveSessions, on_ready: Callable[[], None] | None = None):
        super().__init__(config)
        self.live = live
        self.on_ready = on_ready  # called once the sockets listen (cli.py prints where to open the page)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False

    async def startup(self, sockets=None):
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    def handle_exit(self, sig, frame):
        if self.draining or self.loop is None or not self.live.running:
            return super().handle_exit(sig, frame)
        self.draining = True
        # Signal handlers run between bytecodes: hand the work to the loop the thread-safe way.
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain(sig, frame)))

    async def _drain(self, sig, frame):
        try:
            await self.live.drain(DRAIN_TIMEOUT)
        finally:
            super().handle_exit(sig, frame)


# ---- slow and surplus connections (slowloris) ------------------------------------------------------------------

# uvicorn bounds an idle keep-alive connection (timeout_keep_alive) but not a request that arrives slowly: a client
# sending a header byte every few seconds held its connection (and a file descriptor) for ever.
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nRequest Timeout\n"
)
# A file upload's body may take longer than request_timeout: at least a bytes-per-second floor is asked instead
# (100 MB over 1 Mbit/s in ~15 minutes). Its headers still had to arrive within request_timeout.
UPLOAD_PATHS = (b"/v1/audio/transcriptions",)
UPLOAD_MIN_RATE = 128 * 1024  # bytes per second of Content-Length, and at least request_timeout
UPLOAD_MAX_SECONDS = 1800.0
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nretry-after: 5\r\nconnection: close\r\n\r\nService Unavailable\n"
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with two bounds:

    - each request (request line, headers, body) must have arrived `request_timeout` seconds after its first byte
      (after the connection opened, for the first one), else 408 and the connection is closed;
    - an upload (UPLOAD_PATHS) gets Content-Length / UPLOAD_MIN_RATE seconds for its body instead (at most
      UPLOAD_MAX_SECONDS), counted from its headers;
    - at `limit_concurrency` open connections (HTTP and WebSocket, uvicorn counts both) a WebSocket upgrade is
      refused with 503 too (uvicorn's own check, which answers plain HTTP requests with 503, skips upgrades).
      /healthz is answered even then: a full server is alive, and an orchestrator that restarted it for a failed
      health check would end every live stream.
    """

    request_timeout = 10.0
    _request_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._request_timer is None:
            self._request_timer = self.loop.call_later(self.request_timeout, self._request_timed_out)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            cycle = self.cycle  # None, the last request's (answered), or this one's (the app waits for its body)
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        if self.url.split(b"?", 1)[0] in UPLOAD_PATHS:
            self._upload_timer()
        if self.limit_concurrency is not None and self.url.split(b"?", 1)[0] == b"/healthz":
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                return super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
        super().on_headers_complete()

    def _upload_timer(self) -> None:
        length = next((v for k, v in self.headers if k == b"content-length"), b"")
        size = int(length) if length.isdigit() else 0
        seconds = min(UPLOAD_MAX_SECONDS, max(self.request_timeout, size / UPLOAD_MIN_RATE))
        self._disarm()
        self._request_timer = self.loop.call_later(seconds, self._request_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:  # as uvicorn counts
            self.logger.warning("Exceeded concurrency limit.")
            self.transport.write(_BUSY_RESPONSE)
            self.transport.close()
            return
        super().handle_websocket_upgrade()


def guarded_http(request_timeout: float) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn.Config(http=...), with this request timeout."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"request_timeout": request_timeout})
