"""Real speech for tests and the benchmark: pocketsphinx-testdata clips with their own references, a WER
scorer, and an espeak-ng helper for browser tests. Importable from tests/ and (via sys.path) from bench/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path("/usr/share/pocketsphinx/test/data")
CACHE = Path(__file__).resolve().parent / ".artifacts" / "speech"
RATE = 16000


@dataclass(frozen=True)
class Clip:
    name: str
    ref: str
    pcm: bytes  # 16 kHz s16le mono
    text: str = ""  # the reference as printed, with its punctuation (PUNCTUATED), if known

    @property
    def duration(self) -> float:
        return len(self.pcm) / (2 * RATE)

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(self.pcm, np.int16)


def _strip_sphinx(line: str) -> tuple[str, str]:
    """'<s> ten of clubs </s> (001)' -> ('001', 'ten of clubs')."""
    m = re.match(r"\s*(.*?)\s*\(([^()]+)\)\s*$", line)
    if not m:
        raise ValueError(f"unexpected transcription line: {line!r}")
    text = re.sub(r"</?s>", " ", m.group(1))
    return m.group(2), " ".join(text.split())


def _read_pcm(path: Path, raw: bool = False) -> bytes:
    """Return 16 kHz s16 mono PCM; files in another format are converted once by sox into the cache."""
    if raw:  # headerless: pocketsphinx's .raw files are 16 kHz s16le mono
        return path.read_bytes()
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (RATE, 2, 1):
            return w.readframes(w.getnframes())
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / (path.stem + ".16k.wav")
    if not out.exists():
        subprocess.run(
            ["sox", str(path), "-r", str(RATE), "-b", "16", "-c", "1", "-e", "signed-integer", str(out)],
            check=True,
            capture_output=True,
        )
    with wave.open(str(out), "rb") as w:
        return w.readframes(w.getnframes())


def real_clips() -> list[Clip]:
    """The 11 real recordings (docs/benchmarks.md, the embedded recognizer's real-speech set): 5 LibriVox, 5 cards, goforward. 96 words, ~37 s."""
    clips = []
    for line in (DATA / "librivox" / "transcription").read_text().splitlines():
        if line.strip():
            name, ref = _strip_sphinx(line)
            short = "lv-" + name.rsplit("-", 1)[-1]
            clips.append(Clip(short, ref, _read_pcm(DATA / "librivox" / f"{name}.wav"), PUNCTUATED.get(short, "")))
    for line in (DATA / "cards" / "cards.transcription").read_text().splitlines():
        if line.strip():
            name, ref = _strip_sphinx(line)
            clips.append(Clip(f"cards-{name}", ref, _read_pcm(DATA / "cards" / f"{name}.wav")))
    # goforward's reference is its grammar (goforward.gram: "go forward ten meters").
    gram = (DATA / "goforward.gram").read_text()
    ref = re.search(r"=\s*(.*?);", gram).group(1)
    clips.append(Clip("goforward", ref, _read_pcm(DATA / "goforward.raw", raw=True)))
    return clips


# The opening sentence of Dickens' "A Tale of Two Cities" (1859, public domain), as printed; moonshine-voice 0.1.0
# ships a 44 s reading of it (assets/two_cities.wav).
TWO_CITIES = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing "
    "before us, we were all going direct to Heaven, we were all going direct the other way - in short, the period "
    "was so far like the present period, that some of its noisiest authorities insisted on its being received, for "
    "good or for evil, in the superlative degree of comparison only."
)


# The LibriVox clips as Jane Austen printed them ("Sense and Sensibility", ch. 1-2, public domain), in the words the
# reader said (the transcription's "a more a amiable"): the benchmark's reference for sentence ends.
PUNCTUATED = {
    "lv-0870": "And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power "
    "to do for them.",
    "lv-0880": "He was not an ill-disposed young man,",
    "lv-0890": "unless to be rather cold-hearted and rather selfish is to be ill-disposed:",
    "lv-0920": "Had he married a more a amiable woman, he might have been made still more respectable than he was:",
    "lv-0930": "he might even have been made amiable himself;",
}


