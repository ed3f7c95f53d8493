"""UPSTREAM SIMULATOR (a test double, not Deepgram or AIgateway).

A real WebSocket server on 127.0.0.1 that speaks the documented wire formats (Deepgram's Flux and v1 live, AIgateway's realtime; see docs/protocol.md):
  /v2/listen    Deepgram Flux: Connected, TurnInfo (StartOfTurn/Update/EndOfTurn), ForceEndTurn, CloseStream
                (flush, no EndOfTurn, close without status code), Warning, Error; KeepAlive is fatal as on Flux.
                flux-general-multi: repeated `language_hint`s (recorded, Record.language_hints; refused with 400
                INVALID_PARAMETER on flux-general-en), `languages` (`sim.detected`, else the hints, else en) and
                `languages_hinted` in every TurnInfo.
  /v1/realtime  AIgateway: v1-style Results (is_final/speech_final, KeepAlive, Finalize, CloseStream + Metadata)
                or, with gateway_shape="turninfo", Flux TurnInfo passthrough.
Transcripts are scripted and clocked by the audio it receives: each word of the script is "heard" after
`word_ms` of audio, a turn ends `eot_ms` after its last word, so output depends on real bytes arriving.
It records every connection (path, query, headers, audio bytes, text messages) and can inject faults:
a refused handshake (status + Retry-After), an Error message or a dropped connection after N audio bytes.

Hostile modes (tests/test_relay_hardening.py):
  flap          `sim.flap(after_bytes)`: every connection is accepted (Flux says Connected) and then dropped once
                it has received `after_bytes` of audio, forever: a broken provider, or a stretch of audio it
                chokes on. `sim.connection_count` and `sim.audio_bytes` count what the relay made it do.
  error_text    the Error message's description; "{auth}" in it is replaced by the request's Authorization
                header, as a gateway that echoes the credential would.
  configure     Flux `Configure` (protocols.md §1.4): keyterms REPLACE the connection's list (from its `keyterm`
                URL parameters at first), answered by ConfigureSuccess echoing the active configuration, or by
                ConfigureFailure (the stream goes on with the previous list) when the message breaks the documented
                rules (keyterms not a list of strings, over 100 of them) or when `faults.configure_failure` names a
                code to answer with. `Record.configures` holds what each connection received.
  nonfinite     a JSON value (e.g. `NaN`, `Infinity`, `1e999`, `"Infinity"`) sent as audio_window_end of every
                Flux Update, raw: Python's json writes NaN/Infinity literals that strict parsers refuse.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

FLUX_ENCODINGS = ("linear16", "linear32", "mulaw", "alaw", "opus", "ogg-opus")
DEFAULT_SCRIPT = [["Hello", "world,", "this", "is", "a", "caption", "test."], ["Second", "turn", "here."]]


@dataclass
class Faults:
    handshake_status: int | None = None      # refuse the upgrade with this HTTP status
    retry_after: str | None = None           # Retry-After header for the refusal
    error_after_bytes: int | None = None     # send an Error message once this much audio arrived
    drop_after_bytes: int | None = None      # close the TCP connection abruptly after this much audio
    greet_delay: float = 0.0                 # seconds before Flux says Connected (a slow upstream)
    stall_after_bytes: int | None = None     # stop reading and answering (pings too) after this much audio
    fragment: bool = False                   # send each JSON message as several WebSocket frames (RFC 6455 §5.4)
    connections: int = 10 ** 9               # how many connections (or handshakes) the faults above hit
    error_text: str | None = None            # the Error's description ("{auth}": the request's Authorization)
    nonfinite: str | None = None             # raw JSON value for audio_window_end of every Flux Update
    configure_failure: str | None = None     # answer every Flux Configure with ConfigureFailure of this code


@dataclass
class Record:
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    texts: list[str] = field(default_factory=list)
    sent: list[dict] = field(default_factory=list)
    closed: bool = False
    faulty: bool = True
    dropped_at: float | None = None   # time.monotonic() when a drop or stall fault fired

    @property
    def configures(self) -> list[dict]:
        """The Configure messages this connection received, parsed."""
        out = []
        for t in self.texts:
            try:
                msg = json.loads(t)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("type") == "Configure":
                out.append(msg)
        return out

    @property
    def language_hints(self) -> list[str]:
        """The repeated `language_hint`s of the connection's URL (Flux multi), in order."""
        return [v for k, v in self.query if k == "language_hint"]

    @property
    def controls(self) -> list[str]:
        out = []
        for t in self.texts:
            try:
                out.append(json.loads(t).get("type"))
            except ValueError:
                out.append("?")
        return out


