"""A standalone Deepgram-Flux-compatible server (`/v2/listen`) on the embedded recognizer.

Message shapes follow Deepgram's Flux v2: `Connected` first, `TurnInfo` with
Update / StartOfTurn / EndOfTurn and one `sequence_id` counter over every server message. `ForceEndTurn` ends
the open turn (trigger "manual") or answers a `Warning`; `CloseStream` decodes what was received, sends the
remaining Updates and closes without a status code (Flux sends no EndOfTurn then). `KeepAlive` and unknown
messages are fatal, as on Flux. Any Authorization header is accepted. Over capacity: HTTP 429 at the handshake.
Not implemented: eager end of turn (EagerEndOfTurn/TurnResumed), eot_threshold=1.0 (turns always end on
silence), eot_timeout_ms (our endpointer always ends turns sooner), keyterms (accepted and ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..config import Settings
from ..protocol import SAMPLE_RATES, decimal_number
from .pool import CapacityError, Pool, get_pool, shutdown

log = logging.getLogger(__name__)

MODELS = ("flux-general-en",)
KNOWN = {
    "model",
    "encoding",
    "sample_rate",
    "eot_threshold",
    "eager_eot_threshold",
    "eot_timeout_ms",
    "keyterm",
    "mip_opt_out",
    "tag",
    "numerals",
    "profanity_filter",
    "redact",
}
EOT_CONFIDENCE = 0.9  # we have no EOT model: a fixed value for turns ended on silence
MAX_FRAME = 256 * 1024


class BadParams(ValueError):
    pass


def _range(q, name: str, lo: float, hi: float) -> float | None:
    if name not in q:
        return None
    v = decimal_number(q[name])  # ASCII digits only, as Flux
    if v is None:
        raise BadParams(f"{name} must be a number")
    if not lo <= v <= hi:
        raise BadParams(f"{name} must be between {lo:g} and {hi:g}")
    return v


def validate(ws: WebSocket) -> int:
    """Check the query like Flux does; returns the sample rate."""
    q = ws.query_params
    for name in q.keys():
        if name not in KNOWN:
            raise BadParams(f"{name} is not a supported parameter")
    if q.get("model") not in MODELS:
        raise BadParams(f"model must be one of {', '.join(MODELS)}")
    if q.get("encoding", "linear16") != "linear16":
        raise BadParams("encoding must be linear16 (this server decodes raw 16-bit PCM only)")
    rate = q.get("sample_rate", "16000")
    if rate not in {str(r) for r in SAMPLE_RATES}:
        raise BadParams(f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}")
    eot = _range(q, "eot_threshold", 0.5, 1.0)
    eager = _range(q, "eager_eot_threshold", 0.3, 0.9)
    if eager is not None and eager > (eot if eot is not None else 0.7):
        raise BadParams("eager_eot_threshold must be less than or equal to eot_threshold")
    timeout = _range(q, "eot_timeout_ms", 500, 60000)
    if timeout is not None and timeout != int(timeout):
        raise BadParams("eot_timeout_ms must be a whole number")
    return int(rate)


class FluxSession:
    def __init__(self, ws: WebSocket, pool: Pool, rate: int):
        self.ws, self.pool, self.rate = ws, pool, rate
        self.request_id = str(uuid.uuid4())
        self.seq = 0
        self.out: asyncio.Queue[dict | None] = asyncio.Queue()
        self.turn_index = 0
        self.turn_open = False
        self.text = ""
        self.start = self.end = 0.0
        self.rest = b""
        self.stream = pool.open_stream(self._on_event, rate)  # CapacityError before accept -> 429

    # -- server messages, in order, each with the next sequence_id --
    def _send(self, msg: dict | None) -> None:
        """Queue a message for the writer; None: the writer stops after what is queued."""
        self.out.put_nowait(msg)

    async def _writer(self) -> None:
        while True:
            msg = await self.out.get()
            if msg is None:
                return
            msg = dict(msg, sequence_id=self.seq) if "sequence_id" not in msg else msg
            self.seq += 1
            await self.ws.send_text(json.dumps(msg))

    def _turninfo(self, event: str, confidence: float, trigger: str | None = None) -> None:
        msg = {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "event": event,
            "turn_index": self.turn_index,
            "audio_window_start": round(self.start, 3),
            "audio_window_end": round(self.end, 3),
            "transcript": self.text,
            "words": [],
            "end_of_turn_confidence": confidence,
        }
        if trigger is not None:
            msg["trigger"] = trigger
        self._send(msg)

    def _on_event(self, kind: str, data: dict) -> None:
        if kind == "error":
            self._send(
                {
                    "type": "Error",
                    "request_id": self.request_id,
                    "code": "INTERNAL_SERVER_ERROR",
                    "description": data["message"],
                }
            )
            self._send(None)
            return
        text = (data.get("text") or "").strip()
        if kind == "update" or (kind == "final" and data.get("trigger") == "close"):
            # CloseStream: the last decode is an Update; Flux sends no EndOfTurn on CloseStream
            if not text or (self.turn_open and text == self.text):
                return
            self.end = max(self.end, data["end"])
            if not self.turn_open:
                self.turn_open, self.start, self.text = True, data["start"], text
                self._turninfo("StartOfTurn", 0.0)
            else:
                self.text = text
                self._turninfo("Update", 0.0)
        elif kind == "final":
            text = text or self.text
            if not text:
                return
            if not self.turn_open:  # StartOfTurn always comes first, with a transcript
                self.turn_open, self.start, self.text = True, data["start"], text
                self.end = max(self.start, data["end"])
                self._turninfo("StartOfTurn", 0.0)
            self.text, self.end = text, max(self.end, data["end"])
            self._turninfo("EndOfTurn", EOT_CONFIDENCE, "manual" if data.get("trigger") == "manual" else "model")
            self.turn_index += 1
            self.turn_open, self.text = False, ""

    async def _fatal(self, description: str, code: str = "INVALID_MESSAGE") -> None:
        self._send({"type": "Error", "request_id": self.request_id, "code": code, "description": description})
        self._send(None)

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        self._send({"type": "Connected", "request_id": self.request_id, "sequence_id": 0})
        close_code: int | None = 1000
        try:
            while not writer.done():
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    close_code = None
                    self.stream.abort()
                    break
                if msg.get("bytes") is not None:
                    data = self.rest + msg["bytes"]
                    if len(msg["bytes"]) > MAX_FRAME:
                        await self._fatal(f"audio frames must be at most {MAX_FRAME} bytes", "INVALID_AUDIO")
                        break
                    cut = len(data) - len(data) % 2
                    self.rest = data[cut:]
                    self.stream.feed(data[:cut])
                    continue
                try:
                    kind = json.loads(msg.get("text") or "").get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "ForceEndTurn":
                    was_open = self.turn_open
                    ended = await self.stream.finalize()
                    if not ended and not was_open:
                        self._send(
                            {
                                "type": "Warning",
                                "request_id": self.request_id,
                                "code": "FORCE_END_TURN_NO_ACTIVE_TURN",
                                "description": "ForceEndTurn was ignored: no turn is in progress",
                            }
                        )
                    elif self.turn_open:  # the last decode came back empty: end on the text we have
                        self._on_event(
                            "final", {"text": self.text, "start": self.start, "end": self.end, "trigger": "manual"}
                        )
                elif kind == "CloseStream":
                    await self.stream.close()
                    self._send(None)
                    close_code = None  # Flux closes without a status code
                    break
                elif kind == "Configure":
                    self._send(
                        {
                            "type": "ConfigureFailure",
                            "request_id": self.request_id,
                            "code": "UNSUPPORTED",
                            "description": "Configure is not supported by this server",
                        }
                    )
                else:
                    await self._fatal(
                        f"unsupported message type {kind!r}: Flux accepts ForceEndTurn, CloseStream "
                        "and Configure (KeepAlive and Finalize are v1 messages)"
                    )
                    close_code = 1008
                    break
        except WebSocketDisconnect:
            close_code = None
            self.stream.abort()
        finally:
            if not self.stream.closed:
                self.stream.abort()
            if close_code != 1008:
                self._send(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 10)
        with contextlib.suppress(Exception):
            if self.ws.client_state.name == "CONNECTED":
                # what ws.close() sends, but with code None: an empty close frame, like Flux after CloseStream
                # (starlette types close()'s code as int)
                await self.ws.send({"type": "websocket.close", "code": close_code, "reason": ""})


def build_engine_app(manage_pool: bool = True, settings: Settings | None = None) -> Starlette:
    """`manage_pool`: start the recognizer pool at startup and stop it at shutdown (tests sharing a pool pass False);
    `settings`: its capacity and tuning (LOCAL_MAX_STREAMS, LOCAL_BEAMS, LOCAL_CONTEXT_SECONDS; default: Settings())."""
    settings = settings if settings is not None else Settings()

    async def listen(ws: WebSocket) -> None:
        try:
            rate = validate(ws)
        except BadParams as exc:
            await ws.send_denial_response(JSONResponse({"code": "INVALID_PARAMETER", "description": str(exc)}, 400))
            return
        pool = await get_pool(settings)
        try:
            session = FluxSession(ws, pool, rate)
        except CapacityError as exc:
            await ws.send_denial_response(
                JSONResponse(
                    {
                        "code": "TOO_MANY_REQUESTS",
                        "description": f"all {exc.limit} recognizer slots are busy; retry later",
                    },
                    429,
                    headers={"Retry-After": "60"},
                )
            )
            return
        try:
            await ws.accept()
        except Exception:
            session.stream.abort()
            raise
        await session.run()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if manage_pool:
            await get_pool(settings)
        try:
            yield
        finally:
            if manage_pool:
                shutdown()

    return Starlette(routes=[WebSocketRoute("/v2/listen", listen)], lifespan=lifespan)


def run(host: str, port: int, settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        build_engine_app(settings=settings),
        host=host,
        port=port,
        ws="websockets-sansio",
        loop="uvloop",
        http="httptools",
        ws_per_message_deflate=False,
        log_level="info",
    )
