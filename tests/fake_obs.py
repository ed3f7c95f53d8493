"""OBS-WEBSOCKET SIMULATOR (a test double, not OBS Studio).

A real WebSocket server on 127.0.0.1, in its own thread and event loop, that speaks obs-websocket 5 as
docs/generated/protocol.md of obsproject/obs-websocket describes it (and as its source does where the document
is silent; /work/shared/docs/outputs.md, "OBS"):
  connect       subprotocol obswebsocket.json (or none: JSON); the server speaks first with Hello (op 0):
                obsStudioVersion, obsWebSocketVersion, rpcVersion 1, and `authentication {challenge, salt}` only
                when a password is set (fresh random values per connection).
  Identify      (op 1) checked as obs-websocket does: authentication missing, not a string or not
                base64(sha256(base64(sha256(password + salt)) + challenge)) → close 4009 AuthenticationFailed;
                rpcVersion missing → 4003, not an unsigned number → 4004, not 1 → 4010; eventSubscriptions
                optional (default All). Then Identified (op 2) {negotiatedRpcVersion: 1}. Anything but Identify
                before that → 4007 NotIdentified; a second Identify → 4008; an unknown op → 4006; not JSON or a
                binary frame → 4002. Reidentify (op 3) → Identified again.
  Request       (op 6) → RequestResponse (op 7) mirroring requestType and requestId, requestStatus
                {result, code, comment?}: 203 no requestType, 204 unknown type; requestId missing → close 4003.
                GetStreamStatus → outputActive and the other documented fields. SendStreamCaption: 300 without
                captionText, 401 if not a string, 501 OutputNotRunning when not streaming, else 100 — and the
                caption is recorded with its arrival time (time.monotonic()).
  Event         (op 5) StreamStateChanged {outputActive, outputState} to clients subscribed to Outputs (1 << 6)
                when the stream starts or stops; ExitStarted (General, 1 << 0) before a restart.

What tests can make it do (thread-safe, from any thread):
  password                  None: no authentication; a string: required
  set_streaming(bool)       start/stop "streaming" (sends StreamStateChanged)
  caption_code, comment     answer every SendStreamCaption with this failing code (e.g. 501, the macOS fault
                            obsproject/obs-websocket#1048, which answers 501 while GetStreamStatus says active)
  stall                     receive requests but never answer (pings are still answered: a hung OBS UI thread)
  mute_hello                accept connections but never send Hello
  hello_text                send this raw text instead of Hello (a WebSocket server that is not obs-websocket)
  kick()                    close every identified session with 4011 SessionInvalidated (the UI's Kick button)
  drop()                    cut every connection (TCP abort, no close frame)
  restart(down_for)         ExitStarted, close 1001, nothing listening for `down_for` s, then serve again on the
                            same port (a fresh "OBS": captions recorded so far are kept)
Records: `captions` [(monotonic time, text)], `requests` [requestType], `connections` and `identified` (counts),
`auth_failures` (count), `closes` [close codes the server sent].
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
import time
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

EVENT_ALL = 0x7FF  # EventSubscription::All (every non-high-volume category)
EVENT_GENERAL, EVENT_OUTPUTS = 1 << 0, 1 << 6


def secret_for(password: str, salt: str) -> str:
    return base64.b64encode(hashlib.sha256((password + salt).encode()).digest()).decode()


def expected_auth(password: str, salt: str, challenge: str) -> str:
    return base64.b64encode(hashlib.sha256((secret_for(password, salt) + challenge).encode()).digest()).decode()


class _Close(Exception):
    def __init__(self, code: int, reason: str):
        self.code, self.reason = code, reason


class FakeObs:
    def __init__(self, password: str | None = None, streaming: bool = True):
        self.password = password
        self.streaming = streaming
        self.caption_code: int | None = None
        self.comment: str | None = None
        self.stall = False
        self.mute_hello = False
        self.hello_text: str | None = None
        self.captions: list[tuple[float, str]] = []
        self.requests: list[str] = []
        self.connections = 0
        self.identified = 0
        self.auth_failures = 0
        self.closes: list[int] = []
        self.port = 0
        self._clients: dict[ServerConnection, int] = {}  # identified connection → its event subscriptions
        self._conns: set[ServerConnection] = set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # ---- control from tests ----------------------------------------------------------------------
    def start(self) -> FakeObs:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(ready)), name="fake-obs", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OBS did not start")
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread is None:
            return
        if self._loop and self._stop and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
        self._thread = None

    def set_streaming(self, active: bool) -> None:
        self._call(self._set_streaming(active))

    def drop(self) -> None:
        self._call(self._drop())

    def kick(self) -> None:
        """Starts the closes and returns (their handshakes need the client's loop, which may be the caller's)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._kick(), self._loop)

    def restart(self, down_for: float = 0.2) -> None:
        self._call(self._restart(down_for), timeout=10 + down_for)

    async def arestart(self, down_for: float = 0.2) -> None:
        """restart() for async tests: the test's loop keeps running meanwhile."""
        await asyncio.to_thread(self.restart, down_for)

    def texts(self) -> list[str]:
        with self._changed:
            return [text for _, text in self.captions]

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    async def await_for(self, predicate, timeout: float = 5.0) -> bool:
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def _call(self, coro, timeout: float = 5.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ---- server ----------------------------------------------------------------------------------
    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._serve()
        ready.set()
        await self._stop.wait()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self) -> None:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            subprotocols=[Subprotocol("obswebsocket.json"), Subprotocol("obswebsocket.msgpack")],
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_streaming(self, active: bool) -> None:
        if active == self.streaming:
            return
        self.streaming = active
        state = "OBS_WEBSOCKET_OUTPUT_STARTED" if active else "OBS_WEBSOCKET_OUTPUT_STOPPED"
        await self._event("StreamStateChanged", EVENT_OUTPUTS, {"outputActive": active, "outputState": state})

    async def _event(self, kind: str, intent: int, data: dict | None = None) -> None:
        msg: dict[str, Any] = {"eventType": kind, "eventIntent": intent}
        if data is not None:
            msg["eventData"] = data
        text = json.dumps({"op": 5, "d": msg})
        for ws, subscriptions in list(self._clients.items()):
            if subscriptions & intent:
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    pass

    async def _drop(self) -> None:
        for ws in list(self._conns):
            ws.transport.abort()

    async def _kick(self) -> None:
        for ws in list(self._clients):
            self.closes.append(4011)
            await ws.close(4011, "Your session has been invalidated.")

    async def _restart(self, down_for: float) -> None:
        await self._event("ExitStarted", EVENT_GENERAL)
        for ws in list(self._conns):
            self.closes.append(1001)
            await ws.close(1001, "OBS is exiting")
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await asyncio.sleep(down_for)  # nothing listens: connects are refused meanwhile
        await self._serve()

    async def _handler(self, ws: ServerConnection) -> None:
        self._conns.add(ws)
        self.connections += 1
        try:
            await self._session(ws)
        except _Close as close:
            self.closes.append(close.code)
            self._notify()
            await ws.close(close.code, close.reason)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(ws)
            self._clients.pop(ws, None)
            self._notify()

    async def _session(self, ws: ServerConnection) -> None:
        salt = challenge = ""
        hello: dict[str, Any] = {"obsStudioVersion": "30.2.2", "obsWebSocketVersion": "5.5.2", "rpcVersion": 1}
        if self.password is not None:
            salt = base64.b64encode(os.urandom(32)).decode()
            challenge = base64.b64encode(os.urandom(32)).decode()
            hello["authentication"] = {"challenge": challenge, "salt": salt}
        if self.hello_text is not None:
            await ws.send(self.hello_text)
        elif not self.mute_hello:
            await ws.send(json.dumps({"op": 0, "d": hello}))
        async for raw in ws:
            op, d = self._decode(raw)
            if ws not in self._clients:
                if op != 1:
                    raise _Close(4007, "You must send an Identify first.")
                self._identify(ws, d, salt, challenge)
                await ws.send(json.dumps({"op": 2, "d": {"negotiatedRpcVersion": 1}}))
                self.identified += 1
                self._notify()
            elif op == 1:
                raise _Close(4008, "You are already Identified with the obs-websocket server.")
            elif op == 3:
                self._clients[ws] = self._subscriptions(d)
                await ws.send(json.dumps({"op": 2, "d": {"negotiatedRpcVersion": 1}}))
            elif op == 6:
                answer = self._request(d)
                if answer is not None:
                    await ws.send(json.dumps({"op": 7, "d": answer}))
            elif op in (8,):
                pass  # RequestBatch: not used by the client under test
            else:
                raise _Close(4006, f"Unknown OpCode: {op}")

    @staticmethod
    def _decode(raw: str | bytes) -> tuple[int, dict]:
        if isinstance(raw, bytes):
            raise _Close(4002, "Received a binary frame with JSON subprotocol.")
        try:
            msg = json.loads(raw)
        except ValueError:
            raise _Close(4002, "Unable to decode JSON.") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), int):
            raise _Close(4006, "Your request is missing an `op`.")
        if not isinstance(msg.get("d"), dict):
            raise _Close(4003, "Your request is missing a `d`.")
        return msg["op"], msg["d"]

    def _identify(self, ws: ServerConnection, d: dict, salt: str, challenge: str) -> None:
        if self.password is not None:
            given = d.get("authentication")
            if not isinstance(given, str) or given != expected_auth(self.password, salt, challenge):
                self.auth_failures += 1
                raise _Close(4009, "Authentication failed.")
        if "rpcVersion" not in d:
            raise _Close(4003, "Your payload's data is missing an `rpcVersion`.")
        rpc = d["rpcVersion"]
        if not isinstance(rpc, int) or isinstance(rpc, bool) or rpc < 0:
            raise _Close(4004, "Your `rpcVersion` is not an unsigned number.")
        if rpc != 1:
            raise _Close(4010, "Your requested RPC version is not supported by this server.")
        self._clients[ws] = self._subscriptions(d)

    @staticmethod
    def _subscriptions(d: dict) -> int:
        value = d.get("eventSubscriptions", EVENT_ALL)
        if not isinstance(value, int):
            raise _Close(4004, "Your `eventSubscriptions` is not an unsigned number.")
        return value

    def _request(self, d: dict) -> dict | None:
        if "requestId" not in d:
            raise _Close(4003, "Your payload's data is missing a `requestId`.")
        kind = d.get("requestType")
        self.requests.append(str(kind))
        self._notify()
        if self.stall:
            return None
        out: dict[str, Any] = {"requestType": kind, "requestId": d["requestId"]}

        def status(code: int, comment: str | None = None) -> dict:
            out["requestStatus"] = {"result": code == 100, "code": code}
            if comment is not None:
                out["requestStatus"]["comment"] = comment
            return out

        if kind is None:
            return status(203, "Your request is missing a `requestType`")
        data = d.get("requestData") if isinstance(d.get("requestData"), dict) else {}
        if kind == "GetStreamStatus":
            out["responseData"] = {
                "outputActive": self.streaming,
                "outputReconnecting": False,
                "outputTimecode": "00:00:10.000",
                "outputDuration": 10000,
                "outputCongestion": 0,
                "outputBytes": 123456,
                "outputSkippedFrames": 0,
                "outputTotalFrames": 600,
            }
            return status(100)
        if kind == "SendStreamCaption":
            if "captionText" not in data:
                return status(300, "Your request is missing the `captionText` field.")
            text = data["captionText"]
            if not isinstance(text, str):
                return status(401, "The field value of `captionText` must be a string.")
            if self.caption_code is not None:
                return status(self.caption_code, self.comment)
            if not self.streaming:
                return status(501)
            with self._changed:
                self.captions.append((time.monotonic(), text))
                self._changed.notify_all()
            return status(100)
        return status(204, "Your request type is not valid.")
