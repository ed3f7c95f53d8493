"""LOCAL_FINAL_DECODER=whisper: the setting is validated, and the worker's final decoder then gives Whisper tiny.en's
words for a real recorded turn (Moonshine still checks it for speech), with ids that make it the next turn's context."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speech  # noqa: E402

from webapp import config  # noqa: E402
from webapp.local import whisper  # noqa: E402
from webapp.local.tuning import Tuning  # noqa: E402

RATE = 16000


def test_setting_is_validated():
    with pytest.raises(config.ConfigError, match=r"^LOCAL_FINAL_DECODER: 'vosk' is not one of moonshine, whisper"):
        config.load({"LOCAL_FINAL_DECODER": "vosk"})
    assert Tuning.from_settings(config.load({})).final_decoder == "moonshine"
    with pytest.raises(config.ConfigError, match=r"^LOCAL_FINAL_DECODER=whisper needs LOCAL_BEAMS"):
        config.load({"LOCAL_FINAL_DECODER": "whisper", "LOCAL_BEAMS": "0"})
    if whisper.available():
        s = config.load({"LOCAL_FINAL_DECODER": " Whisper "})
        assert Tuning.from_settings(s).final_decoder == "whisper"
    else:
        with pytest.raises(config.ConfigError, match=r"^LOCAL_FINAL_DECODER=whisper needs .*caption-relay\[whisper\]"):
            config.load({"LOCAL_FINAL_DECODER": "whisper"})


def padded(clip) -> np.ndarray:
    x = clip.samples.astype(np.float32) / 32768
    tail = (np.random.default_rng(0).normal(0.0, 20.0, RATE // 2) / 32768.0).astype(np.float32)
    return np.concatenate([x, tail])


@pytest.mark.skipif(not whisper.available(), reason="the [whisper] extra is not installed")
def test_final_decodes_come_from_whisper():
    from webapp.local import moonshine
    from webapp.local.onnxdecoder import OnnxDecoder
    from webapp.local.planner import Job
    from webapp.local.worker import FinalDecoder

    onnx = OnnxDecoder(moonshine.model_path(), 1)
    dec = FinalDecoder(
        moonshine.load_transcriber(), onnx, None, Tuning(final_decoder="whisper"), whisper.WhisperDecoder()
    )
    first, second = speech.clip("lv-0920"), speech.clip("lv-0930")
    text, ids = dec.decode(Job(padded(first), words=True, checked=False))
    assert speech.wer(first.ref, text) <= 0.1, text
    assert text[0].isupper() and text.rstrip()[-1] in ".,:;", text  # Whisper's casing and punctuation
    assert ids and speech.normalize(onnx.text(ids)) == speech.normalize(text)  # the next turn's context
    # the next turn, with this one as its context: only its own words come out, the first turn's text the prompt
    both = np.concatenate([padded(first)[: len(first.samples)], padded(second)])
    text2, _ = dec.decode(Job(both, words=True, checked=True, prefix=ids, own=len(first.samples)))
    assert speech.wer(second.ref, text2) <= 0.15, text2
    # noise alone: Moonshine's voice check finds no speech, so Whisper never makes words up from it
    noise = (np.random.default_rng(1).normal(0.0, 30.0, RATE) / 32768.0).astype(np.float32)
    assert dec.decode(Job(noise, words=False, checked=False)) == ("", None)
