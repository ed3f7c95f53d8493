// Unit tests for the pure DSP in static/pcm.js (node:test only; runs on node 18+ without npm).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FRAME_SAMPLES, Framer, LevelMeter, Resampler, designLowpass, floatToInt16, int16ToLEBuffer, levelToMeter,
} from '../../static/pcm.js';

const tone = (freq, rate, n, amp = 0.5) =>
  Float32Array.from({ length: n }, (_, i) => amp * Math.sin((2 * Math.PI * freq * i) / rate));

// Feed `input` through the resampler in render-quantum-sized blocks, like the worklet does.
function resampleBlocks(rs, input, block = 128) {
  const parts = [];
  for (let i = 0; i < input.length; i += block) parts.push(rs.process(input.subarray(i, i + block)));
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

const rms = (x) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);

// Frequency from interpolated upward zero crossings.
function zeroCrossFreq(x, rate) {
  const crossings = [];
  for (let i = 1; i < x.length; i++) {
    if (x[i - 1] < 0 && x[i] >= 0) crossings.push(i - 1 + -x[i - 1] / (x[i] - x[i - 1]));
  }
  const periods = crossings.length - 1;
  return (periods * rate) / (crossings[crossings.length - 1] - crossings[0]);
}

// Strongest bin of a DFT scan between lo and hi Hz (step Hz), as a cross-check of the zero crossings.
function dftPeak(x, rate, lo, hi, step) {
  let best = lo, bestPow = -1;
  for (let f = lo; f <= hi; f += step) {
    let re = 0, im = 0;
    const w = (2 * Math.PI * f) / rate;
    for (let i = 0; i < x.length; i++) { re += x[i] * Math.cos(w * i); im -= x[i] * Math.sin(w * i); }
    const pow = re * re + im * im;
    if (pow > bestPow) { bestPow = pow; best = f; }
  }
  return best;
}

