"""A session's text rules (issue 19): word replacements, an optional profanity mask and the recognizer's key
terms. Pure: no I/O. Every path that shows text to people (the speaker's page, viewers, exports, outputs) calls
the same `TextRules.apply*`; the stored transcript keeps the recognizer's own words.

- Replacements are whole-word and case-insensitive; the output is the replacement as typed ("caption relay" →
  "Caption Relay"). Spaces inside a rule match any run of whitespace. Longer rules win over shorter ones that
  start at the same place. A replacement is never matched again (no chains, no loops).
- The profanity mask keeps a word's first letter and stars the rest ("f***"), after the replacements. The list
  is PROFANITY below: a short, documented list of strong English profanity and slurs, chosen so that no word with
  an innocent meaning is masked ("ass", "dick", "cock", "hell", "damn" are not on it). PyPI's candidates were
  unmaintained (better-profanity, last release 2020) or a machine-learned classifier with a scikit-learn
  dependency (alt-profanity-check), which is more than a mask needs.
- Key terms are not applied to text: they go to the recognizer (Flux `Configure`, webapp/upstreams/).

Bounded work on hostile input: at most MAX_RULES rules of at most MAX_FROM / MAX_TO characters, at most
MAX_SAME_START of them starting with the same word; every rule text is escaped (re.escape), never a pattern of
the user's, and a rule is tried only where the text has its first word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .protocol import BIDI_CONTROLS

MAX_RULES = 200
MAX_FROM = 100  # characters of what is replaced
MAX_TO = 200  # characters of what replaces it
MAX_SAME_START = 20  # rules that start with the same word: each is tried where that word is said
MAX_KEYTERMS = 100  # Flux: at most 100 key terms ...
MAX_KEYTERM_CHARS = 100
MAX_KEYTERM_WORDS = 500  # ... and about 500 tokens in all (counted here as words: a lower bound)

# Strong English profanity and slurs, in the forms people say them. Whole words only, case-insensitive.
PROFANITY = frozenset(
    """
    fuck fucks fucked fucker fuckers fucking fuckin motherfucker motherfuckers motherfucking fuckhead
    shit shits shitty shitting shithead bullshit horseshit
    bitch bitches bitching asshole assholes arsehole arseholes bastard bastards
    cunt cunts twat twats wanker wankers bollocks dickhead dickheads goddamn goddamned
    slut sluts whore whores
    nigger niggers nigga niggas faggot faggots retard retards
    """.split()
)


_WORD = re.compile(r"\w+")


class RulesError(ValueError):
    """Rules that are refused; str() says what to change (the API's 400 message)."""


def _printable(text: str) -> bool:
    """No control characters, and no text-direction overrides: a replacement is shown to every viewer, and one of
    those would reorder the caption around it."""
    return not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in BIDI_CONTROLS for c in text)


def _spaces(text: str) -> str:
    return " ".join(text.split())


def _mask_word(m: re.Match) -> str:
    word = m.group(0)
    return word[0] + "*" * (len(word) - 1)


_PROFANITY_RE = re.compile(
    r"(?<!\w)(?:" + "|".join(sorted(map(re.escape, PROFANITY), key=len, reverse=True)) + r")(?!\w)", re.IGNORECASE
)


