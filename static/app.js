// Caption Relay page: wires the microphone capture, the /ws/listen socket and the transcript view.
import { describeCaptureError, listMicrophones, startCapture } from './capture.js';
import { levelToMeter } from './pcm.js';
import { RelaySocket, listenUrl } from './socket.js';
import { Transcript, downloadName } from './transcript.js';

const $ = (id) => document.getElementById(id);
const el = {
  start: $('start'),
  stop: $('stop'),
  finalize: $('finalize'),
  mic: $('mic-select'),
  processing: $('processing-toggle'),
  level: $('level'),
  state: $('conn-state'),
  transcript: $('transcript'),
  announcer: $('announcer'),
  messages: $('messages'),
  large: $('large-toggle'),
  copy: $('copy'),
  download: $('download'),
  clear: $('clear'),
};

const CONNECT_TIMEOUT_MS = 15000; // socket not open by then: treat as a failure
const CLOSE_TIMEOUT_MS = 10000; // after CloseStream, wait this long for the server's "closed"
const MAX_MESSAGES = 500;
// Keep ?v=… on the worklet URL too, so a new release never runs an old cached worklet.
const WORKLET_URL = new URL(`./worklet.js${new URL(import.meta.url).search}`, import.meta.url).href;

// Test hooks (read by the browser tests); updated in place.
const hooks = {
  state: 'idle',
  bytesSent: 0,
  framesSent: 0,
  sampleRate: null,
  finals: [],
  lastError: null,
  messages: [],
  level: { rms: 0, peak: 0 },
  backend: document.body.dataset.backend || null,
};
window.__captionRelay = hooks;

const transcript = new Transcript();
const turnEls = new Map(); // entry key -> <p>
let session = null; // the running capture + socket, or null when idle

// ---- small UI helpers -----------------------------------------------------------------------

function setState(state) {
  hooks.state = state;
  el.state.textContent = state;
  el.state.dataset.state = state;
  const busy = session !== null;
  el.start.disabled = busy;
  el.stop.disabled = !busy || session.stopping;
  el.finalize.disabled = !busy || session.stopping || state !== 'live';
  el.mic.disabled = busy;
  el.processing.disabled = busy;
  document.body.classList.toggle('capturing', busy);
}

function showMessage(text, kind = 'error') {
  const item = document.createElement('div');
  item.className = `msg msg-${kind}`;
  const span = document.createElement('span');
  span.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'msg-dismiss';
  close.setAttribute('aria-label', 'Dismiss message');
  close.textContent = '×';
  close.addEventListener('click', () => item.remove());
  item.append(span, close);
  el.messages.append(item);
}

function clearMessages() {
  el.messages.replaceChildren();
}

function fail(code, message) {
  hooks.lastError = { code, message };
  showMessage(message);
}

function storage(key, value) {
  try {
    if (value === undefined) return localStorage.getItem(`captionRelay.${key}`);
    localStorage.setItem(`captionRelay.${key}`, value);
  } catch {
    // storage disabled (private mode, sandboxed frame): settings just aren't remembered
  }
  return null;
}

// ---- transcript view ------------------------------------------------------------------------

function render({ entry, committed }) {
  const box = el.transcript;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  let p = turnEls.get(entry.key);
  if (!p) {
    p = document.createElement('p');
    p.dataset.turn = String(entry.turn);
    turnEls.set(entry.key, p);
    box.append(p);
  }
  p.className = `turn ${entry.final ? 'final' : 'interim'}${entry.eager ? ' eager' : ''}${entry.text ? '' : ' empty'}`;
  p.textContent = entry.text;
  if (atBottom) box.scrollTop = box.scrollHeight; // follow the text unless the reader scrolled up
  if (committed && entry.text) {
    hooks.finals = transcript.finals;
    el.announcer.textContent = entry.text; // polite live region: finals only, interims would chatter
  }
}

function clearTranscript() {
  transcript.clear();
  turnEls.clear();
  el.transcript.replaceChildren();
  el.announcer.textContent = '';
  hooks.finals = [];
}

// ---- microphone list ------------------------------------------------------------------------

async function refreshMics(selected = el.mic.value || storage('mic') || '') {
  let mics = [];
  try {
    mics = await listMicrophones();
  } catch {
    // enumerateDevices unavailable: only the default entry
  }
  const options = [new Option('Default microphone', '')];
  for (const m of mics) options.push(new Option(m.label, m.deviceId));
  el.mic.replaceChildren(...options);
  el.mic.value = mics.some((m) => m.deviceId === selected) ? selected : '';
}

