"""The web process's side of the embedded recognizer: the pool of worker processes (worker.py), one proxy per
worker (a reader and a writer thread on its socketpair), and the RecognizerStream handed to each session.
Pre-recorded files (open_batch) run in one more worker of their own, started on first use, at a low nice value.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .signal import RATE
from .tuning import Tuning

log = logging.getLogger(__name__)

# Default slots per core. With onnx interims, 6 streams on 2 cores met every target in every run, also beside
# a core's worth of other load, and 8 streams held too (docs/benchmarks.md, "Embedded recognizer"). On a host whose
# other load took half the CPU (earlier sessions), 6 streams let interims fall behind in some runs; 3 per core
# leaves that margin. LOCAL_MAX_STREAMS=4 is the setting for a busy host.
STREAMS_PER_CORE = 3
READY_TIMEOUT = 60.0
# Batch jobs at once, all in the batch worker (it runs them at nice 15, so they only take what live streams leave).
# They do not take live slots: a file never stops a speaker from starting.
BATCH_JOBS = 2
BATCH_INDEX = -1  # the batch worker's index in logs


class CapacityError(Exception):
    """All recognizer slots are in use."""

    def __init__(self, limit: int):
        super().__init__(f"all {limit} embedded recognizer slots are busy")
        self.limit = limit


def default_max_streams() -> int:
    return STREAMS_PER_CORE * _cores()


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class _Worker:
    """One worker process, talked to over a socketpair; a reader thread and a writer thread."""

    def __init__(self, pool: Pool, index: int, batch: bool = False):
        self.pool, self.index = pool, index
        self.streams: dict[int, RecognizerStream] = {}
        self.ready = threading.Event()
        self.dead = False
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        parent, child = socket.socketpair()
        env = dict(os.environ, MOONSHINE_ORT_SINGLE_THREAD="1")
        env.setdefault("MALLOC_ARENA_MAX", "2")  # per-thread malloc arenas: 628 MB instead of 559 MB at 6 streams
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webapp.local.worker", str(child.fileno()), pool.tuning.to_json()]
            + (["batch"] if batch else []),
            pass_fds=(child.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd=root,
        )
        child.close()
        self.conn = Connection(parent.detach())
        threading.Thread(target=self._read, name=f"stt-read-{index}", daemon=True).start()
        threading.Thread(target=self._write, name=f"stt-write-{index}", daemon=True).start()

    def send(self, msg: tuple) -> None:
        if not self.dead:
            self.out.put(msg)

    def _write(self) -> None:
        while True:
            msg = self.out.get()
            if msg is None:
                return
            try:
                self.conn.send(msg)
            except OSError:
                return

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            op, arg = msg[:2]  # arg: the stream id, or the worker's facts for "ready"
            if op == "ready":
                log.info("recognizer worker %d ready (pid %s, %.1f s)", self.index, arg["pid"], arg["load_seconds"])
                self.ready.set()
                continue
            stream = self.streams.get(arg)
            if stream is not None:
                stream._deliver(msg)
        self.dead = True
        self.ready.set()
        self.out.put(None)
        if not self.pool.closing:
            log.error("recognizer worker %d exited (code %s)", self.index, self.proc.poll())
        for stream in list(self.streams.values()):
            stream._deliver(("ev", stream.sid, "error", {"message": "the recognizer process stopped"}))
            stream._deliver(("closed", stream.sid))

    def stop(self, timeout: float = 5.0) -> None:
        self.out.put(("quit",))
        self.out.put(None)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        try:
            self.conn.close()
        except OSError:
            pass


class RecognizerStream:
    def __init__(self, pool: Pool, worker: _Worker, sid: int, rate: int, on_event, loop: asyncio.AbstractEventLoop):
        self.pool, self.worker, self.sid, self.on_event, self.loop = pool, worker, sid, on_event, loop
        self._tokens = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._closed_fut: asyncio.Future = loop.create_future()
        self._released = False
        self.batch = False  # a batch job's stream (Pool.open_batch)
        worker.streams[sid] = self
        worker.send(("open", sid, rate))

    # called from the worker's reader thread
    def _deliver(self, msg: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self._handle, msg)
        except RuntimeError:  # loop closed
            self._release()

    def _handle(self, msg: tuple) -> None:
        op, _sid, *args = msg
        if op == "ev":
            if not self._closed_fut.done():
                try:
                    self.on_event(*args)
                except Exception:
                    log.exception("recognizer event handler failed")
        elif op == "done":
            token, ended = args
            fut = self._pending.pop(token, None)
            if fut is not None and not fut.done():
                fut.set_result(bool(ended))
        elif op == "closed":
            self._release()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result(False)
            self._pending.clear()
            if not self._closed_fut.done():
                self._closed_fut.set_result(None)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.streams.pop(self.sid, None)
            self.pool._release(self)

    @property
    def closed(self) -> bool:
        return self._closed_fut.done() or self._released

    def feed(self, pcm: bytes) -> None:
        if pcm and not self._released:
            self.worker.send(("audio", self.sid, bytes(pcm)))

    async def finalize(self, timeout: float = 10.0) -> bool:
        """End the open turn now (its final arrives through on_event first). False if no turn was open."""
        if self._released:
            return False
        token = next(self._tokens)
        fut = self.loop.create_future()
        self._pending[token] = fut
        self.worker.send(("finalize", self.sid, token))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            log.warning("recognizer finalize timed out")
            return False

    async def close(self, timeout: float = 15.0) -> None:
        """Finalize, flush and deliver the remaining events, then free the slot."""
        if not self._released:
            self.worker.send(("close", self.sid))
        try:
            await asyncio.wait_for(asyncio.shield(self._closed_fut), timeout)
        except TimeoutError:
            log.warning("recognizer close timed out; aborting the stream")
            self.abort()

    def abort(self) -> None:
        if not self._released:
            self.worker.send(("abort", self.sid))
            self._release()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)


class Pool:
    def __init__(self, max_streams: int = 0, workers: int = 0, tuning: Tuning | None = None):
        self.max_streams = max_streams or default_max_streams()
        self.tuning = tuning if tuning is not None else Tuning()  # every worker process gets it on its command line
        self.n_workers = workers or _cores()
        self.closing = False
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._active: set[RecognizerStream] = set()
        self.workers = [_Worker(self, i) for i in range(self.n_workers)]
        self.batch_worker: _Worker | None = None  # started by the first batch job
        self._batch_jobs = 0  # batch streams open or starting

    @property
    def batch_jobs(self) -> int:
        return self._batch_jobs

    async def open_batch(self, on_event: Callable[[str, dict[str, Any]], None]) -> RecognizerStream:
        """A stream in the batch worker (started, or restarted if it died, here), 16 kHz input. CapacityError
        when BATCH_JOBS run already; RuntimeError if the worker cannot start."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.closing:
                raise RuntimeError("the recognizer pool is shut down")
            if self._batch_jobs >= BATCH_JOBS:
                raise CapacityError(BATCH_JOBS)
            worker = self.batch_worker
            if worker is None or worker.dead or worker.proc.poll() is not None:
                if worker is not None:
                    worker.dead = True
                worker = self.batch_worker = _Worker(self, BATCH_INDEX, batch=True)
            self._batch_jobs += 1
        try:
            ready = await loop.run_in_executor(None, worker.ready.wait, READY_TIMEOUT)
            if not ready or worker.dead:
                raise RuntimeError(f"the batch recognizer worker failed to start (exit code {worker.proc.poll()})")
            with self._lock:
                stream = RecognizerStream(self, worker, next(self._ids), RATE, on_event, loop)
                stream.batch = True
        except BaseException:
            with self._lock:
                self._batch_jobs -= 1
            raise
        return stream

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if not w.ready.wait(max(0.0, deadline - time.monotonic())) or w.dead:
                raise RuntimeError(f"recognizer worker {w.index} failed to start (exit code {w.proc.poll()})")

    def open_stream(self, on_event: Callable[[str, dict[str, Any]], None], sample_rate: int = RATE) -> RecognizerStream:
        """Must be called on the event loop that will receive on_event. Raises CapacityError when full."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.closing:
                raise RuntimeError("the recognizer pool is shut down")
            if len(self._active) >= self.max_streams:
                raise CapacityError(self.max_streams)
            self._revive_locked()
            worker = min((w for w in self.workers if not w.dead), key=lambda w: len(w.streams))
            stream = RecognizerStream(self, worker, next(self._ids), sample_rate, on_event, loop)
            self._active.add(stream)
        return stream

    def revive(self) -> None:
        """Replace the workers that died (killed, crashed): the next sessions get captions again."""
        with self._lock:
            self._revive_locked()

    def _revive_locked(self) -> None:
        for i, w in enumerate(self.workers):
            if (w.dead or w.proc.poll() is not None) and not self.closing:
                log.warning("restarting recognizer worker %d (exit code %s)", i, w.proc.poll())
                w.dead = True  # its reader thread may not have seen the end yet: send nothing more to it
                self.workers[i] = _Worker(self, i)

    def _release(self, stream: RecognizerStream) -> None:
        with self._lock:
            if stream.batch:
                self._batch_jobs -= 1
            self._active.discard(stream)

    def shutdown(self) -> None:
        self.closing = True
        for w in self.workers + ([self.batch_worker] if self.batch_worker else []):
            w.stop()


_pool: Pool | None = None
_pool_lock = threading.Lock()


async def get_pool(settings=None, tuning: Tuning | None = None) -> Pool:
    """The process-wide pool, started (and warmed: the model is loaded and run once) on first use. `settings`
    (config.Settings) gives its capacity and the operator's tuning; `tuning`, if given, all of it (benchmarks)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.closing:
            max_streams = getattr(settings, "local_max_streams", 0) or 0
            _pool = Pool(max_streams, tuning=tuning or Tuning.from_settings(settings))
        pool = _pool
    pool.revive()  # a worker that died since (killed, crashed) is replaced, or every session would fail
    await asyncio.get_running_loop().run_in_executor(None, pool.wait_ready)
    return pool


def shutdown() -> None:
    """Stop the worker processes (blocking, a few ms; at most ~5 s if a worker hangs)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()