class Simulator:
    def __init__(self, script=None, word_ms: int = 300, eot_ms: int = 400, sample_rate: int = 16000):
        self.script = script or DEFAULT_SCRIPT
        self.word_ms, self.eot_ms = word_ms, eot_ms
        self.gateway_shape = "results"
        self.segment_words: int | None = None
        self.detected: list[str] | None = None  # what flux-general-multi "detects" (default: its hints, or en)
        self.reference: bytes | None = None   # the speaker's whole audio, to place replayed audio on its timeline
        self.faults = Faults()
        self.records: list[Record] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._changed = threading.Condition()

    # ---- control from tests ------------------------------------------------------------------
    def reset(self, **kw) -> None:
        self.script, self.word_ms, self.eot_ms = DEFAULT_SCRIPT, 300, 400
        self.gateway_shape = "results"
        self.segment_words: int | None = None   # v1 shape: an is_final segment after every N words of a turn
        self.detected = None
        self.reference = None
        self.faults = Faults()
        for k, v in kw.items():
            setattr(self, k, v)
        self.records.clear()

    def flap(self, after_bytes: int = 0) -> None:
        """Accept every connection, then drop it once it has received `after_bytes` of audio (0: the first frame)."""
        self.faults.drop_after_bytes, self.faults.connections = max(after_bytes, 1), 10 ** 9

    @property
    def connection_count(self) -> int:
        return len(self.records)

    @property
    def audio_bytes(self) -> int:
        """Audio received over all connections: what a provider would bill."""
        return sum(len(r.audio) for r in self.records)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_for(self, predicate, timeout: float = 10.0):
        """Block until predicate() is truthy (woken by every recorded event)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (result := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("simulator condition not met in time")
                self._changed.wait(left)
            return result

    async def until(self, predicate, timeout: float = 10.0):
        """wait_for() for async tests: blocks a worker thread, not the test's event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ---- server ---------------------------------------------------------------------------------
    def start(self) -> "Simulator":
        ready = threading.Event()

        def runner():
            asyncio.run(self._main(ready))

        self._thread = threading.Thread(target=runner, name="upstream-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("simulator did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(5)

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                         compression=None, max_size=2 ** 20) as server:
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop.wait()

    def _faulty(self) -> bool:
        """Whether the next connection gets the configured faults (the first `faults.connections` do)."""
        return len(self.records) < self.faults.connections

    def _process_request(self, conn: ServerConnection, request):
        parts = urlsplit(request.path)
        if parts.path == "/v2/listen":
            query = dict(parse_qsl(parts.query))
            problem = (None if query.get("model") in ("flux-general-en", "flux-general-multi") else "model") or \
                (None if query.get("encoding", "linear16") in FLUX_ENCODINGS else "encoding") or \
                (None if query.get("sample_rate", "16000") in ("8000", "16000", "24000", "44100", "48000") else "sample_rate")
            if problem:  # Flux validates the query at the upgrade: HTTP 400 with a JSON body
                return conn.respond(400, json.dumps({"code": "INVALID_PARAMETER", "description": f"invalid {problem}"}))
            if "language_hint" in query and query["model"] != "flux-general-multi":  # as documented (DG-lang)
                return conn.respond(400, json.dumps({"code": "INVALID_PARAMETER", "description":
                                                     f"language_hint is not supported for model {query['model']}"}))
        status = self.faults.handshake_status
        if status is not None and self._faulty():
            response = conn.respond(status, json.dumps({"err_code": "SIMULATED", "err_msg": f"simulated {status}"}))
            if self.faults.retry_after is not None:
                response.headers["Retry-After"] = self.faults.retry_after
            rec = Record(urlsplit(request.path).path, parse_qsl(urlsplit(request.path).query), dict(request.headers.raw_items()))
            rec.closed = True
            self.records.append(rec)
            self._notify()
            return response
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        rec = Record(parts.path, parse_qsl(parts.query, keep_blank_values=True), dict(ws.request.headers.raw_items()))
        rec.faulty = self._faulty()
        self.records.append(rec)
        self._notify()
        if parts.path == "/v2/listen":
            session = FluxSession(self, ws, rec)
        elif parts.path == "/v1/realtime":
            session = GatewaySession(self, ws, rec) if self.gateway_shape == "results" else FluxSession(self, ws, rec, greet=False)
        else:
            await ws.close(4404, "unknown path")
            return
        try:
            await session.run()
        finally:
            rec.closed = True
            self._notify()


