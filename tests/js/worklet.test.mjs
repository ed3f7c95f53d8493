// Runs static/worklet.js under stand-ins for the AudioWorklet globals: 128-sample render quanta at
// 44.1 kHz in, 2,560-byte frames out, and the 'flush' reply carries the remainder so nothing is lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';

const registered = {};
globalThis.sampleRate = 44100;
globalThis.AudioWorkletProcessor = class {
  constructor() {
    this.port = { posted: [], onmessage: null, postMessage(msg) { this.posted.push(msg); } };
  }
};
globalThis.registerProcessor = (name, cls) => { registered[name] = cls; };
await import('../../static/worklet.js');

test('worklet registers pcm-capture and emits 80 ms frames plus a flushed remainder', () => {
  const Proc = registered['pcm-capture'];
  assert.ok(Proc);
  const node = new Proc({ processorOptions: {} });
  const quanta = 1000; // 128,000 samples = 2.902 s at 44.1 kHz
  for (let q = 0; q < quanta; q++) {
    const block = Float32Array.from({ length: 128 }, (_, i) => 0.3 * Math.sin((2 * Math.PI * 440 * (q * 128 + i)) / 44100));
    const stereo = [block, block]; // the fake device delivers two channels; the worklet averages them
    assert.equal(node.process([stereo]), true);
  }
  assert.equal(node.process([[]]), true); // unconnected input is fine
  node.port.onmessage({ data: 'flush' });
  assert.equal(node.process([[new Float32Array(128)]]), false); // quiet after the flush

  const posted = node.port.posted;
  const frames = posted.filter((m) => m.type === 'frame');
  const levels = posted.filter((m) => m.type === 'level');
  const flushed = posted.filter((m) => m.type === 'flushed');
  assert.equal(flushed.length, 1);
  assert.equal(posted.at(-1).type, 'flushed');
  for (const f of frames) assert.equal(f.buffer.byteLength, 2560);
  const totalSamples = (frames.length * 2560 + (flushed[0].buffer?.byteLength ?? 0)) / 2;
  const expected = (quanta * 128 * 16000) / 44100;
  // Everything in (within 1 sample), plus the filter tail drained on flush (67 input samples ~ 25 outputs).
  assert.ok(totalSamples - expected >= 23 && totalSamples - expected <= 26, `${totalSamples} vs ${expected}`);
  // ~10 level messages per second of audio, with a sane peak for a 0.3 amplitude tone.
  assert.ok(levels.length >= 28 && levels.length <= 30, `${levels.length} level messages`);
  assert.ok(Math.abs(levels[5].peak - 0.3) < 0.01);
});