// ---- wake lock ------------------------------------------------------------------------------

async function lockScreen(s) {
  try {
    s.wakeLock = (await navigator.wakeLock?.request('screen')) ?? null;
  } catch {
    s.wakeLock = null; // unsupported, denied, or page hidden: captions work without it
  }
}

function unlockScreen(s) {
  s.wakeLock?.release().catch(() => {});
  s.wakeLock = null;
}

document.addEventListener('visibilitychange', () => {
  // The browser drops the lock when the tab is hidden; take it again on return.
  if (session && !session.stopping && document.visibilityState === 'visible' && (!session.wakeLock || session.wakeLock.released)) {
    lockScreen(session);
  }
});

// ---- session lifecycle ----------------------------------------------------------------------

function onServerMessage(s, msg) {
  hooks.messages.push(msg);
  if (hooks.messages.length > MAX_MESSAGES) hooks.messages.splice(0, hooks.messages.length - MAX_MESSAGES);
  if (session !== s) return;
  switch (msg.type) {
    case 'ready':
      if (!s.fatal) setState('live');
      break;
    case 'status':
      if (!s.fatal && (msg.state === 'live' || msg.state === 'reconnecting')) setState(msg.state);
      break;
    case 'transcript':
    case 'turn': {
      const change = transcript.apply(msg);
      if (change) render(change);
      break;
    }
    case 'error': {
      const wait = msg.retry_after ? ` (try again in ${Math.ceil(msg.retry_after)} s)` : '';
      fail(msg.code, `${msg.message || 'The server reported an error.'}${wait}`);
      if (!msg.retryable) {
        s.fatal = true;
        setState('error');
      }
      break;
    }
    case 'closed':
      s.closedByServer = true;
      if (!s.stopping) endCapture(s); // the server ended the session: release the mic now
      break;
    default:
      break;
  }
}

function onSocketClose(s, { code }) {
  clearTimeout(s.connectTimer);
  clearTimeout(s.closeTimer);
  if (session !== s) return;
  const cleanAfterStop = s.stopping && code === 1000; // server ended without a closed event: still fine
  if (!s.closedByServer && !s.timedOut && !s.fatal && !cleanAfterStop) {
    s.failed = true;
    const what = s.opened ? 'The connection to the server was lost' : 'Could not connect to the server';
    fail('socket', `${what}${code && code !== 1006 ? ` (code ${code})` : ''}. Check your network and press Start again.`);
  }
  endCapture(s);
  session = null;
  setState(s.fatal || s.failed ? 'error' : 'closed');
}

// Stops the mic and the worklet. Idempotent; resolves with the worklet's last partial frame.
function endCapture(s) {
  unlockScreen(s);
  el.level.value = 0;
  hooks.level = { rms: 0, peak: 0 };
  return s.capture?.finish() ?? Promise.resolve(null);
}

// Normal stop: flush the last audio, then CloseStream; the socket stays open for the last events.
async function finishSession(s) {
  const rest = await endCapture(s);
  if (rest) s.socket.send(rest);
  s.socket.send({ type: 'CloseStream' });
  s.closeTimer = setTimeout(() => {
    s.timedOut = true;
    s.socket.close(1000, 'no closed event');
  }, CLOSE_TIMEOUT_MS);
}

async function openMic(s, deviceId, processing) {
  const opts = {
    deviceId,
    processing,
    workletUrl: WORKLET_URL,
    onFrame: (buffer) => (s.socket ? s.socket.send(buffer) : s.early.push(buffer)), // queued until open
    onLevel: (level) => {
      hooks.level = level;
      el.level.value = levelToMeter(level.peak);
    },
  };
  try {
    return await startCapture(opts);
  } catch (err) {
    if (!deviceId || !['OverconstrainedError', 'NotFoundError'].includes(err?.name)) throw err;
    // The saved microphone is gone (unplugged, or ids rotated): fall back to the default one.
    showMessage('The selected microphone is not available; using the default microphone.', 'info');
    return startCapture({ ...opts, deviceId: '' });
  }
}