@dataclass(frozen=True)
class TextRules:
    """A session's rules, normalised. Build with `parse` (from the API, strict) or `load` (from the store)."""

    replacements: tuple[tuple[str, str], ...] = ()
    profanity: bool = False
    keyterms: tuple[str, ...] = ()
    # first word of a rule (casefolded) -> (pattern, replacement) of the rules that start with it, longest first
    _index: dict[str, tuple[tuple[re.Pattern, str], ...]] = field(default_factory=dict, compare=False, repr=False)

    # ---- building ---------------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: Any) -> TextRules:
        """Rules from an API body {replacements: [[from, to], …], profanity: bool, keyterms: […]} (every key
        optional). Raises RulesError naming what is wrong."""
        if not isinstance(data, dict):
            raise RulesError(
                'send a JSON object: {"replacements": [["from", "to"]], "profanity": false, "keyterms": []}'
            )
        unknown = set(data) - {"replacements", "profanity", "keyterms"}
        if unknown:
            raise RulesError(f"unknown field {sorted(unknown)[0]!r}; allowed: replacements, profanity, keyterms")
        raw = data.get("replacements") or []
        if not isinstance(raw, list):
            raise RulesError('replacements must be a list of ["from", "to"] pairs')
        if len(raw) > MAX_RULES:
            raise RulesError(f"at most {MAX_RULES} replacements ({len(raw)} sent)")
        pairs: dict[str, tuple[str, str]] = {}  # by what they match: a later rule for the same words wins
        for i, pair in enumerate(raw, 1):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise RulesError(f'replacement {i} must be a pair of strings, ["from", "to"]')
            src, dst = _spaces(pair[0]), _spaces(pair[1])
            if not src or len(src) > MAX_FROM or not _printable(src):
                raise RulesError(f"replacement {i}: the words to replace must be 1 to {MAX_FROM} printable characters")
            if not _WORD.match(src):
                raise RulesError(f"replacement {i}: the words to replace must start with a letter or digit")
            if len(dst) > MAX_TO or not _printable(dst):
                raise RulesError(f"replacement {i}: the replacement must be at most {MAX_TO} printable characters")
            pairs[src.casefold()] = (src, dst)
        profanity = data.get("profanity", False)
        if not isinstance(profanity, bool):
            raise RulesError("profanity must be true or false")
        terms = data.get("keyterms") or []
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise RulesError("keyterms must be a list of strings")
        keyterms = list(dict.fromkeys(_spaces(t) for t in terms if t.strip()))
        if len(keyterms) > MAX_KEYTERMS:
            raise RulesError(f"at most {MAX_KEYTERMS} key terms ({len(keyterms)} sent)")
        for term in keyterms:
            if len(term) > MAX_KEYTERM_CHARS or not _printable(term):
                raise RulesError(f"each key term must be 1 to {MAX_KEYTERM_CHARS} printable characters")
        if sum(len(t.split()) for t in keyterms) > MAX_KEYTERM_WORDS:
            raise RulesError(f"the key terms may hold at most {MAX_KEYTERM_WORDS} words in all")
        return cls.build(tuple(pairs.values()), profanity, tuple(keyterms))

    @classmethod
    def load(cls, stored: Any) -> TextRules:
        """Rules as the store holds them (to_dict's shape), or none: never raises (a row written by a later
        version, or damaged, gives no rules rather than no transcript)."""
        if not stored:
            return NO_RULES
        try:
            return cls.parse(stored)
        except RulesError:
            return NO_RULES

    @classmethod
    def build(cls, replacements: tuple[tuple[str, str], ...], profanity: bool, keyterms: tuple[str, ...]) -> TextRules:
        """Rules already normalised (parse checks them). Each rule is its own escaped pattern, tried only where the
        text has a word its rule starts with: one dict lookup per word of the text, whatever the number of rules."""
        index: dict[str, list[tuple[re.Pattern, str]]] = {}
        for src, dst in sorted(replacements, key=lambda p: -len(p[0])):  # longest first: "caption relay" > "caption"
            first = _WORD.match(src)
            assert first is not None  # parse: a rule starts with a letter or digit
            pattern = re.compile(r"\s+".join(map(re.escape, src.split())) + r"(?!\w)", re.IGNORECASE)
            index.setdefault(first.group(0).casefold(), []).append((pattern, dst))
        if any(len(rules) > MAX_SAME_START for rules in index.values()):
            raise RulesError(f"at most {MAX_SAME_START} replacements may start with the same word")
        return cls(replacements, profanity, keyterms, {k: tuple(v) for k, v in index.items()})

    def to_dict(self) -> dict[str, Any]:
        """The normalised rules, as the API answers and the store keeps them."""
        return {
            "replacements": [list(p) for p in self.replacements],
            "profanity": self.profanity,
            "keyterms": list(self.keyterms),
        }

    @property
    def active(self) -> bool:
        """Whether any text changes (key terms do not change text)."""
        return bool(self._index) or self.profanity

    # ---- applying ---------------------------------------------------------------------------------

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, replacement) of each replacement in the text, left to right, never overlapping."""
        index, out, done = self._index, [], 0
        for word in _WORD.finditer(text):
            at = word.start()
            if at < done:  # inside the last match
                continue
            for pattern, dst in index.get(word.group(0).casefold(), ()):
                m = pattern.match(text, at)
                if m is not None:
                    out.append((at, m.end(), dst))
                    done = m.end()
                    break
        return out

    def apply(self, text: str) -> str:
        """The text as people should see it."""
        if self._index:
            matches = self._matches(text)
            if matches:
                pieces, at = [], 0
                for start, end, dst in matches:
                    pieces += [text[at:start], dst]
                    at = end
                pieces.append(text[at:])
                text = "".join(pieces)
                if "  " in text or text[:1] == " " or text[-1:] == " ":  # an empty replacement leaves a gap
                    text = _spaces(text)
        if self.profanity:
            text = _PROFANITY_RE.sub(_mask_word, text)
        return text

    def apply_words(self, words: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A word list with the same rules. A replacement that changes the number of words ("gonna" → "going to")
        spreads the replaced words' time span over the new words by length, so times stay in order and the
        list's text is the turn's text."""
        if not self.active or not words:
            return words
        out = words
        if self._index:
            out = self._replace_words(words)
        if self.profanity:
            out = [
                {**w, "word": _PROFANITY_RE.sub(_mask_word, w["word"])} if isinstance(w.get("word"), str) else w
                for w in out
            ]
        return out

    def _replace_words(self, words: list[dict[str, Any]]) -> list[dict[str, Any]]:
        texts: list[str] = [w["word"] if isinstance(w.get("word"), str) else "" for w in words]
        joined, starts, pos = [], [], 0
        for t in texts:
            starts.append(pos)
            joined.append(t)
            pos += len(t) + 1
        line = " ".join(joined)
        # Word clusters that a match touches: (first word, last word, [matches]); overlapping clusters merge.
        clusters: list[list[Any]] = []
        for m in self._matches(line):
            first = _word_at(starts, m[0])
            last = _word_at(starts, max(m[1] - 1, m[0]))
            if clusters and clusters[-1][1] >= first:
                clusters[-1][1] = max(clusters[-1][1], last)
                clusters[-1][2].append(m)
            else:
                clusters.append([first, last, [m]])
        if not clusters:
            return words
        out: list[dict[str, Any]] = []
        done = 0
        for first, last, matches in clusters:
            out.extend(words[done:first])
            base = starts[first]
            span = line[base : starts[last] + len(texts[last])]
            pieces, at = [], 0
            for start, end, dst in matches:
                pieces += [span[at : start - base], dst]
                at = end - base
            pieces.append(span[at:])
            new = "".join(pieces).split()
            group = words[first : last + 1]
            if len(new) == len(group):
                out += [{**w, "word": t} for w, t in zip(group, new, strict=True)]
            else:
                out += _spread(group, new)
            done = last + 1
        out.extend(words[done:])
        return out

    def apply_turn(self, turn: dict[str, Any]) -> dict[str, Any]:
        """A turn or transcript event ({"text", "words", …}) with the rules applied: a new dict, the input is
        left as it is (it is what the store keeps)."""
        if not self.active:
            return turn
        out = {**turn, "text": self.apply(turn.get("text") or "")}
        if turn.get("words"):
            out["words"] = self.apply_words(turn["words"])
        return out

    def apply_turns(self, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.apply_turn(t) for t in turns] if self.active else turns


NO_RULES = TextRules()


def _word_at(starts: list[int], offset: int) -> int:
    """Index of the word whose text covers `offset` of the joined line (a space counts to the word before it)."""
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _spread(group: list[dict[str, Any]], new: list[str]) -> list[dict[str, Any]]:
    """New words over the time span of the words they replace, by character weight (as exports.timed_words)."""
    if not new:
        return []
    t0 = next((w.get("start") for w in group if isinstance(w.get("start"), (int, float))), None)
    t1 = next((w.get("end") for w in reversed(group) if isinstance(w.get("end"), (int, float))), None)
    confs: list[float] = [w["confidence"] for w in group if isinstance(w.get("confidence"), (int, float))]
    confidence = min(confs) if confs else None
    if t0 is None or t1 is None or t1 < t0:
        return [{"word": t, "start": None, "end": None, "confidence": confidence} for t in new]
    weights = [len(t) + 1 for t in new]
    total, acc, out = sum(weights), 0, []
    for t, wgt in zip(new, weights, strict=True):
        a = t0 + (t1 - t0) * acc / total
        acc += wgt
        b = t0 + (t1 - t0) * acc / total
        out.append({"word": t, "start": round(a, 3), "end": round(b, 3), "confidence": confidence})
    return out
