"""The moonshine-voice adapter: the Transcriber (tiny-en, inside the wheel) and a thread-safe one-shot decode.

Nothing here downloads anything: only get_model_path("tiny-en") (a path inside the package) is used.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from .signal import RATE


def model_path() -> Path:
    from moonshine_voice import get_model_path

    return Path(get_model_path("tiny-en"))  # inside the wheel; never get_model_for_language (it downloads)


def force_flag() -> int:
    """The flag that makes update_transcription decode now."""
    from moonshine_voice.transcriber import MOONSHINE_FLAG_FORCE_UPDATE

    return MOONSHINE_FLAG_FORCE_UPDATE


def load_transcriber():
    os.environ["MOONSHINE_ORT_SINGLE_THREAD"] = "1"  # must be set before the Transcriber exists
    from moonshine_voice import ModelArch
    from moonshine_voice.transcriber import Transcriber

    tr = Transcriber(model_path=str(model_path()), model_arch=ModelArch.TINY)  # default arch is BASE: wrong for tiny-en
    # GIL: libmoonshine is loaded with ctypes.CDLL (not PyDLL), and ctypes releases the GIL around CDLL calls,
    # so decoding on one stream's thread does not stall the others in the same process.
    assert isinstance(tr._lib, ctypes.CDLL) and not isinstance(tr._lib, ctypes.PyDLL)
    return tr


def decode_once(tr, audio: np.ndarray, force_flag: int) -> str:
    """Decode one buffer to text; thread-safe on a shared Transcriber."""
    # A scratch stream, not transcribe_without_streaming: that returns a buffer owned by the Transcriber,
    # which another stream's thread overwrites (garbage text seen with 2 streams per worker).
    scratch = tr.create_stream(update_interval=1e9)
    try:
        scratch.start()
        add_audio(tr, scratch, audio)
        transcript = scratch.update_transcription(force_flag)  # stop() alone would return empty lines
    finally:
        scratch.close()
    lines = transcript.lines if transcript is not None else []
    return " ".join(line.text.strip() for line in lines if line.text.strip())


def add_audio(tr, stream, x: np.ndarray) -> None:
    err = tr._lib.moonshine_transcribe_add_audio_to_stream(
        tr._handle, stream._handle, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(x), RATE, 0
    )
    if err < 0:
        from moonshine_voice.errors import check_error

        check_error(err)
