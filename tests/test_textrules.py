"""Text rules (webapp/textrules.py), pure: replacements, the profanity mask, word lists and their times, and
the refusals the owner API turns into a 400. Table-driven, as tests/test_exports.py."""
from __future__ import annotations

import time

import pytest

from webapp import exports
from webapp.textrules import MAX_RULES, NO_RULES, PROFANITY, RulesError, TextRules


def rules(*pairs, profanity=False, keyterms=()):
    return TextRules.parse({"replacements": [list(p) for p in pairs], "profanity": profanity, "keyterms": list(keyterms)})


# (rules, text in, text out)
CASES = [
    (rules(("caption relay", "Caption Relay")), "welcome to caption relay.", "welcome to Caption Relay."),
    (rules(("caption relay", "Caption Relay")), "CAPTION   RELAY rocks", "Caption Relay rocks"),  # any case, any spaces
    (rules(("relay", "Relay")), "relays relay, prelay relay.", "relays Relay, prelay Relay."),  # whole words only
    (rules(("gonna", "going to")), "we're gonna win", "we're going to win"),
    (rules(("caption", "X"), ("caption relay", "Caption Relay")), "caption relay caption", "Caption Relay X"),  # longest
    (rules(("a", "b"), ("b", "c")), "a b", "b c"),  # a replacement is never matched again
    (rules(("um", "")), "so um yes", "so yes"),  # an empty replacement removes the word
    (rules(("c++", "C++")), "I like c++ a lot", "I like C++ a lot"),  # rule text is literal, never a pattern
    (rules(("a.b", "X")), "axb a.b", "axb X"),
    (rules(("straße", "Strasse")), "die STRASSE und straße", "die STRASSE und Strasse"),
    (rules(("dr smith", "Dr. Smith")), "ask Dr Smith", "ask Dr. Smith"),
    (rules(profanity=True), "what the fuck, Shit!", "what the f***, S***!"),
    (rules(profanity=True), "a classic assessment of Scunthorpe", "a classic assessment of Scunthorpe"),  # no substrings
    (rules(profanity=True), "hell, damn, ass", "hell, damn, ass"),  # mild or innocent words are not on the list
    (rules(("darn", "fuck"), profanity=True), "darn it", "f*** it"),  # the mask runs after the replacements
    (NO_RULES, "anything at all", "anything at all"),
]


@pytest.mark.parametrize("r,text,expected", CASES)
def test_apply(r, text, expected):
    assert r.apply(text) == expected


def words_of(text, step=1.0):
    return [{"word": w, "start": i * step, "end": i * step + 0.8, "confidence": 0.9} for i, w in enumerate(text.split())]


# (rules, words, expected words' texts)
WORD_CASES = [
    (rules(("caption relay", "Caption Relay")), "hi caption relay team", ["hi", "Caption", "Relay", "team"]),
    (rules(("gonna", "going to")), "we gonna win", ["we", "going", "to", "win"]),  # 1 -> 2 words
    (rules(("going to", "gonna")), "we going to win", ["we", "gonna", "win"]),  # 2 -> 1
    (rules(("um", "")), "so um yes", ["so", "yes"]),  # 1 -> 0
    (rules(("relay", "Relay")), "the relay.", ["the", "Relay."]),  # punctuation on the word is kept
    (rules(("a b", "x"), ("b c", "y")), "a b c", ["x", "c"]),
    (rules(profanity=True), "oh fucking hell", ["oh", "f******", "hell"]),
]


@pytest.mark.parametrize("r,text,expected", WORD_CASES)
def test_apply_words_keeps_the_text_and_the_times(r, text, expected):
    words = words_of(text)
    out = r.apply_words(words)
    assert [w["word"] for w in out] == expected
    assert " ".join(w["word"] for w in out) == r.apply(text)  # the words say what the text says
    times = [t for w in out for t in (w["start"], w["end"])]
    assert times == sorted(times)  # in order, never overlapping
    if out:
        assert out[0]["start"] >= words[0]["start"] and out[-1]["end"] <= words[-1]["end"]
    assert words == words_of(text)  # the input (what the store keeps) is untouched


def test_a_merged_word_spans_the_words_it_replaces():
    out = rules(("going to", "gonna")).apply_words(words_of("we going to win"))
    assert out[1] == {"word": "gonna", "start": 1.0, "end": 2.8, "confidence": 0.9}
    split = rules(("gonna", "going to")).apply_words(words_of("we gonna win"))
    assert split[1]["start"] == 1.0 and split[2]["end"] == 1.8 and split[1]["end"] == split[2]["start"]


