"""A voice detector per stream: the Silero VAD model that libmoonshine carries inside itself, run by onnxruntime
with each stream's own state.

Why not libmoonshine's: its VAD is one process-wide instance (`VoiceActivityDetector::silero_vad`, a static
member), so its state carries from one stream's audio to the next: the same clip, in fresh streams of one
Transcriber, gave its first line at 1.76 s the first time and not before 2.0 s once another stream had run
(docs/benchmarks.md). Here each stream keeps its own state; the model bytes come from libmoonshine itself (the
`silero_vad_onnx` symbol), so nothing is downloaded and nothing is added to the install. A 32 ms chunk costs ~0.1 ms.

    session = load_session(transcriber._lib)   # once per process; runs are thread-safe
    vad = StreamVad(session)                   # per stream
    vad.process(x)                             # float32 mono 16 kHz, any length
    vad.voiced_since(sample)                   # chunks with speech probability >= THRESHOLD from that sample on
    vad.probs_between(a, b)                    # (start sample, probabilities) of the chunks kept in [a, b)
"""

from __future__ import annotations

import ctypes

import numpy as np

CHUNK = 512  # samples at 16 kHz: the model's window
CONTEXT = 64  # samples of the previous chunk the model sees before each one (as Silero's own wrapper feeds it)
# Silero's own default is 0.5, but a breath after the reading reached 0.9 (speech: 0.95-1.0 within 0.1-0.3 s of its
# onset), and tiny-en reads a breath as "You"
THRESHOLD = 0.95
HISTORY = 2048  # chunks of probabilities kept at most (65 s; half on overflow: longer than MAX_LINE_SECONDS), for
# word times; a finished turn's are dropped (planner.end_turn)


def load_session(lib: ctypes.CDLL):
    import onnxruntime as ort

    size = ctypes.c_uint32.in_dll(lib, "silero_vad_onnx_len").value
    data = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(lib, "silero_vad_onnx")), size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


class StreamVad:
    def __init__(self, session):
        self.session = session
        self.state = np.zeros((2, 1, 128), np.float32)
        self.rate = np.array(16000, np.int64)
        self.rest = np.zeros(CONTEXT, np.float32)  # the context, then samples not yet in a whole chunk
        self.pos = 0  # samples processed (the end of the last whole chunk)
        self.voiced: list[int] = []  # start sample of each chunk at or over THRESHOLD
        self.probs: list[float] = []  # each chunk's speech probability, the last HISTORY at most (wordtimes.py)
        self.probs_start = 0  # start sample of probs[0]

    def process(self, x: np.ndarray) -> None:
        buf = np.concatenate([self.rest, x.astype(np.float32, copy=False)])
        n = (len(buf) - CONTEXT) // CHUNK
        for k in range(n):
            window = buf[k * CHUNK : k * CHUNK + CONTEXT + CHUNK][None, :]
            prob, self.state = self.session.run(None, {"input": window, "state": self.state, "sr": self.rate})
            p = float(prob[0, 0])
            self.probs.append(p)
            if p >= THRESHOLD:
                self.voiced.append(self.pos)
            self.pos += CHUNK
        self.rest = buf[n * CHUNK :]
        if len(self.voiced) > 4096:
            del self.voiced[:2048]  # only recent chunks are asked about
        if len(self.probs) > HISTORY:
            self.forget(self.pos - (HISTORY // 2) * CHUNK)

    def forget(self, before: int) -> None:
        """Drop the probabilities of chunks that start before sample `before` (a finished turn's)."""
        n = max(0, min(len(self.probs), (before - self.probs_start) // CHUNK))
        if n:
            del self.probs[:n]
            self.probs_start += n * CHUNK

    def probs_between(self, a: int, b: int) -> tuple[int, list[float]]:
        """The kept chunks that start in [a, b): the first one's start sample and their probabilities."""
        i = max(0, -(-(a - self.probs_start) // CHUNK))
        j = max(i, min(len(self.probs), -(-(b - self.probs_start) // CHUNK)))
        return self.probs_start + i * CHUNK, self.probs[i:j]

    def voiced_since(self, sample: int) -> int:
        n = 0
        for start in reversed(self.voiced):
            if start < sample:
                break
            n += 1
        return n
