"""Final decodes: Moonshine tiny-en's own ONNX files (inside moonshine-voice 0.1.0) run by onnxruntime, because
libmoonshine cannot do what the final decode needs:

* left context: `decode_ids(audio, prefix)` decodes audio that begins with the previous turn, and the decoder reads
  that turn's tokens (`prefix`) instead of guessing them again, so only the new turn's tokens come out. Turns cut
  at comma pauses and decoded alone lose words ("Ensure" for "in short", "a season", "For good or evil");
* beam search (`beams` > 1), which libmoonshine does not have either;
* drafts: a decoder step costs ~7 ms whatever it computes (onnxruntime runs ~870 small nodes per step), so the
  greedy decode checks guessed tokens (the interim text, `draft`) in one pass: it proposes the draft's tokens that
  follow what it has decoded so far and keeps those the decoder would have chosen itself (prompt-lookup decoding).
  The same tokens as token-by-token greedy but for float rounding at near-ties (26 of the benchmark's 27 turns alike;
  the other read "spring" where token by token read "swin"), in 86 decoder passes instead of 309;
* calm interims (`keep`, `margin`; interims only): the draft's first tokens, the words an interim showed already,
  stay unless the decoder's own choice is more than `margin` likelier (log-probability), so shown words change only
  when the decoder is confident they were wrong. Finals pass neither and get the plain greedy result.

    dec = OnnxDecoder(model_dir, beams=1)     # two single-threaded sessions; run() from any thread, at once
    ids = dec.decode_ids(audio, prefix)       # float32 mono 16 kHz, with the noise tail already added
    ids = dec.decode_ids(audio, prefix, draft=dec.tokenize("what the interims said"))  # the same ids, sooner
    text = dec.text(ids)

Without context the greedy decode gives libmoonshine's words (tests/test_onnxdecoder.py). Scores of the beams are
summed token log-probabilities (no length normalisation: with it, "compassion" beat "comparison").
Tiny-en makes up words on noise ("You", "Mm-h"), and this decoder has no voice detector: worker.py checks
short turns with libmoonshine's decode, which has one. Measured in docs/benchmarks.md (embedded recognizer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path

import numpy as np

BOS, EOS = 1, 2
FIRST_TEXT_TOKEN = 3  # 0-2 are <unk>, <s>, </s>
TOKENS_PER_SECOND = 6.5  # cap on the output length, as libmoonshine's max_tokens_per_second
MIN_TOKENS = 8
MAX_DRAFT = 24  # draft tokens checked in one decoder pass
LOGP_TAIL = 8  # decode_ids(token_logp=): log-probabilities of at most this many last tokens per pass (firm())


def load_tokens(path: Path) -> list[bytes]:
    """moonshine's tokenizer.bin: each token's bytes, prefixed by their length (1 byte, or 2 as a varint)."""
    data = path.read_bytes()
    tokens, i = [], 0
    while i < len(data):
        n = data[i]
        i += 1
        if n & 0x80:
            n = (n & 0x7F) | (data[i] << 7)
            i += 1
        tokens.append(data[i : i + n])
        i += n
    return tokens


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class OnnxDecoder:
    def __init__(self, model_dir: Path, beams: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = (
            1  # the worker has one decode thread per core's worth of streams (docs/benchmarks.md, Embedded recognizer)
        )
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        cpu = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(model_dir / "encoder_model.ort"), opts, providers=cpu)
        self.decoder = ort.InferenceSession(str(model_dir / "decoder_model_merged.ort"), opts, providers=cpu)
        self.tokens = load_tokens(model_dir / "tokenizer.bin")
        # text piece -> id; the pieces (ids from 259 on) overwrite the byte-fallback ids of the same bytes
        self.pieces = {t: i for i, t in enumerate(self.tokens) if i >= FIRST_TEXT_TOKEN and t}
        self.beams = max(1, beams)
        self.outputs = [o.name for o in self.decoder.get_outputs()]
        # output present.N.decoder.key is fed back as input past_key_values.N.decoder.key
        self.past = {n: n.replace("present", "past_key_values") for n in self.outputs if n.startswith("present.")}
        self.self_kv = [n for n in self.past if ".decoder." in n]
        self.cross_kv = [n for n in self.past if ".encoder." in n]
        shape = next(i.shape for i in self.decoder.get_inputs() if i.name.endswith(".decoder.key"))
        self.heads, self.head_dim = shape[1], shape[3]
        # per decoder (an lru_cache on the method would key on self and keep every instance alive)
        self._word_ids = functools.lru_cache(maxsize=4096)(self._split_word)

    def text(self, ids: Iterable[int]) -> str:
        raw = b"".join(self.tokens[t] for t in ids if t >= FIRST_TEXT_TOKEN)
        return raw.decode("utf-8", "replace").replace("\u2581", " ").strip()

    def tokenize(self, text: str) -> list[int]:
        """Ids for a draft, as the model's tokenizer splits the text: SentencePiece BPE, whose merges come in the
        order of the pieces' ids (the decoder's own output reads back to its ids: 27 of 27 turns of the benchmark).
        A split that differs costs only draft tokens the decoder does not confirm."""
        return [i for word in text.split() for i in self._word_ids("\u2581" + word)]

    def _split_word(self, word: str) -> tuple[int, ...]:
        parts: list[bytes] = []
        for ch in word:  # characters; bytes (ids 3-258) for those that are no piece
            b = ch.encode()
            parts.extend([b] if b in self.pieces else [bytes([x]) for x in b])
        while len(parts) > 1:
            merges = [(self.pieces.get(a + b, 1 << 30), i) for i, (a, b) in enumerate(pairwise(parts))]
            rank, i = min(merges)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return tuple(self.pieces[p] for p in parts)

    def _pass(self, hidden: np.ndarray, mask: np.ndarray, ids: np.ndarray, past: dict, cached: bool) -> dict:
        """One decoder run over `ids` (after the cached ones in `past`): logits of every position, and the caches."""
        feed = {
            "input_ids": ids,
            "encoder_hidden_states": hidden,
            "encoder_attention_mask": mask,
            "use_cache_branch": np.array([cached]),
        }
        feed.update(past)
        return dict(zip(self.outputs, self.decoder.run(None, feed), strict=True))

    def _step(self, hidden: np.ndarray, mask: np.ndarray, ids: np.ndarray, past: dict, cached: bool):
        out = self._pass(hidden, mask, ids, past, cached)
        return out["logits"][:, -1, :], out

    def decode(self, audio: np.ndarray) -> str:
        ids = self.decode_ids(audio)
        assert ids is not None  # None only when a stop() callback says so
        return self.text(ids)

    def decode_ids(
        self,
        audio: np.ndarray,
        prefix: list[int] | tuple[int, ...] = (),
        stop: Callable[[], bool] | None = None,
        draft: list[int] | tuple[int, ...] = (),
        keep: int = 0,
        margin: float = 0.0,
        token_logp: list[float] | None = None,
    ) -> list[int] | None:
        """Token ids of the text after `prefix`: the ids the audio's beginning was already decoded as, which
        the decoder reads instead of guessing them again (left context at the cost of one decoder pass).
        `draft`: ids the text after the prefix probably has (one beam only; the result does not depend on it).
        `keep`, `margin` (interims only: the result then depends on the draft): the draft's first `keep` ids (the
        words already shown) stay unless the decoder's own choice is more than `margin` (log-probability) likelier.
        `token_logp` (one beam only): filled with each returned id's log-probability (0 for all but the last few of a
        decoder pass: the interims need only their last words', OnnxDecoder.firm).
        None if `stop()` turned true: it is asked before the encoder and before every decoder pass."""
        if stop is not None and stop():
            return None
        audio = np.ascontiguousarray(audio, dtype=np.float32)[None, :]
        hidden = self.encoder.run(None, {"input_values": audio, "attention_mask": np.ones(audio.shape, np.int64)})[0]
        frames = hidden.shape[1]
        limit = max(MIN_TOKENS, int(np.ceil(audio.shape[1] / 16000 * TOKENS_PER_SECOND)) - len(prefix))
        empty = {
            past: np.zeros((1, self.heads, frames if ".encoder." in n else 0, self.head_dim), np.float32)
            for n, past in self.past.items()
        }
        # The decoder takes the mask of the audio samples (as the encoder does) and shrinks it to the frames itself:
        # a mask of the frames' length shrinks to 1 or 2 entries, and breaks the broadcast from 9.3 s of audio on.
        mask = np.ones((1, audio.shape[1]), np.int64)
        if self.beams == 1:
            return self._greedy(hidden, mask, [BOS, *prefix], list(draft), empty, limit, stop, keep, margin, token_logp)
        logits, out = self._step(hidden, mask, np.array([[BOS, *prefix]], np.int64), empty, cached=False)
        k = self.beams
        # Every beam row shares the audio: the encoder side is computed once and repeated, never re-gathered.
        hidden, mask = np.repeat(hidden, k, 0), np.repeat(mask, k, 0)
        cross = {self.past[n]: np.repeat(out[n], k, 0) for n in self.cross_kv}
        self_kv = {n: out[n] for n in self.self_kv}
        scores = np.zeros(1, np.float64)
        seqs: list[list[int]] = [[]]
        best: tuple[float, list[int]] | None = None  # finished hypothesis with the highest score
        for _ in range(limit):
            if stop is not None and stop():
                return None
            logp = _log_softmax(logits.astype(np.float64))
            total = scores[:, None] + logp  # (beams alive, vocabulary)
            flat = total.ravel()
            top = np.argpartition(-flat, 2 * k)[: 2 * k] if flat.size > 2 * k else np.arange(flat.size)
            top = top[np.argsort(-flat[top])]
            nxt_rows, nxt_seqs, nxt_scores = [], [], []
            for i in top:
                row, tok = divmod(int(i), logp.shape[1])
                score = float(flat[i])
                if tok == EOS:
                    if best is None or score > best[0]:
                        best = (score, seqs[row])
                    continue
                nxt_rows.append(row)
                nxt_seqs.append(seqs[row] + [tok])
                nxt_scores.append(score)
                if len(nxt_rows) == k:
                    break
            # Scores only fall as tokens are added: once a finished hypothesis beats every live one, it has won.
            if best is not None and best[0] >= nxt_scores[0]:
                break
            seqs, scores = nxt_seqs, np.array(nxt_scores)
            rows = np.array(nxt_rows)  # after the first step all are 0: one row becomes k
            past = {self.past[n]: v[rows] for n, v in self_kv.items()}
            past.update(cross)
            ids = np.array([s[-1] for s in seqs], np.int64)[:, None]
            logits, out = self._step(hidden, mask, ids, past, cached=True)
            self_kv = {n: out[n] for n in self.self_kv}
        else:
            if best is None or scores[0] > best[0]:
                best = (float(scores[0]), seqs[0])  # the cap stopped it: the best live one
        return best[1] if best is not None else []

    def _greedy(
        self,
        hidden: np.ndarray,
        mask: np.ndarray,
        head: list[int],
        draft: list[int],
        past: dict,
        limit: int,
        stop: Callable[[], bool] | None,
        keep: int = 0,
        margin: float = 0.0,
        logp: list[float] | None = None,
    ) -> list[int] | None:
        """Greedy decode after the ids `head`, checking draft tokens on the way. Each pass feeds the token just
        chosen plus the draft tokens that follow it in the draft (found by the last 1-3 chosen tokens: drafts
        skip or change words), and keeps the longest run of them that matches the decoder's own choices (or, for
        draft positions below `keep`, comes within `margin` of them)."""
        proposed = draft[: min(limit, MAX_DRAFT)]  # the first pass checks the draft's beginning already
        at = 0  # draft index of proposed[0]
        ids, cached, seq, cross = head + proposed, False, [], None
        while True:
            if stop is not None and stop():
                return None
            out = self._pass(hidden, mask, np.array([ids], np.int64), past, cached)
            if cross is None:  # the encoder side's caches, computed by the first pass
                cross = {self.past[n]: out[n] for n in self.cross_kv}
            # the positions whose logits choose the next token and then each proposed one
            logits = out["logits"][0, len(ids) - len(proposed) - 1 :]
            choices = logits.argmax(-1)
            kept = 0
            while kept < len(proposed) and (
                choices[kept] == proposed[kept]
                or (at + kept < keep and self._close(logits[kept], proposed[kept], margin))
            ):
                kept += 1
            seq += proposed[:kept]
            nxt = int(choices[kept])
            if logp is not None:  # the kept tokens' and the next one's; only the last LOGP_TAIL computed (0 before)
                lo = max(0, kept + 1 - LOGP_TAIL)
                rows = logits[lo : kept + 1]
                top = rows.max(-1)
                lse = np.log(np.exp(rows - top[:, None]).sum(-1)) + top
                chosen = [*proposed[:kept], nxt][lo:]
                logp += [0.0] * lo + [float(rows[r, t] - lse[r]) for r, t in enumerate(chosen)]
            if nxt == EOS or len(seq) >= limit:  # (proposals are capped, so seq never passes the limit)
                if logp is not None:
                    del logp[len(seq) :]
                return seq
            seq.append(nxt)
            if len(seq) >= limit:
                return seq
            # the caches up to the last kept token (the rejected draft tokens are dropped)
            upto = out[self.self_kv[0]].shape[2] - (len(proposed) - kept)
            past = {self.past[n]: out[n][:, :, :upto] for n in self.self_kv}
            past.update(cross)
            # (finals, keep=0: the lookup exactly as before, so their passes and float rounding are unchanged)
            at, proposed = self._lookup(draft, seq, at + kept + 1 if keep else -1)
            proposed = proposed[: limit - len(seq)]
            ids, cached = [nxt, *proposed], True

    def firm(self, ids: list[int], logp: list[float], doubt: float) -> int:
        """How many of an interim's ids to show: all but its last two words (or parts of a hyphenated one) if each
        has a token below probability `doubt`: tiny-en reads a word the audio's end cuts off as pieces ("and rather
        a su|ck" for "selfish", "the soup pop" for "superlative"), and the next interim, with the whole word, had
        to rewrite the first piece."""
        words: list[tuple[int, float]] = []  # (index of the first id, lowest probability of its ids)
        split = True
        for i, (t, lp) in enumerate(zip(ids, logp, strict=False)):
            piece = self.tokens[t].decode("utf-8", "replace") if t >= FIRST_TEXT_TOKEN else ""
            if not any(ch.isalnum() for ch in piece):
                split = split or "-" in piece
                continue
            if split or piece.startswith("\u2581"):
                words.append((i, float(np.exp(lp))))
            else:
                words[-1] = (words[-1][0], min(words[-1][1], float(np.exp(lp))))
            split = False
        if doubt > 0 and len(words) >= 3 and words[-1][1] < doubt and words[-2][1] < doubt:
            return words[-2][0]
        return len(ids)

    @staticmethod
    def _close(logits: np.ndarray, token: int, margin: float) -> bool:
        """The token's log-probability is at most `margin` below the likeliest token's."""
        return margin > 0 and float(logits.max() - logits[token]) <= margin  # (logits differ as log-probs do)

    @staticmethod
    def _lookup(draft: list[int], seq: list[int], expect: int = -1) -> tuple[int, list[int]]:
        """The draft tokens after the last place where the draft has seq's last 3 (or 2, or 1) tokens, and their
        draft index; a match that ends at `expect` (the draft followed in order, or with one token replaced) comes
        first."""
        for n in (3, 2, 1):
            if len(seq) < n:
                continue
            tail = seq[-n:]
            if n <= expect <= len(draft) and draft[expect - n : expect] == tail:
                return expect, draft[expect : expect + MAX_DRAFT]
            if n == 1 and 2 <= expect <= len(draft) and len(seq) >= 2 and draft[expect - 2] == seq[-2]:
                return expect, draft[expect : expect + MAX_DRAFT]  # the decoder replaced one draft token
            for j in range(len(draft) - n, -1, -1):
                if draft[j : j + n] == tail:
                    return j + n, draft[j + n : j + n + MAX_DRAFT]
        return 0, []


# -- sentence ends (issue 22): what the decoder says follows a text's last word --
END_MARK, SOFT_MARK = 1, 2  # token classes: starts with . ? ! / with , ; : -


def _classes(tokens: list[bytes]) -> np.ndarray:
    kinds = np.zeros(len(tokens), np.int8)
    for i, t in enumerate(tokens):
        first = t[:1].decode("utf-8", "replace") if i >= FIRST_TEXT_TOKEN else ""
        kinds[i] = END_MARK if first in (".", "?", "!") else SOFT_MARK if first and first in ",;:-" else 0
    return kinds


class Endings:
    """What a decoder (OnnxDecoder) says about where a text ends: the log-probabilities of the token after its last
    word, on the audio as heard (no noise tail: with one, tiny-en ends nearly every text with "." because the audio
    ends; without, its ". ? !" probability separates sentence ends from pauses inside one, docs/benchmarks.md)."""

    def __init__(self, dec: OnnxDecoder):
        self.dec = dec
        self.kinds = _classes(dec.tokens)

    def marks(self, ids: list[int] | tuple[int, ...]) -> int:
        """How many of the ids at the end are a sentence mark ("." "?" "!" "..")."""
        n = 0
        while n < len(ids) and self.kinds[ids[len(ids) - 1 - n]] == END_MARK:
            n += 1
        return n

    def lead(self, ids: list[int] | tuple[int, ...]) -> int:
        """How many of the first ids are punctuation (a text decoded after a context may begin with it)."""
        n = 0
        while n < len(ids) and self.kinds[ids[n]] != 0:
            n += 1
        return n

    def next_logp(
        self, audio: np.ndarray, prefix: list[int] | tuple[int, ...], ids: list[int] | tuple[int, ...]
    ) -> np.ndarray:
        """Log-probabilities (float32, the vocabulary) of the token after prefix + ids on `audio`: one encoder run and
        one decoder pass."""
        dec = self.dec
        x = np.ascontiguousarray(audio, dtype=np.float32)[None, :]
        hidden = dec.encoder.run(None, {"input_values": x, "attention_mask": np.ones(x.shape, np.int64)})[0]
        empty = {
            past: np.zeros((1, dec.heads, hidden.shape[1] if ".encoder." in n else 0, dec.head_dim), np.float32)
            for n, past in dec.past.items()
        }
        out = dec._pass(hidden, np.ones(x.shape, np.int64), np.array([[BOS, *prefix, *ids]], np.int64), empty, False)
        return _log_softmax(out["logits"][0, -1].astype(np.float64)).astype(np.float32)

    def _mass(self, logp: np.ndarray, kind: int) -> float:
        return float(np.exp(logp[self.kinds == kind].astype(np.float64)).sum())

    def sentence_end(self, logp: np.ndarray) -> float:
        """P(the next token is a sentence mark)."""
        return self._mass(logp, END_MARK)

    def likeliest_mark(self, logp: np.ndarray) -> int:
        """The sentence mark token (. ? ! ...) the decoder likes best here."""
        ids = np.flatnonzero(self.kinds == END_MARK)
        return int(ids[np.argmax(logp[ids])])

    def clause_end(self, logp: np.ndarray) -> float:
        """P(the next token is a comma, semicolon, colon or dash)."""
        return self._mass(logp, SOFT_MARK)

    def lower_next(self, logp: np.ndarray, word: str) -> bool:
        """The decoder would rather go on with `word` in lower case than as written ("Be" after "might": "be";
        "John": "John"), by the first token of each."""
        low = word[:1].lower() + word[1:]
        if low == word:
            return False
        a, b = self.dec.tokenize(low), self.dec.tokenize(word)
        return bool(a and b and logp[a[0]] >= logp[b[0]])