def schedule(script, word_ms: int, eot_ms: int) -> list[dict]:
    """When each word is heard and each turn ends, in seconds of the speaker's audio timeline."""
    turns, base = [], 0.0
    for words in script:
        heard = [round(base + (j + 1) * word_ms / 1000, 3) for j in range(len(words))]
        end = round(base + len(words) * word_ms / 1000 + eot_ms / 1000, 3)
        turns.append({"words": list(zip(words, heard)), "end": end})
        base = end
    return turns


class ScriptedSession:
    """Audio-clocked script, the shared part of both wire shapes.

    Words are "heard" at fixed points of the speaker's audio timeline. Where a connection's audio starts
    on that timeline is found by locating its first bytes in `Simulator.reference` (the speaker's whole
    audio) when the test sets one, else 0: so audio replayed on a new connection is re-recognized as the
    same words, as a real recognizer would.
    """

    def __init__(self, sim: Simulator, ws: ServerConnection, rec: Record):
        self.sim, self.ws, self.rec = sim, ws, rec
        self.rate = int(dict(rec.query).get("sample_rate", "16000"))
        self.plan = schedule(sim.script, sim.word_ms, sim.eot_ms)
        self.t0: float | None = None   # where this connection's audio starts on the speaker's timeline
        self.k, self.j = 0, 0          # next word not yet heard: turn k, word j
        self.turn_no = 0               # this connection's turn counter (Flux turn_index)
        self.open = False
        self.turn_start = 0.0          # speaker time the open turn began
        self.heard: list[tuple[str, float]] = []
        self.seq = 0
        self.error_sent = False

    @property
    def audio_time(self) -> float:
        """Seconds of audio this connection received."""
        return len(self.rec.audio) / (2 * self.rate)

    @property
    def now(self) -> float:
        """The speaker's timeline position of the latest audio."""
        return (self.t0 or 0.0) + self.audio_time

    def _locate(self) -> None:
        ref = self.sim.reference
        if self.t0 is not None or (ref is not None and len(self.rec.audio) < 64):
            return
        offset = ref.find(bytes(self.rec.audio[:64])) if ref is not None else 0
        self.t0 = max(offset, 0) // 2 / self.rate
        # Words spoken before this connection's audio begins cannot be heard by it.
        while self.k < len(self.plan):
            words = self.plan[self.k]["words"]
            while self.j < len(words) and words[self.j][1] <= self.t0:
                self.j += 1
            if self.j < len(words):
                break
            self.k, self.j = self.k + 1, 0

    async def send(self, msg: dict) -> None:
        self.rec.sent.append(msg)
        text = json.dumps(msg)
        if '"__RAW__"' in text:  # a value JSON cannot carry (nonfinite), written as it is
            text = text.replace('"__RAW__"', self.sim.faults.nonfinite)
        if self.sim.faults.fragment and len(text) > 2:
            third = len(text) // 3  # websockets sends an iterable as one fragmented message
            await self.ws.send([text[:third], text[third:2 * third], text[2 * third:]])
        else:
            await self.ws.send(text)

    def words(self) -> list[str]:
        return [w for w, _ in self.heard]

    def rel(self, t: float) -> float:
        """Speaker time -> this connection's stream time (what a recognizer reports)."""
        return round(max(0.0, t - (self.t0 or 0.0)), 3)

    def advance(self) -> str | None:
        """Move the script to the latest audio. Returns 'start', 'update', 'end' or None."""
        self._locate()
        if self.t0 is None or self.k >= len(self.plan):
            return None
        now, turn = self.now, self.plan[self.k]
        started = grew = False
        while self.j < len(turn["words"]) and turn["words"][self.j][1] <= now:
            word = turn["words"][self.j]
            if not self.open:
                self.open, self.turn_start, self.heard = True, word[1] - self.sim.word_ms / 1000, []
                started = True
            self.heard.append(word)
            self.j += 1
            grew = True
        if self.j >= len(turn["words"]) and now >= turn["end"]:
            self.k, self.j = self.k + 1, 0
            if self.open:
                return "end"
        return "start" if started else "update" if grew else None

    def next_turn(self) -> None:
        """The open turn ended (naturally or forced); words still to come start a new one."""
        self.turn_no += 1
        self.open, self.heard = False, []

    async def run(self) -> None:
        await self.greet()
        faults = self.sim.faults
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.rec.audio += message
                    self.sim._notify()
                    n = len(self.rec.audio)
                    if not self.rec.faulty:
                        await self.on_audio()
                        continue
                    if faults.stall_after_bytes is not None and n >= faults.stall_after_bytes:
                        self.ws.transport.pause_reading()  # a hung upstream: no reads, no pongs
                        await self.ws.wait_closed()
                        return
                    if faults.drop_after_bytes is not None and n >= faults.drop_after_bytes:
                        self.rec.dropped_at = time.monotonic()
                        self.ws.transport.abort()  # a network drop: no close frame
                        return
                    if faults.error_after_bytes is not None and n >= faults.error_after_bytes and not self.error_sent:
                        self.error_sent = True
                        text = faults.error_text or "simulated upstream failure"
                        text = text.replace("{auth}", self.rec.headers.get("Authorization", ""))
                        await self.send({"type": "Error", "sequence_id": self.next_seq(), "code": "INTERNAL_SERVER_ERROR",
                                         "description": text})
                        await self.ws.close(1011, "simulated failure")
                        return
                    await self.on_audio()
                else:
                    self.rec.texts.append(message)
                    self.sim._notify()
                    try:
                        kind = json.loads(message).get("type")
                    except (ValueError, AttributeError):
                        kind = None
                    if await self.on_control(kind) == "stop":
                        return
        except ConnectionClosed:
            return

    def next_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq


