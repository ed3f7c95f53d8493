"""The signal parts of a stream: resampling to 16 kHz and the energy endpointer that ends turns."""

from __future__ import annotations

import numpy as np

RATE = 16000
FRAME = 320  # 20 ms endpointer frames


class Resampler:
    """Cheap streaming resampler to 16 kHz: windowed-sinc low-pass (when downsampling) + linear interpolation."""

    def __init__(self, rate: int):
        self.step = rate / RATE
        self.pos = 0.0
        self.buf = np.zeros(0, np.float32)
        self.taps = None
        if rate > RATE:
            n = 31
            cutoff = 0.45 / self.step  # cycles per input sample
            k = np.arange(n) - (n - 1) / 2
            taps = 2 * cutoff * np.sinc(2 * cutoff * k) * np.hamming(n)
            self.taps = (taps / taps.sum()).astype(np.float32)
            self.hist = np.zeros(n - 1, np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.taps is not None:
            xx = np.concatenate([self.hist, x])
            self.hist = xx[-(len(self.taps) - 1) :]
            x = np.convolve(xx, self.taps, mode="valid").astype(np.float32)
        buf = np.concatenate([self.buf, x])
        if len(buf) < 2:
            self.buf = buf
            return np.zeros(0, np.float32)
        count = int(np.floor((len(buf) - 1 - self.pos) / self.step)) + 1
        if count <= 0:
            self.buf = buf
            return np.zeros(0, np.float32)
        where = self.pos + np.arange(count) * self.step
        out = np.interp(where, np.arange(len(buf)), buf).astype(np.float32)
        nxt = self.pos + count * self.step
        drop = min(int(nxt), len(buf) - 1)
        self.buf, self.pos = buf[drop:], nxt - drop
        return out


class Endpointer:
    """Energy endpointer on 20 ms frames. The noise floor is a low percentile of the last 3 s of frame energies
    (an instant-fall floor would jump up to the level of short pauses inside speech); onset/hold hysteresis."""

    ONSET_DB = 15.0  # above the floor: a speech frame that can open a turn
    HOLD_DB = 10.0  # above the floor: still speech inside a turn
    MIN_DB = -60.0  # dBFS: never speech below this
    PEAK_DB = 20.0
    HISTORY = 150  # frames (3 s) for the floor: a longer one lags behind a louder background
    # The background can rise within a session (another room, a fan, a new microphone): the percentile floor takes
    # seconds to follow, and meanwhile the new noise counts as speech, so the turn does not end. Steady sound
    # (STEADY frames within STEADY_DB of each other) far below the turn's loudest frame is taken as the new floor.
    BLIP = True  # a single loud frame inside a pause does not end the pause...
    BLIP_WAIT = 6  # ... but the turn does not end in the next frames (speech may go on: "four (k)queen")
    STEADY = 15  # frames (0.3 s)
    STEADY_DB = 6.0
    STEADY_BELOW_PEAK = 20.0

    def __init__(self):
        self.hist = np.full(self.HISTORY, np.nan)
        self.n = 0
        self.rest = np.zeros(0, np.float32)
        self.pos = 0  # samples consumed
        self.speech_frames = 0  # onset frames since reset
        self.silence = 0  # samples of silence since the last speech frame
        self.onset: int | None = None  # sample index of the first speech frame since reset
        self.last_speech = 0  # sample index just after the last speech frame
        self.peak = -200.0  # loudest frame since reset, dB over the floor
        self.peak_abs = -200.0  # loudest frame since reset, dBFS
        self.recent: list[float] = []  # the last STEADY frame energies
        self.blip = False  # the last frame was a lone loud frame after a pause
        self.last_blip = -RATE

    def reset(self) -> None:
        self.speech_frames, self.onset, self.peak, self.peak_abs = 0, None, -200.0, -200.0

    @property
    def in_turn(self) -> bool:
        # 100 ms of speech, and a peak 20 dB over the floor: breaths and room sound after a sentence are not a turn
        return self.speech_frames >= 5 and self.peak >= self.PEAK_DB

    def ended(self, seconds: float) -> bool:
        """At least `seconds` of silence after the speech, and no lone loud frame just now."""
        return self.silence >= seconds * RATE and self.pos - self.last_blip >= self.BLIP_WAIT * FRAME

    def process(self, x: np.ndarray) -> bool:
        """Consume samples; returns True if a speech frame was seen."""
        x = np.concatenate([self.rest, x]) if len(self.rest) else x
        n = len(x) // FRAME
        self.rest = x[n * FRAME :].copy()
        if n == 0:
            return False
        db = 10 * np.log10(np.mean(x[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1) + 1e-10)
        for v in db:
            self.hist[self.n % self.HISTORY] = v
            self.n += 1
        floor = max(float(np.nanpercentile(self.hist, 3)), -80.0)
        spoke = False
        for v in db:
            self.recent.append(float(v))
            del self.recent[: -self.STEADY]
            if self.in_turn and self.silence == 0 and len(self.recent) == self.STEADY:
                lo, hi = min(self.recent), max(self.recent)
                if (
                    hi - lo < self.STEADY_DB
                    and hi < self.peak_abs - self.STEADY_BELOW_PEAK
                    and lo > floor + self.HOLD_DB
                ):
                    # the noise floor went up: this steady sound is the background, and speech ended before it
                    floor = lo
                    self.hist[:] = np.nan
                    self.hist[: self.STEADY] = self.recent
                    self.n = self.STEADY
                    self.silence = (self.STEADY - 1) * FRAME
                    self.last_speech = self.pos - (self.STEADY - 1) * FRAME
            onset = v > max(floor + self.ONSET_DB, self.MIN_DB)
            hold = self.in_turn and v > max(floor + self.HOLD_DB, self.MIN_DB)
            self.pos += FRAME
            if onset:
                self.speech_frames += 1
                self.peak = max(self.peak, v - floor)
                self.peak_abs = max(self.peak_abs, float(v))
                if self.onset is None:
                    self.onset = self.pos - FRAME
            if (onset or hold) and self.in_turn and self.silence > 0 and not self.blip and self.BLIP:
                # one loud frame in a pause (a click, a breath): speech only if the next one is loud too
                self.blip, self.last_blip = True, self.pos
                self.silence += FRAME
            elif onset or hold:
                self.blip = False
                self.silence, self.last_speech, spoke = 0, self.pos, True
            else:
                self.blip = False
                self.silence += FRAME
                if not self.in_turn and self.silence >= 0.3 * RATE:
                    self.reset()  # a click or a breath, not the start of a turn
        return spoke
