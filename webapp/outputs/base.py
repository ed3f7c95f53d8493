"""What every caption output is given and what it must do: the `Caption`, the `Destination` interface each kind
implements (one module per kind in webapp/outputs/), and the `DeliveryError` a failed delivery raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class Caption:
    """One caption to deliver. A final caption carries `seq`, its position among the session's stored finals; an
    early caption (the stable beginning of a turn still being spoken) has final=False and seq=None. `continues`:
    see below."""

    session_id: str
    turn: int
    text: str
    start: float  # seconds from the session's start
    end: float
    spoken_at: float  # UTC epoch seconds at which `start` was spoken (YouTube's timestamp line)
    final: bool = True
    seq: int | None = None
    words: tuple[dict[str, Any], ...] = ()
    # the output's previous caption did not end a sentence and this one goes on from it (a turn that ended
    # mid-sentence, or the rest of a turn after its early part): shown as one running sentence where the kind can
    continues: bool = False


class DeliveryError(Exception):
    """A delivery that did not happen. `retryable` ones are tried again with backoff (not before `retry_after`
    seconds when the receiver said so); others mark the output failed. `message` is for people and never holds
    the output's URL or secret."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Destination(Protocol):
    kind: ClassVar[str]  # "youtube", "zoom", "obs", "webhook"

    async def start(self) -> int | None:
        """Connect or learn the receiver's state; return the receiver's last accepted sequence number when it
        can tell (Zoom's GET …/closedcaption/seq), else None. May raise DeliveryError."""
        ...

    async def deliver(self, caption: Caption, seq: int) -> bool:
        """Send one caption as post number `seq` of this output (the same `seq` on every retry of it). Return True
        once the receiver accepted it, False if it was skipped on purpose (e.g. OBS is not streaming). Raise
        DeliveryError otherwise."""
        ...

    def detail(self) -> str | None:
        """A short state note for people, e.g. "OBS is not streaming", or None."""
        ...

    async def close(self) -> None: ...