class FluxSession(ScriptedSession):
    def __init__(self, sim, ws, rec, greet: bool = True):
        super().__init__(sim, ws, rec)
        self.request_id = str(uuid.uuid4())
        self.do_greet = greet
        self.last_update = 0.0
        self.keyterms = [v for k, v in rec.query if k == "keyterm"]  # the active list: Configure replaces it

    async def greet(self) -> None:
        if self.sim.faults.greet_delay:
            await asyncio.sleep(self.sim.faults.greet_delay)  # simulated latency, not synchronisation
        if self.do_greet:
            await self.send({"type": "Connected", "request_id": self.request_id, "sequence_id": self.next_seq()})

    async def turninfo(self, event: str, trigger: str | None = None) -> None:
        words = self.words()
        msg = {"type": "TurnInfo", "request_id": self.request_id, "sequence_id": self.next_seq(), "event": event,
               "turn_index": self.turn_no, "audio_window_start": self.rel(self.turn_start),
               "audio_window_end": self.rel(self.now), "transcript": " ".join(words),
               "words": [{"word": w, "confidence": 0.95, "start": self.rel(t - self.sim.word_ms / 1000), "end": self.rel(t)}
                         for w, t in self.heard],
               "end_of_turn_confidence": 0.9 if event == "EndOfTurn" else 0.05}
        if dict(self.rec.query).get("model") == "flux-general-multi":
            # multi only: detected languages by word count (empty without a transcript) and the active hints
            hints = self.rec.language_hints
            msg["languages"] = (self.sim.detected or hints or ["en"]) if words else []
            msg["languages_hinted"] = hints
        if event == "EndOfTurn":
            msg["trigger"] = trigger or "model"
        if event == "Update" and self.sim.faults.nonfinite is not None and self.rec.faulty:
            msg["audio_window_end"] = "__RAW__"
        await self.send(msg)

    async def on_audio(self) -> None:
        step = self.advance()
        if step == "start":
            await self.turninfo("StartOfTurn")
        elif step == "update":
            await self.turninfo("Update")
        elif step == "end":
            await self.turninfo("EndOfTurn")
            self.next_turn()
        elif self.audio_time - self.last_update >= 0.25:
            await self.turninfo("Update")  # Flux sends Updates about every 0.25 s, empty in silence
        else:
            return
        self.last_update = self.audio_time

    async def on_control(self, kind) -> str | None:
        if kind == "ForceEndTurn":
            if self.open:
                await self.turninfo("EndOfTurn", trigger="manual")
                self.next_turn()
            else:
                await self.send({"type": "Warning", "sequence_id": self.next_seq(), "code": "FORCE_END_TURN_NO_ACTIVE_TURN",
                                 "description": "no active turn"})
        elif kind == "CloseStream":
            if self.open:
                await self.turninfo("Update")
            await self.ws.close(code=None)  # Flux closes with no status code after CloseStream
            return "stop"
        elif kind == "Configure":
            msg = json.loads(self.rec.texts[-1])
            terms = msg.get("keyterms", self.keyterms)  # omitted: kept
            code = self.sim.faults.configure_failure if self.rec.faulty else None
            if code is None and (not isinstance(terms, list) or not all(isinstance(t, str) for t in terms)):
                code = "INVALID_KEYTERMS"
            elif code is None and len(terms) > 100:
                code = "TOO_MANY_KEYTERMS"
            if code is not None:
                await self.send({"type": "ConfigureFailure", "request_id": self.request_id,
                                 "sequence_id": self.next_seq(), "code": code,
                                 "description": "simulated configure failure"})
            else:
                self.keyterms = list(terms)
                await self.send({"type": "ConfigureSuccess", "request_id": self.request_id,
                                 "sequence_id": self.next_seq(), "thresholds": {}, "keyterms": self.keyterms})
        else:
            await self.send({"type": "Error", "sequence_id": self.next_seq(), "code": "UNKNOWN_MESSAGE",
                             "description": f"unsupported message type {kind!r} on /v2/listen"})
            await self.ws.close(1008, "unsupported message")
            return "stop"
        return None