def test_apply_turn_and_exports():
    turn = {"turn": 0, "text": "caption relay is gonna work", "start": 0.0, "end": 5.0,
            "words": words_of("caption relay is gonna work")}
    r = rules(("caption relay", "Caption Relay"), ("gonna", "going to"))
    shown = r.apply_turn(turn)
    assert shown["text"] == "Caption Relay is going to work" and turn["text"] == "caption relay is gonna work"
    assert exports.to_txt([shown]) == "Caption Relay is going to work\n"
    assert "Caption Relay is going to work" in exports.to_srt([shown]).replace("\n", " ")


def test_round_trip_through_the_store_shape():
    r = rules(("caption relay", "Caption Relay"), ("Gonna", "going to"), profanity=True, keyterms=["Flux", " Caption  Relay "])
    assert TextRules.load(r.to_dict()) == r
    assert r.to_dict()["keyterms"] == ["Flux", "Caption Relay"]
    assert TextRules.load(None) is NO_RULES and TextRules.load({"replacements": "junk"}) is NO_RULES


def test_a_later_rule_for_the_same_words_wins():
    r = rules(("Relay", "A"), ("relay", "B"))
    assert r.to_dict()["replacements"] == [["relay", "B"]]


# (body, what the error names)
REFUSED = [
    ([], "JSON object"),
    ({"replacements": [["a", "b"]], "color": "red"}, "unknown field 'color'"),
    ({"replacements": "a=>b"}, "list of"),
    ({"replacements": [["a", "b", "c"]]}, "replacement 1 must be a pair"),
    ({"replacements": [["a", 1]]}, "pair of strings"),
    ({"replacements": [["", "x"]]}, "1 to 100"),
    ({"replacements": [["x" * 101, "y"]]}, "1 to 100"),
    ({"replacements": [["a", "y" * 201]]}, "at most 200"),
    ({"replacements": [["a\x07b", "y"]]}, "printable"),
    ({"replacements": [["a", "\u202eb"]]}, "printable"),  # a direction override shown to every viewer
    ({"keyterms": ["x\u2066y"]}, "printable"),
    ({"replacements": [["...", "y"]]}, "start with a letter or digit"),
    ({"replacements": [["+c", "y"]]}, "start with a letter or digit"),
    ({"replacements": [[f"dr x{i}", "y"] for i in range(21)]}, "at most 20 replacements may start with the same word"),
    ({"replacements": [["a", "b"]] * (MAX_RULES + 1)}, f"at most {MAX_RULES} replacements"),
    ({"profanity": "yes"}, "true or false"),
    ({"keyterms": "Flux"}, "list of strings"),
    ({"keyterms": [f"term{i}" for i in range(101)]}, "at most 100 key terms"),
    ({"keyterms": ["x" * 101]}, "1 to 100"),
    ({"keyterms": [" ".join([f"w{i:02d}"] * 25) for i in range(21)]}, "at most 500 words"),
]


@pytest.mark.parametrize("body,needle", REFUSED)
def test_refused(body, needle):
    with pytest.raises(RulesError, match=None) as info:
        TextRules.parse(body)
    assert needle in str(info.value)


def test_hostile_rules_cost_bounded_time():
    """The most and longest rules the API takes, made to nearly match everywhere (20 share the first word and 19
    more, the rest are other words), over a turn of 10,000 characters: every word of the text is tried against
    at most 20 escaped rules, a few ms; an ordinary turn with 200 rules costs microseconds."""
    pairs = [[("aaaa " * 19) + f"b{i:03d}", "x" * 200] for i in range(20)]
    pairs += [[f"w{i} " * 19 + "z", "x" * 200] for i in range(MAX_RULES - 20)]
    r = TextRules.parse({"replacements": pairs, "profanity": True})
    text = "aaaa " * 2000
    started = time.process_time()  # CPU time: the machine is shared, wall time is not this test's to judge
    for _ in range(5):
        assert r.apply(text) == text
    assert (time.process_time() - started) / 5 < 0.5  # measured 39 ms; a backtracking pattern would take minutes
    plain = "this is an ordinary turn of some twenty words that a speaker says in five seconds or so today"
    started = time.process_time()
    for _ in range(1000):
        r.apply(plain)
    assert (time.process_time() - started) / 1000 < 0.005  # measured about 50 µs
    masked = r.apply(" ".join(sorted(PROFANITY))).split()
    assert all(m[0] == w[0] and set(m[1:]) == {"*"} for m, w in zip(masked, sorted(PROFANITY), strict=True))


@pytest.mark.parametrize("backend,says", [
    ("local", "The embedded recognizer does not use key terms"),
    ("deepgram", "Sent to the recognizer at once"),
])
def test_the_panel_says_whether_the_recognizer_uses_key_terms(backend, says):
    from webapp.templates import page_templates

    page = page_templates("v").env.get_template("index.html").render(backend=backend, needs_login=False)
    panel = page[page.index('id="textrules"'):]
    assert says in panel and 'id="textrules-apply"' in panel
