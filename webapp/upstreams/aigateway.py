"""AIgateway realtime (`/v1/realtime`).

The gateway's passthrough shape is not documented, so both are accepted (docs/protocol.md, what each upstream does):
Deepgram v1 `Results` (is_final segments accumulate into the turn; speech_final / UtteranceEnd end it)
and Flux `TurnInfo`. The key goes in an `Authorization: Bearer` header, never the URL. Silences are
bridged with v1 `KeepAlive` until the stream shows itself to be Flux-shaped (where KeepAlive is invalid).
"""

from __future__ import annotations

from .. import protocol
from .flux import apply_turninfo
from .wsclient import WsUpstream, build_url

KEEPALIVE_EVERY = 4.0  # seconds; Deepgram v1 closes a stream after 10 s without data


class AIGatewayUpstream(WsUpstream):
    name = "aigateway"
    provider = "AIgateway"

    def __init__(self, settings, params, listener=None):
        super().__init__(settings, params, listener)
        self.flux = False  # set once a TurnInfo arrives
        self._segments: list[str] = []  # is_final segments of the open turn (v1 shape)
        self._seg_words: list[dict] = []

    flux_updates = True  # the passthrough may be Flux-shaped

    def turn_update(self, update) -> None:
        self.flux = True
        super().turn_update(update)

    @property
    def keepalive_every(self) -> float | None:  # type: ignore[override]
        return None if self.flux else KEEPALIVE_EVERY

    def url(self) -> str:
        p = self.params
        query = [
            ("model", self.settings.model),
            ("encoding", p.encoding),
            ("sample_rate", str(p.sample_rate)),
            ("interim_results", "true"),
        ]
        if p.language:
            query.append(("language", p.language))  # as the gateway's batch endpoint takes it (realtime: undocumented)
        query += [("keyterm", term) for term in p.keyterms]
        return build_url(self.settings.aigateway_url, query)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.aigateway_api_key}"}

    def handle(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "Results":
            self._results(msg)
        elif kind == "UtteranceEnd":
            self._end_v1_turn(None)
        elif kind == "TurnInfo":
            self.flux = True
            apply_turninfo(self.turns, msg)
        elif kind in ("ConfigureSuccess", "ConfigureFailure"):
            self.flux = True
            self._flux_configured(msg)
        elif kind == "Error" or isinstance(msg.get("error"), dict):
            error = msg.get("error")
            self.fatal(error if isinstance(error, dict) else msg)

    def configure(self, keyterms: tuple[str, ...]) -> bool:
        # Configure is a Flux message: sent to a Flux model or a stream seen to be Flux-shaped only (the v1 shape
        # has no mid-stream key terms; the next connection's URL carries them).
        if not (self.flux or "flux" in self.settings.model):
            return False
        self._flux_configure(keyterms)
        return True

    def _results(self, msg: dict) -> None:
        channel = msg.get("channel")
        if not isinstance(channel, dict):
            channel = {}
        alts = channel.get("alternatives") or [{}]
        alt = alts[0] if isinstance(alts[0], dict) else {}
        text = str(alt.get("transcript") or "").strip()
        words = [
            protocol.word(
                str(w.get("punctuated_word") or w.get("word") or ""), w.get("start"), w.get("end"), w.get("confidence")
            )
            for w in alt.get("words") or []
            if isinstance(w, dict)
        ]
        start = protocol.finite(msg.get("start"))  # NaN/Infinity: a malformed message, skipped
        end = start + protocol.finite(msg.get("duration"))
        if msg.get("is_final"):
            if text:
                self._segments.append(text)
                self._seg_words += words
            self.turns.update(" ".join(self._segments), list(self._seg_words), start, end)
            if msg.get("speech_final") or msg.get("from_finalize"):
                # v1 multilingual: detected `languages` on the alternative (or the channel)
                self._end_v1_turn(end, alt.get("languages") or channel.get("languages"))
        else:
            self.turns.update(" ".join(self._segments + ([text] if text else [])), self._seg_words + words, start, end)

    def _end_v1_turn(self, end: float | None, languages=None) -> None:
        if self._segments:
            self.turns.end_turn(" ".join(self._segments), list(self._seg_words), end, languages)
        else:
            self.turns.end_turn(end=end, languages=languages)
        self._segments, self._seg_words = [], []

    def on_remote_close(self) -> None:
        self._end_v1_turn(None) if not self.flux else self.turns.end_turn()

    def needs_silence(self) -> bool:
        return self.flux and self.turns.open and not self._closing

    async def finalize(self) -> None:
        self._end_turn()

    def _end_turn(self) -> None:
        # ForceEndTurn: see DeepgramUpstream._end_turn
        self._send_json({"type": "ForceEndTurn" if self.flux else "Finalize"})

    def close_stream(self) -> None:
        if self.flux:
            self._end_turn()
        self._send_json({"type": "CloseStream"})
