"""Recognizers behind one interface (see base.py). `make_upstream` picks one from the settings."""

from __future__ import annotations

from ..config import Settings
from ..protocol import StreamParams
from .base import Upstream, UpstreamError, UpstreamListener


def make_upstream(settings: Settings, params: StreamParams, listener: UpstreamListener | None = None) -> Upstream:
    if settings.backend == "deepgram":
        from .deepgram import DeepgramUpstream

        return DeepgramUpstream(settings, params, listener)
    if settings.backend == "aigateway":
        from .aigateway import AIGatewayUpstream

        return AIGatewayUpstream(settings, params, listener)
    from .local import LocalUpstream

    return LocalUpstream(settings, params, listener)


def language_problem(settings: Settings, language: str) -> str | None:
    """Why this server's recognizer cannot take a client's `language` (protocol.parse_language), or None."""
    if not language:
        return None
    if settings.backend == "deepgram":
        from .flux import language_problem as flux_problem

        return flux_problem(language)
    if settings.backend == "aigateway":
        return None  # the gateway decides (its own error, mapped like any other)
    if language != "en":
        return (
            f"The embedded recognizer (Moonshine tiny-en) transcribes English only, not {language!r}: use "
            "language=en, or ask the operator to run the server with STT_BACKEND=deepgram for other languages"
        )
    return None


__all__ = ["Upstream", "UpstreamError", "UpstreamListener", "language_problem", "make_upstream"]
