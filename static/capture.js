// Microphone -> AudioWorklet (static/worklet.js) -> 16 kHz Int16 frames handed to onFrame.

// Browser voice processing (echo cancellation, noise suppression, auto gain) is off unless asked for:
// it changes the waveform recognizers were trained on, and AGC pumps the level.
export function audioConstraints({ deviceId = '', processing = false } = {}) {
  const audio = {
    channelCount: 1,
    echoCancellation: processing,
    noiseSuppression: processing,
    autoGainControl: processing,
  };
  if (deviceId) audio.deviceId = { exact: deviceId };
  return { audio, video: false };
}

// Resolves once audio flows. Returns {sampleRate, deviceId, stopTracks(), finish()}, where finish() asks
// the worklet for its partial last frame, resolves with it (ArrayBuffer|null) and closes the context.
export async function startCapture({ deviceId, processing, onFrame, onLevel, workletUrl }) {
  const stream = await navigator.mediaDevices.getUserMedia(audioConstraints({ deviceId, processing }));
  const stopTracks = () => stream.getTracks().forEach((t) => t.stop());
  let ctx;
  try {
    // No forced sampleRate: Firefox refuses to connect a mic to a context at another rate, and the
    // worklet resamples from whatever the real rate is (44100 in headless Chromium, often 48000).
    ctx = new AudioContext({ latencyHint: 'interactive' });
    await ctx.audioWorklet.addModule(workletUrl);
    if (ctx.state === 'suspended') await ctx.resume();
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, 'pcm-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: 'explicit',
      channelInterpretation: 'speakers',
      processorOptions: { outRate: 16000, frameSamples: 1280, levelHz: 10 },
    });
    // A silent path to the destination keeps the node pulled in every browser.
    const mute = new GainNode(ctx, { gain: 0 });
    source.connect(node).connect(mute).connect(ctx.destination);

    let onFlushed = null;
    node.port.onmessage = ({ data }) => {
      if (data.type === 'frame') onFrame(data.buffer);
      else if (data.type === 'level') onLevel?.(data);
      else if (data.type === 'flushed') onFlushed?.(data.buffer);
    };

    const track = stream.getAudioTracks()[0];
    let finished = null;
    const finish = () => {
      finished ??= (async () => {
        stopTracks();
        const rest = await new Promise((resolve) => {
          onFlushed = resolve;
          node.port.postMessage('flush');
          setTimeout(() => resolve(null), 1000); // a closed or stalled context never answers
        });
        source.disconnect();
        node.disconnect();
        await ctx.close().catch(() => {});
        return rest;
      })();
      return finished;
    };
    return { sampleRate: ctx.sampleRate, deviceId: track?.getSettings().deviceId ?? '', stopTracks, finish, track };
  } catch (err) {
    stopTracks();
    ctx?.close().catch(() => {});
    throw err;
  }
}

// Audio inputs for the selector; labels are empty until the page has had microphone permission.
export async function listMicrophones() {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices
    .filter((d) => d.kind === 'audioinput' && d.deviceId !== 'default' && d.deviceId !== 'communications')
    .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `Microphone ${i + 1}` }));
}

// A user-facing explanation of a getUserMedia / AudioContext failure.
export function describeCaptureError(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was denied. Allow the microphone for this site (the icon in the address bar) and press Start again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Connect a microphone, pick it in the list, and press Start again.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The microphone could not be opened; another application may be using it.';
    default:
      return `Could not start the microphone: ${err?.message || err}`;
  }
}