class GatewaySession(ScriptedSession):
    """v1-style Results: interim results carry the open segment so far (the turn, unless `segment_words` splits
    it into is_final segments, as Deepgram does in long utterances); the turn ends with is_final+speech_final."""

    async def greet(self) -> None:
        self.last_interim = 0.0
        self.seg, self.seg_t = 0, 0.0   # words of the open turn already settled in is_final segments; where they end

    async def results(self, is_final: bool, speech_final: bool = False, from_finalize: bool = False) -> None:
        heard = self.heard[self.seg:]
        start = self.seg_t if self.seg else self.turn_start
        await self.send({"type": "Results", "channel_index": [0, 1], "start": self.rel(start),
                         "duration": round(self.now - start, 3), "is_final": is_final,
                         "speech_final": speech_final, "from_finalize": from_finalize,
                         "channel": {"alternatives": [{"transcript": " ".join(w for w, _ in heard), "confidence": 0.95,
                                                       "words": [
                             {"word": w.lower().strip(".,"), "punctuated_word": w, "confidence": 0.95,
                              "start": self.rel(t - self.sim.word_ms / 1000), "end": self.rel(t)}
                             for w, t in heard]}]},
                         "metadata": {"request_id": "sim", "model_info": {"name": "simulated"}}})

    def next_turn(self) -> None:
        super().next_turn()
        self.seg = 0

    async def on_audio(self) -> None:
        step = self.advance()
        if step in ("start", "update"):
            every = self.sim.segment_words
            if every and len(self.heard) - self.seg >= every:
                await self.results(True)  # a settled segment: its words are final, the turn goes on
                self.seg, self.seg_t = len(self.heard), self.now
            else:
                await self.results(False)
        elif step == "end":
            await self.results(True, speech_final=True)
            self.next_turn()

    async def on_control(self, kind) -> str | None:
        if kind == "KeepAlive":
            return None
        if kind in ("Finalize", "CloseStream"):
            if self.open:
                await self.results(True, speech_final=False, from_finalize=True)
                self.next_turn()
            if kind == "CloseStream":
                await self.send({"type": "Metadata", "request_id": "sim", "duration": round(self.audio_time, 3), "channels": 1})
                await self.ws.close(1000)
                return "stop"
            return None
        return None  # the gateway ignores unknown messages (undocumented; be lenient)


