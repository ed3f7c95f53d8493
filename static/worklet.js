// AudioWorklet: mic audio at the context's real rate -> 16 kHz Int16 LE mono, posted as 80 ms frames.
// Messages to the page: {type:'frame', buffer} (transferred), {type:'level', rms, peak} about 10 times a
// second, and {type:'flushed', buffer|null} in reply to the page's 'flush' (after which it goes quiet).
import { FRAME_SAMPLES, Framer, LevelMeter, OUT_RATE, Resampler, floatToInt16, int16ToLEBuffer } from './pcm.js';

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options?.processorOptions ?? {};
    // `sampleRate` is the AudioWorkletGlobalScope's real rate (44100 in headless Chromium, often 48000).
    this.resampler = new Resampler(sampleRate, opts.outRate ?? OUT_RATE);
    this.framer = new Framer(opts.frameSamples ?? FRAME_SAMPLES);
    this.meter = new LevelMeter();
    this.levelEvery = Math.round(sampleRate / (opts.levelHz ?? 10));
    this.done = false;
    this.port.onmessage = (e) => {
      if (e.data === 'flush') this.flush();
    };
  }

  flush() {
    if (this.done) return;
    this.done = true;
    for (const frame of this.framer.push(floatToInt16(this.resampler.drain()))) this.send(frame);
    const rest = this.framer.flush();
    const buffer = rest ? int16ToLEBuffer(rest) : null;
    this.port.postMessage({ type: 'flushed', buffer }, buffer ? [buffer] : []);
  }

  send(frame) {
    const buffer = int16ToLEBuffer(frame);
    this.port.postMessage({ type: 'frame', buffer }, [buffer]);
  }

  process(inputs) {
    if (this.done) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // not connected yet
    let mono = channels[0];
    if (channels.length > 1) {
      // Down-mix by averaging; the node asks for mono, but don't rely on every browser honouring it.
      mono = new Float32Array(mono.length);
      for (const ch of channels) for (let i = 0; i < mono.length; i++) mono[i] += ch[i] / channels.length;
    }
    this.meter.push(mono);
    if (this.meter.count >= this.levelEvery) this.port.postMessage({ type: 'level', ...this.meter.take() });
    for (const frame of this.framer.push(floatToInt16(this.resampler.process(mono)))) this.send(frame);
    return true;
  }
}

registerProcessor('pcm-capture', PcmCapture);
