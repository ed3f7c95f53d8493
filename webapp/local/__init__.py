"""The embedded recognizer: Moonshine tiny-en (moonshine-voice 0.1.0, weights inside the wheel) in worker processes.

One worker process per core, each with one Transcriber and several streams on threads; the web process never runs
add_audio. Moonshine only ends a line ~0.6-0.7 s after speech, so each stream runs its own energy endpointer on
the PCM: after 0.04 s of silence it submits the turn (plus a synthetic noise tail: without trailing audio tiny-en
repeats or drops the last words) to the worker's final-decoder thread, and once the silence reaches 0.2 s it
commits that text as the final one. Final decodes run the same weights in onnxruntime (onnxdecoder.py): a turn
that follows the previous one closely is decoded after it, with that turn's tokens read back as the prefix (left
context), and the interim text is its draft (checked in one decoder pass). The decode is speculative and runs
beside the stream's thread, so it overlaps the silence window; if speech goes on, its text is sent as an interim
instead, or stopped between decoder steps when it cannot serve as a cut. Finals come first in a worker: while one
is queued or running, the worker's streams skip their interim re-decodes, and the streams' threads run at a
higher nice value. Interims are the onnx decoder's too, once the stream's own voice detector (vad.py) is sure the
turn holds speech. Moonshine's streaming lines only serve turns longer than 8 s, which its line end may end.

One execution context per file:
    tuning.py      the knobs, one frozen value (operators set three through config.py; benchmarks the rest)
    signal.py      resampler and energy endpointer
    planner.py     the pure turn planner: speculation, cuts, left context, drafts (TurnPlanner, named tuples)
    moonshine.py   the moonshine-voice adapter
    stream.py      a stream's thread inside a worker (Stream)
    worker.py      the worker process and its final-decoder thread
    pool.py        the web process's side: Pool, RecognizerStream
    onnxdecoder.py, vad.py   the onnxruntime decoder and the per-stream voice detector
    engine.py      a standalone Flux-compatible server on the pool (`caption-relay engine`)

API (asyncio side):
    pool = await get_pool(settings)          # starts and warms the workers once
    stream = pool.open_stream(on_event)      # CapacityError when all slots are busy
    stream.feed(pcm)                          # s16le mono at the rate given to open_stream
    await stream.finalize()                   # end the current turn now; returns False if none was open
    await stream.close()                      # finalize, flush, deliver the remaining events
    stream.abort()
on_event(kind, data) runs on the event loop that opened the stream: kind "update" {text, start, end},
"final" {text, start, end, trigger: model|manual|close, words: estimated times (wordtimes.py)} or "error" {message}.
Times are seconds from the stream start.
"""

from .pool import CapacityError, Pool, RecognizerStream, default_max_streams, get_pool, shutdown
from .tuning import Tuning

__all__ = ["CapacityError", "Pool", "RecognizerStream", "Tuning", "default_max_streams", "get_pool", "shutdown"]
