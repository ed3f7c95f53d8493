"""Deepgram Flux (`/v2/listen`): turn-aware TurnInfo events.

Wire facts (Deepgram's Flux documentation; docs/protocol.md, what each upstream does): auth header `Authorization: Token <key>`; wait for `Connected`;
`ForceEndTurn` ends the open turn; `Configure` replaces the key terms mid-stream (answered by ConfigureSuccess or
ConfigureFailure); `CloseStream` flushes but emits no EndOfTurn, so stop sends ForceEndTurn
first; `KeepAlive` is invalid on v2 (it kills the stream), so quiet microphones are covered with silence
frames while a turn is open.
"""

from __future__ import annotations

from .flux import apply_turninfo, model_and_hints
from .wsclient import WsUpstream, build_url


class DeepgramUpstream(WsUpstream):
    name = "deepgram"
    provider = "Deepgram"
    greeting = True  # audio waits for `Connected`
    flux_updates = True

    def url(self) -> str:
        p = self.params
        model, hints = model_and_hints(self.settings.model, p.language)
        query = [("model", model), ("encoding", p.encoding), ("sample_rate", str(p.sample_rate))]
        query += [("language_hint", hint) for hint in hints]  # repeated, one per language (multi model only)
        if p.eot_threshold is not None:
            query.append(("eot_threshold", str(p.eot_threshold)))
        if p.eager_eot_threshold is not None:
            query.append(("eager_eot_threshold", str(p.eager_eot_threshold)))
        if p.eot_timeout_ms is not None:
            query.append(("eot_timeout_ms", str(p.eot_timeout_ms)))
        query += [("keyterm", term) for term in p.keyterms]
        return build_url(self.settings.deepgram_url, query)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.settings.deepgram_api_key}"}

    def greet(self, msg: dict) -> None:
        assert self._ready is not None  # greet() runs only while the handshake waits on it
        if msg.get("type") == "Connected":
            self._ready.set_result(None)
        elif msg.get("type") == "Error":
            self._ready.set_exception(self.fatal(msg))

    def handle(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "TurnInfo":
            apply_turninfo(self.turns, msg)
        elif kind in ("ConfigureSuccess", "ConfigureFailure"):
            self._flux_configured(msg)
        elif kind == "Error":
            self.fatal(msg)
        # Connected, Warning and unknown types carry nothing for the browser.

    def configure(self, keyterms: tuple[str, ...]) -> bool:
        self._flux_configure(keyterms)
        return True

    def needs_silence(self) -> bool:
        return self.turns.open and not self._closing

    async def finalize(self) -> None:
        self._end_turn()

    def _end_turn(self) -> None:
        # Sent even when no turn looks open here: StartOfTurn may still be in flight, and with no turn
        # Flux only answers a harmless Warning.
        self._send_json({"type": "ForceEndTurn"})

    def close_stream(self) -> None:
        self._end_turn()
        self._send_json({"type": "CloseStream"})
