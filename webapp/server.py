"""uvicorn's server with a graceful drain: live sessions are finished before the process stops."""
from __future__ import annotations

import asyncio

import uvicorn

from .relay import LiveSessions

DRAIN_TIMEOUT = 8.0  # seconds for open turns to be finalized and stored


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first finalize every live session and tell its page to reconnect (`closed` with
    reason server_restart, close code 1012), then stop as uvicorn does. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, live: LiveSessions):
        super().__init__(config)
        self.live = live
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False

    async def startup(self, sockets=None):
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

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