def long_clips() -> list[Clip]:
    """Longer real speech with a known text: the public-domain reading bundled in the moonshine-voice wheel."""
    import moonshine_voice

    wav = Path(moonshine_voice.__file__).parent / "assets" / "two_cities.wav"
    return [Clip("two-cities", TWO_CITIES, _read_pcm(wav), TWO_CITIES)]


def clip(name: str) -> Clip:
    for c in real_clips():
        if c.name == name:
            return c
    raise KeyError(name)


# ---- WER ----------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split()
)
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _spell(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _spell(n % 100))
    if n < 1_000_000:
        return _spell(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + _spell(n % 1000))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize(text: str) -> list[str]:
    t = text.lower().replace("mr.", "mister").replace("mrs.", "missus")
    t = re.sub(r"(\d+):(\d\d)", lambda m: f"{m.group(1)} {'' if m.group(2) == '00' else m.group(2)}", t)
    t = re.sub(r"\d+", lambda m: " " + _spell(int(m.group(0))) + " ", t)
    t = t.replace("-", " ")
    t = re.sub(r"\bmetres?\b", lambda m: m.group(0).replace("metre", "meter"), t)  # spelling, not recognition
    t = re.sub(r"[^a-z' ]+", " ", t).replace("'", "")
    return t.split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def _marked(text: str) -> list[tuple[str, str]]:
    """Normalized words, each with what follows it in `text`: "end" (. ? !), "soft" (, ; : or a dash), "" (nothing),
    or "clip" for the last word (the clip ends there: a full stop or none are both fine)."""
    out: list[tuple[str, str]] = []
    for raw in text.split():
        words = normalize(raw)
        if not words:
            if out and raw.strip() in ("-", "--", "\u2014"):
                out[-1] = (out[-1][0], out[-1][1] or "soft")
            continue
        mark = (
            "end"
            if raw.rstrip("\"')")[-1:] in ".?!" and raw.lower() not in ("mr.", "mrs.")
            else ("soft" if raw[-1:] in ",;:-\u2014" else "")
        )
        out += [(w, "") for w in words[:-1]] + [(words[-1], mark)]
    return out


def sentence_ends(printed: str, hyp: str) -> tuple[int, int, int, int]:
    """(spurious, of them at a comma / colon / semicolon / dash, missed, reference words). After aligning the words
    (difflib), spurious: a hypothesis word followed by . ? ! where the printed text has no sentence end; missed: a
    printed sentence end where the hypothesis has none. The printed text's last word is not counted (the clip ends)."""
    import difflib

    ref, out = _marked(printed), _marked(hyp)
    if ref:
        ref[-1] = (ref[-1][0], "clip")
    spurious = soft = missed = 0
    m = difflib.SequenceMatcher(None, [w for w, _ in ref], [w for w, _ in out], autojunk=False)
    for a, b, n in m.get_matching_blocks():
        for k in range(n):
            r, h = ref[a + k][1], out[b + k][1]
            if h == "end" and r in ("", "soft"):
                spurious += 1
                soft += r == "soft"
            missed += r == "end" and h != "end"
    return spurious, soft, missed, len(ref)


def wer(ref: str, hyp: str) -> float:
    r = normalize(ref)
    return edit_distance(r, normalize(hyp)) / max(1, len(r))


# ---- synthetic speech for browser tests --------------------------------------------------------


