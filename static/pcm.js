// Pure DSP for the capture path: low-pass + resample to 16 kHz, Int16 conversion, fixed-size framing.
// No browser globals here, so the same module runs in the AudioWorklet and under `node --test`.

export const OUT_RATE = 16000;
export const FRAME_SAMPLES = 1280; // 80 ms at 16 kHz = 2,560 bytes

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

// Blackman-windowed sinc low-pass with unity DC gain. `taps` should be odd so the centre is a tap.
// Blackman gives ~74 dB stopband; the transition is ~5.5 * rate / taps wide.
export function designLowpass(taps, cutoffHz, rate) {
  if (!(taps >= 1) || !(cutoffHz > 0) || !(cutoffHz < rate / 2)) throw new RangeError('bad filter spec');
  const h = new Float64Array(taps);
  const fc = cutoffHz / rate; // cycles per sample
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const w = taps === 1 ? 1
      : 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = 2 * fc * sinc(2 * fc * (i - mid)) * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i++) h[i] /= sum;
  return h;
}

// Streaming band-limited resampler (polyphase windowed sinc, interpolated between phases).
// Output sample m sits at input time m * inRate / outRate, delayed by (taps - 1) / 2 input samples;
// positions are tracked as exact integers, so the output count never drifts over long streams.
export class Resampler {
  constructor(inRate, outRate, { taps, phases = 64, cutoffHz } = {}) {
    if (!(inRate > 0 && outRate > 0) || !Number.isInteger(inRate) || !Number.isInteger(outRate)) {
      throw new RangeError('rates must be positive integers');
    }
    this.inRate = inRate;
    this.outRate = outRate;
    this.bypass = inRate === outRate;
    const g = gcd(inRate, outRate);
    this.up = outRate / g; // output step is down/up input samples
    this.down = inRate / g;
    const ratio = Math.max(1, inRate / outRate);
    // Scale the length with the ratio so the transition band stays ~1.8 kHz wide whatever the input rate.
    this.taps = taps ?? 2 * Math.ceil(24 * ratio) + 1;
    this.phases = phases;
    const cutoff = cutoffHz ?? 0.475 * Math.min(inRate, outRate); // 7.6 kHz for 16 kHz out
    // One long prototype at inRate * phases; phase p of tap j is table[j * phases + p].
    const proto = designLowpass((this.taps - 1) * phases + 1, cutoff, inRate * phases);
    this.table = new Float64Array(proto.length + phases + 1); // zero tail: the last tap may step past the end
    for (let i = 0; i < proto.length; i++) this.table[i] = proto[i] * phases;
    this.history = new Float32Array(this.taps - 1); // the previous taps - 1 input samples (zeros at start)
    this.base = -(this.taps - 1); // absolute index of history[0]
    this.next = 0; // absolute input index of the next output (integer part)
    this.num = 0; // fractional part of that position, in units of 1 / up
  }

  // Input samples of delay: feed this many zeros (see drain) to push the last real input out.
  get delay() {
    return this.bypass ? 0 : (this.taps - 1) / 2;
  }

  process(input) {
    if (this.bypass) return Float32Array.from(input);
    const { taps, phases, table, up, down } = this;
    const keep = taps - 1;
    const work = new Float32Array(keep + input.length);
    work.set(this.history);
    work.set(input, keep);
    const lastAbs = this.base + work.length - 1;
    const out = new Float32Array(Math.ceil(((input.length + 1) * up) / down) + 1);
    let n = 0;
    while (this.next <= lastAbs) {
      const pos = this.next - this.base; // index of the newest sample this output uses
      const u = (this.num * phases) / up;
      const p = Math.floor(u);
      const a = u - p;
      let acc = 0;
      for (let j = 0, k = p; j < taps; j++, k += phases) {
        const c = table[k] + a * (table[k + 1] - table[k]);
        acc += work[pos - j] * c;
      }
      out[n++] = acc;
      this.num += down;
      this.next += Math.floor(this.num / up);
      this.num %= up;
    }
    this.history = work.slice(work.length - keep);
    this.base += work.length - keep;
    return out.slice(0, n);
  }

  // Push the filter's tail out with zeros, so the last (taps - 1) / 2 input samples are not lost on stop.
  drain() {
    return this.delay ? this.process(new Float32Array(Math.ceil(this.delay))) : new Float32Array(0);
  }
}

// Float [-1, 1] -> Int16, clipped (asymmetric scale so -1 maps to -32768 and +1 to 32767).
export function floatToInt16(input) {
  const out = new Int16Array(input.length);
  for (let i = 0; i < input.length; i++) {
    let s = input[i];
    if (!(s > -1)) s = s !== s ? 0 : -1; // also maps NaN to 0
    else if (s > 1) s = 1;
    out[i] = Math.round(s < 0 ? s * 32768 : s * 32767);
  }
  return out;
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// The wire format is little-endian; typed arrays use host order, so swap only on a big-endian host.
export function int16ToLEBuffer(samples) {
  if (HOST_LITTLE_ENDIAN) {
    return samples.byteOffset === 0 && samples.byteLength === samples.buffer.byteLength
      ? samples.buffer
      : samples.slice().buffer;
  }
  const buf = new ArrayBuffer(samples.length * 2);
  const view = new DataView(buf);
  for (let i = 0; i < samples.length; i++) view.setInt16(i * 2, samples[i], true);
  return buf;
}

// Cuts a stream of Int16 blocks of any size into frames of exactly samplesPerFrame.
// Each frame owns its buffer, so it can be transferred with postMessage.
export class Framer {
  constructor(samplesPerFrame = FRAME_SAMPLES) {
    if (!(samplesPerFrame > 0)) throw new RangeError('samplesPerFrame must be positive');
    this.size = samplesPerFrame;
    this.cur = new Int16Array(samplesPerFrame);
    this.fill = 0;
  }

  push(samples) {
    const frames = [];
    let i = 0;
    while (i < samples.length) {
      const n = Math.min(this.size - this.fill, samples.length - i);
      this.cur.set(samples.subarray(i, i + n), this.fill);
      this.fill += n;
      i += n;
      if (this.fill === this.size) {
        frames.push(this.cur);
        this.cur = new Int16Array(this.size);
        this.fill = 0;
      }
    }
    return frames;
  }

  // The partial last frame (or null if empty); the framer is empty afterwards.
  flush() {
    if (!this.fill) return null;
    const rest = this.cur.slice(0, this.fill);
    this.fill = 0;
    return rest;
  }
}

// Accumulates RMS and peak over the samples seen since the last take().
export class LevelMeter {
  constructor() {
    this.reset();
  }

  reset() {
    this.sumSq = 0;
    this.peak = 0;
    this.count = 0;
  }

  push(samples) {
    let { sumSq, peak } = this;
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      sumSq += s * s;
      const a = s < 0 ? -s : s;
      if (a > peak) peak = a;
    }
    this.sumSq = sumSq;
    this.peak = peak;
    this.count += samples.length;
  }

  take() {
    const level = { rms: this.count ? Math.sqrt(this.sumSq / this.count) : 0, peak: this.peak };
    this.reset();
    return level;
  }
}

// Maps a linear level to 0..1 on a dBFS scale (-60 dB .. 0 dB), which reads better than linear.
export function levelToMeter(value, floorDb = -60) {
  if (!(value > 0)) return 0;
  const db = 20 * Math.log10(value);
  return Math.min(1, Math.max(0, (db - floorDb) / -floorDb));
}
