"""Transcript exports against hand-checked reference files (tests/data/export_*), plus the caption rules
checked over generated transcripts.

How the references were checked by hand (see tests/data/export_turns.json):
  cue 2   60 characters -> two lines, split where the longer line is shortest (32/27, not 26/33)
  cue 3/4 a 10.4 s turn split by word times: cue 3 stops before "it" (a third line would be needed),
          cue 4 takes the rest (4.6 s); both two balanced lines
  cue 5/6 a turn with no word list: 8 s spread over 92 character-weights (len+1 per word); "length"
          would end at 17 + 74 * 8/92 = 23.43 s, past 6 s, so cue 5 ends after "its" at 17 + 67 * 8/92 = 22.826
  cue 7   "words" and "lack" have no times: their boundary is interpolated between 26.4 and 27.2
  cue 8   WebVTT escapes & < > (SRT keeps them as typed)
  cue 1/9/10 short cues held for 1 s, but never over the next cue (cue 9 ends at 31.6 where cue 10 starts)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from webapp import exports

DATA = Path(__file__).parent / "data"
TURNS = json.loads((DATA / "export_turns.json").read_text())["turns"]
SRT_TIME = r"\d{2}:\d{2}:\d{2},\d{3}"
VTT_TIME = r"\d{2}:\d{2}:\d{2}\.\d{3}"


def test_srt_matches_reference():
    assert exports.to_srt(TURNS) == (DATA / "export_reference.srt").read_text()


def test_vtt_matches_reference():
    assert exports.to_vtt(TURNS) == (DATA / "export_reference.vtt").read_text()


def test_txt_matches_reference():
    assert exports.to_txt(TURNS) == (DATA / "export_reference.txt").read_text()


def test_json_matches_reference():
    meta = {"id": "ref-session", "backend": "deepgram", "model": "flux-general-en", "sample_rate": 16000,
            "started_at": 1790000000.0, "ended_at": 1790000033.0, "duration": 33.0, "audio_seconds": 32.5,
            "end_reason": "client_closed", "live": False}
    out = exports.to_json(meta, TURNS[:2])
    assert out == (DATA / "export_reference.json").read_text()
    doc = json.loads(out)
    assert doc["session"]["id"] == "ref-session"
    assert [w["word"] for w in doc["turns"][1]["words"]][-1] == "meetings."


def test_srt_structure_follows_the_spec():
    blocks = exports.to_srt(TURNS).rstrip("\n").split("\n\n")
    for number, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(number)  # cues numbered from 1
        assert re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1])
        assert 1 <= len(lines[2:]) <= 2 and all(lines[2:])


def test_vtt_structure_follows_the_spec():
    text = exports.to_vtt(TURNS)
    assert text.startswith("WEBVTT\n\n")
    for block in text.rstrip("\n").split("\n\n")[1:]:
        lines = block.split("\n")
        assert re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", lines[1])
        assert all("-->" not in line for line in lines[2:])


def test_empty_and_edge_cases():
    assert exports.to_srt([]) == ""
    assert exports.to_vtt([]) == "WEBVTT\n"
    assert exports.to_txt([{"text": "  "}]) == ""
    # Past an hour, and rounding to the millisecond.
    turn = {"text": "late", "start": 3723.4567, "end": 3725.0, "words": []}
    assert exports.to_srt([turn]).split("\n")[1] == "01:02:03,457 --> 01:02:05,000"
    # A word longer than a line cannot be split: it gets a cue of its own.
    long_word = "x" * 50
    cues = exports.cues([{"text": f"a {long_word} b", "start": 0, "end": 3, "words": []}])
    assert [c.lines for c in cues] == [("a",), (long_word,), ("b",)]
    # No times at all: placed after the previous turn, about 0.3 s a word.
    cues = exports.cues([{"text": "one two", "start": 0.0, "end": 1.0}, {"text": "three four five six seven"}])
    assert cues[1].start == 1.0 and cues[1].end == 2.5


def test_out_of_order_word_times_still_give_ordered_cues():
    words = [{"word": "b", "start": 2.0, "end": 2.5}, {"word": "a", "start": 1.0, "end": 1.5}]
    cues = exports.cues([{"text": "b a", "start": 1.0, "end": 2.5, "words": words}])
    assert all(c.start <= c.end for c in cues)


# ---- the rules, over generated transcripts ------------------------------------------------------

word_text = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd", "Po")), min_size=1, max_size=14)


@st.composite
def turns(draw):
    out, t = [], 0.0
    for index in range(draw(st.integers(0, 6))):
        n = draw(st.integers(1, 40))
        texts = draw(st.lists(word_text, min_size=n, max_size=n))
        timed = draw(st.sampled_from(["all", "none", "some"]))
        words, start = [], t + draw(st.floats(0, 2))
        cursor = start
        for text in texts:
            length = draw(st.floats(0.05, 1.2))
            known = timed == "all" or (timed == "some" and draw(st.booleans()))
            words.append({"word": text, "start": cursor if known else None, "end": cursor + length if known else None})
            cursor += length
        out.append({"turn": index, "text": " ".join(texts), "start": start, "end": cursor,
                    "words": words if timed != "none" else []})
        t = cursor
    return out


@settings(max_examples=150, deadline=None)
@given(turns())
def test_cues_follow_caption_practice(transcript):
    cues = exports.cues(transcript)
    shown = [w for c in cues for line in c.lines for w in line.split(" ")]
    assert shown == [w for t in transcript for w in t["text"].split()]  # every word, once, in order
    for i, c in enumerate(cues):
        assert 1 <= len(c.lines) <= exports.MAX_LINES
        assert all(len(line) <= exports.LINE_CHARS for line in c.lines) or len(c.lines[0].split()) == 1
        assert c.end > c.start
        if len(" ".join(c.lines).split()) > 1:
            # a cue of several words spans at most 6 s of speech (+ the 1 s minimum for short ones)
            assert c.end - c.start <= exports.MAX_CUE_SECONDS + 1e-6
        if i:
            assert cues[i - 1].end <= c.start + 1e-9  # no overlap, in order
    srt = exports.to_srt(transcript)
    assert srt.count(" --> ") == len(cues)
