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


__all__ = ["Upstream", "UpstreamError", "UpstreamListener", "make_upstream"]