async function start() {
  if (session) return;
  clearMessages();
  hooks.lastError = null;
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    fail('insecure', 'The microphone is only available on a secure page. Open this site over https:// (or on localhost).');
    setState('error');
    return;
  }
  hooks.bytesSent = 0;
  hooks.framesSent = 0;
  transcript.newSession();
  const s = { stopping: false, fatal: false, failed: false, opened: false, closedByServer: false, timedOut: false };
  session = s;
  setState('connecting');

  // Microphone first: a denied or missing microphone must not open a recognizer session (it may be billed).
  // Frames captured before the socket exists or opens wait in order, so the first words are never lost.
  s.early = [];
  try {
    s.capture = await openMic(s, el.mic.value, el.processing.checked);
  } catch (err) {
    if (session === s) {
      fail(err?.name || 'capture', describeCaptureError(err));
      s.fatal = true;
      session = null;
      setState('error');
    }
    return;
  }
  if (session !== s) {
    s.capture.finish();
    return;
  }
  s.socket = new RelaySocket(listenUrl(location), {
    open: () => {
      s.opened = true;
      clearTimeout(s.connectTimer);
    },
    message: (msg) => onServerMessage(s, msg),
    close: (info) => onSocketClose(s, info),
    sent: (data) => {
      if (data instanceof ArrayBuffer) {
        hooks.bytesSent += data.byteLength;
        hooks.framesSent += 1;
      }
    },
  });
  for (const buffer of s.early.splice(0)) s.socket.send(buffer);
  s.connectTimer = setTimeout(() => {
    if (!s.opened) s.socket.close(1000, 'connect timeout'); // close event reports the failure
  }, CONNECT_TIMEOUT_MS);

  hooks.sampleRate = s.capture.sampleRate;
  if (session !== s || s.stopping) {
    // Stop was pressed (or the session ended) while the mic was opening.
    if (session === s) finishSession(s);
    else s.capture.finish();
    return;
  }
  lockScreen(s);
  // Labels appear once permission is granted; show the real names and the device in use.
  refreshMics(el.mic.value || s.capture.deviceId);
}

async function stop() {
  const s = session;
  if (!s || s.stopping) return;
  s.stopping = true;
  setState(hooks.state);
  if (s.capture) await finishSession(s); // else start() finishes once the mic is open
}

function finalizeTurn() {
  if (session && !session.stopping) session.socket.send({ type: 'Finalize' });
}

// ---- transcript tools -----------------------------------------------------------------------

function flashLabel(button, text) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = text;
  clearTimeout(button.flashTimer);
  button.flashTimer = setTimeout(() => {
    button.textContent = original;
  }, 1500);
}

async function copyText() {
  const text = transcript.finalText();
  if (!text) return flashLabel(el.copy, 'Nothing yet');
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Clipboard API missing or refused (insecure page, no focus): the old selection route.
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.className = 'offscreen';
    document.body.append(area);
    area.select();
    const ok = document.execCommand('copy');
    area.remove();
    if (!ok) return showMessage('Copying was blocked by the browser; use Download instead.');
  }
  flashLabel(el.copy, 'Copied');
}

function downloadText() {
  const text = transcript.finalText();
  if (!text) return flashLabel(el.download, 'Nothing yet');
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain;charset=utf-8' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = downloadName();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function setLarge(on) {
  document.body.classList.toggle('large', on);
  el.large.setAttribute('aria-pressed', String(on));
  storage('large', on ? '1' : '0');
  el.transcript.scrollTop = el.transcript.scrollHeight;
}

// ---- wiring ---------------------------------------------------------------------------------

el.start.addEventListener('click', start);
el.stop.addEventListener('click', stop);
el.finalize.addEventListener('click', finalizeTurn);
el.copy.addEventListener('click', copyText);
el.download.addEventListener('click', downloadText);
el.clear.addEventListener('click', clearTranscript);
el.large.addEventListener('click', () => setLarge(!document.body.classList.contains('large')));
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && document.body.classList.contains('large')) setLarge(false);
});
el.mic.addEventListener('change', () => storage('mic', el.mic.value));
el.processing.addEventListener('change', () => storage('processing', el.processing.checked ? '1' : '0'));
navigator.mediaDevices?.addEventListener?.('devicechange', () => refreshMics());

el.processing.checked = storage('processing') === '1';
setLarge(storage('large') === '1');
setState('idle');
refreshMics();
if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  fail('insecure', 'The microphone is only available on a secure page. Open this site over https:// (or on localhost).');
}

window.captionRelay = { start, stop, finalize: finalizeTurn, clear: clearTranscript };