test('designLowpass: odd length, unity DC gain, symmetric', () => {
  const h = designLowpass(101, 7600, 48000);
  assert.equal(h.length, 101);
  assert.ok(Math.abs(h.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  for (let i = 0; i < 50; i++) assert.ok(Math.abs(h[i] - h[100 - i]) < 1e-15);
  assert.throws(() => designLowpass(31, 30000, 48000), RangeError);
});

for (const inRate of [44100, 48000]) {
  test(`${inRate} Hz -> 16 kHz: output length over a long signal is within 1 sample`, () => {
    for (const seconds of [30, 10.37]) {
      const n = Math.round(seconds * inRate);
      const rs = new Resampler(inRate, 16000);
      const out = resampleBlocks(rs, new Float32Array(n));
      assert.ok(Math.abs(out.length - (n * 16000) / inRate) <= 1, `${out.length} vs ${(n * 16000) / inRate}`);
    }
  });

  test(`${inRate} Hz -> 16 kHz: a 1 kHz tone stays at 1 kHz with unity gain`, () => {
    const out = resampleBlocks(new Resampler(inRate, 16000), tone(1000, inRate, inRate * 2));
    const steady = out.subarray(1600, 30400); // skip the filter's start-up
    const zc = zeroCrossFreq(steady, 16000);
    assert.ok(Math.abs(zc - 1000) <= 5, `zero crossings: ${zc} Hz`);
    const peak = dftPeak(steady.subarray(0, 16000), 16000, 950, 1050, 0.5);
    assert.ok(Math.abs(peak - 1000) <= 5, `DFT peak: ${peak} Hz`);
    const gainDb = 20 * Math.log10(rms(steady) / (0.5 / Math.SQRT2));
    assert.ok(Math.abs(gainDb) < 0.1, `gain ${gainDb} dB`);
  });

  for (const f of [10000, 12000]) {
    test(`${inRate} Hz -> 16 kHz: a ${f / 1000} kHz tone is attenuated by at least 40 dB`, () => {
      const out = resampleBlocks(new Resampler(inRate, 16000), tone(f, inRate, inRate));
      const steady = out.subarray(800);
      const db = 20 * Math.log10(rms(steady) / (0.5 / Math.SQRT2));
      assert.ok(db <= -40, `only ${db.toFixed(1)} dB`);
    });
  }

  test(`${inRate} Hz: block size does not change the output (state carries across blocks)`, () => {
    const input = tone(440, inRate, 20000);
    const whole = new Resampler(inRate, 16000).process(input);
    const rs = new Resampler(inRate, 16000);
    const parts = [];
    for (let i = 0, b = 1; i < input.length; i += b, b = (b * 7 + 3) % 500) parts.push(...rs.process(input.subarray(i, i + b)));
    assert.equal(parts.length, whole.length);
    for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(parts[i] - whole[i]) < 1e-6);
  });
}

test('Resampler: same rate is a pass-through; drain pushes out the delayed tail', () => {
  const x = tone(1000, 16000, 1000);
  assert.deepEqual(resampleBlocks(new Resampler(16000, 16000), x), x);
  const rs = new Resampler(48000, 16000);
  const n = 4800;
  const main = resampleBlocks(rs, new Float32Array(n).fill(0.25));
  const tail = rs.drain();
  assert.equal(main.length, 1600);
  assert.equal(tail.length, Math.ceil(Math.ceil(rs.delay) / 3));
  // The last input sample is now fully through the filter: the final outputs hold the plateau level.
  assert.ok(Math.abs(tail[0] - 0.25) < 1e-3);
});

test('floatToInt16 clips at +-1 and scales asymmetrically', () => {
  const out = floatToInt16(Float32Array.from([1.5, -1.5, 1, -1, 0, 0.5, -0.5, NaN, Infinity, -Infinity]));
  assert.deepEqual([...out], [32767, -32768, 32767, -32768, 0, 16384, -16384, 0, 32767, -32768]);
});

test('int16ToLEBuffer writes little-endian bytes', () => {
  const bytes = new Uint8Array(int16ToLEBuffer(Int16Array.from([1, -2, 0x1234])));
  assert.deepEqual([...bytes], [0x01, 0x00, 0xfe, 0xff, 0x34, 0x12]);
  const sub = Int16Array.from([9, 7, 5]).subarray(1); // a view must not leak its neighbours
  assert.equal(int16ToLEBuffer(sub).byteLength, 4);
});

test('Framer: exact 1280-sample frames, nothing lost or duplicated across odd block sizes, flush remainder', () => {
  assert.equal(FRAME_SAMPLES, 1280);
  const framer = new Framer(FRAME_SAMPLES);
  const total = 1280 * 37 + 555;
  const src = Int16Array.from({ length: total }, (_, i) => (i * 31) % 65536 - 32768);
  const got = [];
  let i = 0;
  for (const size of [128, 1, 1279, 1280, 1281, 3000, 128]) {
    for (let k = 0; k < 3 && i < total; k++, i += size) {
      for (const f of framer.push(src.subarray(i, i + size))) { assert.equal(f.length, 1280); got.push(f); }
    }
  }
  while (i < total) {
    for (const f of framer.push(src.subarray(i, i + 128))) { assert.equal(f.length, 1280); got.push(f); }
    i += 128;
  }
  assert.equal(got.length, 37);
  const rest = framer.flush();
  assert.equal(rest.length, 555);
  assert.equal(framer.flush(), null);
  const joined = new Int16Array(total);
  let o = 0;
  for (const f of [...got, rest]) { joined.set(f, o); o += f.length; }
  assert.deepEqual(joined, src);
  assert.equal(int16ToLEBuffer(got[0]).byteLength, 2560); // 80 ms of 16 kHz Int16
  assert.notEqual(got[0].buffer, got[1].buffer); // each frame transferable on its own
});

test('LevelMeter and levelToMeter', () => {
  const m = new LevelMeter();
  m.push(Float32Array.from([0.5, -0.5, 0.5, -0.5]));
  m.push(Float32Array.from([-0.9]));
  const { rms: r, peak } = m.take();
  assert.ok(Math.abs(peak - 0.9) < 1e-6);
  assert.ok(Math.abs(r - Math.sqrt((4 * 0.25 + 0.81) / 5)) < 1e-6);
  assert.deepEqual(m.take(), { rms: 0, peak: 0 });
  assert.equal(levelToMeter(1), 1);
  assert.equal(levelToMeter(0), 0);
  assert.ok(Math.abs(levelToMeter(0.001) - 0) < 1e-9);
  assert.ok(Math.abs(levelToMeter(Math.pow(10, -30 / 20)) - 0.5) < 1e-9);
});