def espeak_wav(text: str, path: str | Path, rate: int = 150, sample_rate: int = RATE, voice: str = "en-us") -> Path:
    """Speak `text` with espeak-ng into a 16-bit mono WAV at sample_rate, with 0.5 s of silence before and 1 s after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".espeak.wav")
    espeak = shutil.which("espeak-ng") or "espeak-ng"
    subprocess.run([espeak, "-v", voice, "-s", str(rate), "-w", str(tmp), text], check=True, capture_output=True)
    subprocess.run(
        [
            "sox",
            str(tmp),
            "-r",
            str(sample_rate),
            "-b",
            "16",
            "-c",
            "1",
            "-e",
            "signed-integer",
            str(path),
            "pad",
            "0.5",
            "1.0",
        ],
        check=True,
        capture_output=True,
    )
    tmp.unlink(missing_ok=True)
    return path


# ---- envelope ----------------------------------------------------------------------------------


def _envelope_db(pcm: bytes, frame: float = 0.02) -> np.ndarray:
    x = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
    n = int(RATE * frame)
    frames = x[: len(x) // n * n].reshape(-1, n).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)


def noise_floor_db(pcm: bytes) -> float:
    """Background level of a clip (dBFS): the 10th percentile of its 20 ms frame energies."""
    return float(np.percentile(_envelope_db(pcm), 10))


def speech_bounds(
    pcm: bytes, frame: float = 0.02, margin_db: float = 15.0, min_sound: float = 0.0
) -> tuple[float, float]:
    """(onset, end) of speech in seconds from a 20 ms energy envelope: first/last frame whose energy is within
    the loudest part minus 35 dB and above the clip's noise floor + margin. With min_sound, a burst of such frames
    (gaps under 0.3 s joined) counts only if it has at least that many seconds of them: a click or a breath
    well apart from the speech, before or after it, is not speech."""
    db = _envelope_db(pcm, frame)
    floor = np.percentile(db, 10)
    thr = max(floor + margin_db, np.max(db) - 35.0)
    idx = np.nonzero(db > thr)[0]
    if len(idx) == 0:
        return 0.0, len(pcm) / (2 * RATE)
    if min_sound > 0:
        bursts = np.split(idx, np.nonzero(np.diff(idx) * frame >= 0.3)[0] + 1)
        kept = [b for b in bursts if len(b) * frame >= min_sound] or bursts
        return float(kept[0][0] * frame), float((kept[-1][-1] + 1) * frame)
    return float(idx[0] * frame), float((idx[-1] + 1) * frame)


def endpointer_turns(pcm: bytes) -> list[tuple[int, int, int]]:
    """The turns the recognizer's endpointer ends (0.2 s of silence) in 16 kHz s16 PCM, in samples:
    (start with the look-behind, where the turn ended, just after its last speech frame)."""
    from webapp.local.planner import LOOK_BEHIND
    from webapp.local.signal import FRAME, Endpointer
    from webapp.local.tuning import Tuning

    x = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768
    ep, out, floor = Endpointer(), [], 0
    for i in range(0, len(x), FRAME):
        ep.process(x[i : i + FRAME])
        if ep.in_turn and ep.ended(Tuning.end_silence):
            out.append((max(floor, ep.onset - int(LOOK_BEHIND * RATE)), ep.pos, ep.last_speech))
            floor = ep.pos
            ep.reset()
    return out


def joined(clips: list[Clip], name: str, pause: float = 0.0) -> Clip:
    """Clips trimmed to their speech (tests' speech_bounds, 0.1 s kept each side) and joined with `pause` seconds
    of their own background between them: one long turn without a pause that ends it (the 5 LibriVox clips are
    consecutive sentences of one reading)."""
    parts = []
    for i, c in enumerate(clips):
        on, end = speech_bounds(c.pcm, min_sound=0.1)
        a, b = max(0, int((on - 0.1) * RATE)), min(len(c.pcm) // 2, int((end + 0.1) * RATE))
        parts.append(c.pcm[2 * a : 2 * b])
        if i < len(clips) - 1:
            parts.append(
                np.random.default_rng(i)
                .normal(0, 10 ** (noise_floor_db(c.pcm) / 20) * 32768, int(pause * RATE))
                .astype("<i2")
                .tobytes()
            )
    text = " ".join(c.text for c in clips) if all(c.text for c in clips) else ""
    return Clip(name, " ".join(c.ref for c in clips), b"".join(parts), text)