# =====================================================================================================
# HOSTILE MODES (bench/hostile.py, tests/test_hostile.py; issue 17): upstreams that misbehave on purpose.
# A subclass, so the scripted simulator above is untouched: `HostileSimulator(mode=...)` with mode
#   "hostile_flap"           accept, say Connected, then fail each connection at its first audio (close 1011)
#   "hostile_echo_key"       an Error message whose description echoes the request's Authorization header
#   "hostile_echo_key_http"  refuse the upgrade (HTTP 401) with a body that echoes the Authorization header
#   "hostile_nan"            the scripted Flux session, but the first turn's times are the string "NaN" (JSON has no
#                            NaN; a string is what a sloppy upstream sends, and float() reads it as nan)
#   "hostile_inf"            the same with "Infinity"
# None (the default) is the ordinary simulator.
# =====================================================================================================

HOSTILE_MODES = ("hostile_flap", "hostile_echo_key", "hostile_echo_key_http", "hostile_nan", "hostile_inf")


class HostileSimulator(Simulator):
    def __init__(self, mode: str | None = None, **kw):
        if mode is not None and mode not in HOSTILE_MODES:
            raise ValueError(f"unknown hostile mode {mode!r}")
        super().__init__(**kw)
        self.mode = mode

    def _process_request(self, conn: ServerConnection, request):
        if self.mode == "hostile_echo_key_http":
            auth = request.headers.get("Authorization", "")
            rec = Record(urlsplit(request.path).path, parse_qsl(urlsplit(request.path).query), dict(request.headers.raw_items()))
            rec.closed = True
            self.records.append(rec)
            self._notify()
            return conn.respond(401, json.dumps({"err_code": "INVALID_AUTH", "err_msg": f"Invalid credentials: {auth}"}))
        return super()._process_request(conn, request)

    async def _handler(self, ws: ServerConnection) -> None:
        if self.mode not in ("hostile_flap", "hostile_echo_key"):
            if self.mode in ("hostile_nan", "hostile_inf") and urlsplit(ws.request.path).path == "/v2/listen":
                return await self._hostile_nan(ws)
            return await super()._handler(ws)
        parts = urlsplit(ws.request.path)
        rec = Record(parts.path, parse_qsl(parts.query, keep_blank_values=True), dict(ws.request.headers.raw_items()))
        self.records.append(rec)
        self._notify()
        try:
            await ws.send(json.dumps({"type": "Connected", "request_id": str(uuid.uuid4()), "sequence_id": 0}))
            if self.mode == "hostile_echo_key":
                auth = ws.request.headers.get("Authorization", "")
                await ws.send(json.dumps({"type": "Error", "sequence_id": 1, "code": "INTERNAL_SERVER_ERROR",
                                          "description": f"upstream gateway failed for request with {auth}"}))
                await ws.close(1011, f"failed: {auth}"[:120])
                return
            async for message in ws:   # hostile_flap: healthy handshake, then the first audio kills it
                if isinstance(message, bytes):
                    rec.audio += message
                    await ws.close(1011, "simulated flapping upstream")
                    return
        except ConnectionClosed:
            return
        finally:
            rec.closed = True
            self._notify()

    async def _hostile_nan(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        rec = Record(parts.path, parse_qsl(parts.query, keep_blank_values=True), dict(ws.request.headers.raw_items()))
        self.records.append(rec)
        self._notify()
        try:
            session = HostileNanSession(self, ws, rec)
            session.bad = "NaN" if self.mode == "hostile_nan" else "Infinity"
            await session.run()
        finally:
            rec.closed = True
            self._notify()


class HostileNanSession(FluxSession):
    """Flux TurnInfo whose times in the script's first turn are `bad` (a non-finite number as a string); the
    second turn is sound, so whether the session recovers from the bad one shows."""
    bad = "NaN"

    def rel(self, t: float):
        return self.bad if self.k == 0 else super().rel(t)
