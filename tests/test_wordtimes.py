"""The embedded recognizer's estimated word times (webapp/local/wordtimes.py), pure: where a sentence or a clause
ends is the exports' one rule (exports.ends_sentence, ends_clause), not a copy of its own."""

from __future__ import annotations

import pytest

from webapp import exports
from webapp.local import wordtimes

# a word, and what a segment boundary right after it is: a sentence end, a clause end, or neither
ENDS = [
    ("them.", "sentence"),
    ("himself?", "sentence"),
    ("waited…", "sentence"),
    ("'Come.'", "sentence"),
    ("“Come.”", "sentence"),
    ("said!’", "sentence"),
    ("(aside.)", "sentence"),
    ("Mr.", ""),  # a title's abbreviation: no sentence end
    ("Dr.", ""),
    ("St.", ""),
    ("man,", "clause"),
    ("ill-disposed:", "clause"),
    ("“well,”", "clause"),
    ("—", "clause"),  # a dash between words, as typed
    ("short;", "clause"),
    ("ill-disposed", ""),
    ("Dashwood", ""),
]


@pytest.mark.parametrize("word,kind", ENDS)
def test_sentence_and_clause_ends_are_the_exports_rule(word, kind):
    bonus = {"sentence": wordtimes.SENTENCE_BONUS, "clause": wordtimes.CLAUSE_BONUS, "": 0.0}[kind]
    assert wordtimes._bonus(word) == bonus
    assert exports.ends_sentence(word) == (kind == "sentence") and exports.ends_clause(word) == (kind == "clause")


def test_a_title_inside_a_turn_is_no_pause():
    """Two voiced stretches around a 0.3 s pause: the words go where their length fits ("Brown" before the
    pause), not after "Mr." as if a sentence ended there (the old rule's bonus put "Brown" after the pause)."""
    words = wordtimes.estimate("Ask Mr. Brown to wait.", [(0.0, 1.0), (1.3, 2.3)], 0.0, 2.3)
    starts = {w["word"]: w["start"] for w in words}
    assert starts["Brown"] < 1.0 and starts["to"] == 1.3, words
