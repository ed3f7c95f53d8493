// Caption Relay page: the microphone picker, the transcript view and the tools around one capture session (static/session.js).
import { listMicrophones, startCapture } from './capture.js';
import { CAPTURE_LABELS, stateLabel } from './labels.js';
import { levelToMeter } from './pcm.js';
import { appendTurn, setTimes, settle } from './flow.js'; // turns of one sentence as one paragraph (issue 22)
import { setupPresentation } from './present.js'; // presentation mode (issue 19)
import { CaptureSession } from './session.js';
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
  copy: $('copy'),
  download: $('download'),
  clear: $('clear'),
  share: $('share'),
  shareLink: $('share-link'),
  shareCopy: $('share-copy'),
  shareQr: $('share-qr'),
  shareHint: $('share-hint'),
  name: $('session-name'),
};

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
  // the session's counters (static/session.js keeps them here): sessionId, reconnects, queuedBytes,
  // queuedPeak, droppedBytes, connections
  sessionId: null,
  reconnects: 0,
  queuedBytes: 0,
  queuedPeak: 0,
  droppedBytes: 0,
  connections: [],
  states: [], // the indicator's states, in order
  shareUrl: null,
  shortUrl: null,
};
window.__captionRelay = hooks;

const transcript = new Transcript();
const turnEls = new Map(); // entry key -> <p>
let session = null; // the running CaptureSession, or null when idle

// ---- small UI helpers -----------------------------------------------------------------------

function setState(state) {
  if (hooks.states.at(-1) !== state) hooks.states.push(state);
  if (hooks.states.length > 200) hooks.states.splice(0, hooks.states.length - 200);
  hooks.state = state;
  el.state.textContent = stateLabel(state, CAPTURE_LABELS); // people read the label; tests read data-state
  el.state.dataset.state = state;
  const busy = session !== null;
  el.start.disabled = busy;
  el.stop.disabled = !busy || session.stopping;
  el.finalize.disabled = !busy || session.stopping || state !== 'live';
  el.mic.disabled = busy;
  el.processing.disabled = busy;
  el.name.disabled = busy;
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
  return item;
}

// A message that is updated in place rather than repeated (connection notices, dropped audio).
function notice(key, text, kind = 'info') {
  const old = [...el.messages.children].find((m) => m.dataset.key === key);
  const item = showMessage(text, kind);
  item.dataset.key = key;
  if (old) old.replaceWith(item);
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
    p = document.createElement('span');
    p.dataset.turn = String(entry.turn);
    setTimes(p, entry);
    turnEls.set(entry.key, p);
    appendTurn(box, p); // the turns of one sentence are one paragraph (static/flow.js)
  }
  setTimes(p, entry); // a new paragraph after a pause (static/flow.js)
  p.className = `turn ${entry.final ? 'final' : 'interim'}${entry.recovered ? ' recovered' : ''}${entry.eager ? ' eager' : ''}${entry.text ? '' : ' empty'}`;
  if (entry.recovered) p.title = 'Kept from before the connection was lost';
  else p.removeAttribute('title');
  const stable = entry.final || entry.stable === undefined ? entry.text.length : entry.stable;
  if (stable < entry.text.length) {
    const tail = document.createElement('span');
    tail.className = 'unstable'; // words the recognizer may still change
    tail.textContent = entry.text.slice(stable);
    p.replaceChildren(entry.text.slice(0, stable), tail);
  } else {
    p.textContent = entry.text;
  }
  settle(box, p);
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

let wakeLock = null;

async function lockScreen() {
  try {
    wakeLock = (await navigator.wakeLock?.request('screen')) ?? null;
  } catch {
    wakeLock = null; // unsupported, denied, or page hidden: captions work without it
  }
}

function unlockScreen() {
  wakeLock?.release().catch(() => {});
  wakeLock = null;
}

document.addEventListener('visibilitychange', () => {
  // The browser drops the lock when the tab is hidden; take it again on return.
  if (session && !session.stopping && document.visibilityState === 'visible' && (!wakeLock || wakeLock.released)) {
    lockScreen();
  }
});

// ---- session --------------------------------------------------------------------------------
//
// static/session.js runs the session (mic, socket, queue, reconnects); this page shows what it reports.

async function openMic(onFrame, deviceId, processing) {
  const opts = {
    deviceId,
    processing,
    workletUrl: WORKLET_URL,
    onFrame, // queued by the session until a socket takes it
    onLevel: (level) => {
      hooks.level = level;
      el.level.value = levelToMeter(level.peak);
    },
  };
  let capture;
  try {
    capture = await startCapture(opts);
  } catch (err) {
    if (!deviceId || !['OverconstrainedError', 'NotFoundError'].includes(err?.name)) throw err;
    // The saved microphone is gone (unplugged, or ids rotated): fall back to the default one.
    showMessage('The selected microphone is not available; using the default microphone.', 'info');
    capture = await startCapture({ ...opts, deviceId: '' });
  }
  hooks.sampleRate = capture.sampleRate;
  return capture;
}

function start() {
  if (session) return;
  clearMessages();
  hooks.lastError = null;
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    fail('insecure', 'The microphone is only available on a secure page. Open this site over https:// (or on localhost): start the server with ./scripts/start --tls --host 0.0.0.0 and open the https:// address it prints.');
    setState('error');
    return;
  }
  hooks.states = [];
  const deviceId = el.mic.value;
  const processing = el.processing.checked;
  const name = el.name.value.trim();
  const s = new CaptureSession({
    capture: (onFrame) => openMic(onFrame, deviceId, processing),
    location,
    params: name ? { name } : {},
    transcript,
    stats: hooks,
    on: {
      state: (state) => {
        if (s.ended && session === s) session = null;
        setState(state);
      },
      ready: ({ sessionId, shareUrl, shortUrl }) => {
        document.dispatchEvent(new CustomEvent('caption-relay:session', { detail: { sessionId } })); // static/outputs.js
        if (shareUrl === null) return;
        hooks.shareUrl = shareUrl;
        hooks.shortUrl = shortUrl;
        showShare(shortUrl ?? shareUrl, sessionId);
      },
      change: render,
      remove: (key) => {
        turnEls.get(key)?.remove();
        turnEls.delete(key);
      },
      notice: (key, text, kind) => (key ? notice(key, text, kind) : showMessage(text, kind)),
      error: ({ message, key }) => (key ? notice(key, message, 'error') : showMessage(message)),
      message: (msg) => {
        document.dispatchEvent(new CustomEvent('relay:message', { detail: msg })); // e.g. static/textrules.js
        hooks.messages.push(msg);
        if (hooks.messages.length > MAX_MESSAGES) hooks.messages.splice(0, hooks.messages.length - MAX_MESSAGES);
      },
      started: (capture) => {
        lockScreen();
        // Labels appear once permission is granted; show the real names and the device in use.
        refreshMics(el.mic.value || capture.deviceId);
      },
      captureStopped: () => {
        unlockScreen();
        el.level.value = 0;
        hooks.level = { rms: 0, peak: 0 };
      },
    },
  });
  session = s;
  return s.start();
}

function stop() {
  if (!session || session.stopping) return;
  const done = session.stop();
  setState(hooks.state);
  return done;
}

function finalizeTurn() {
  session?.finalize();
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
  return copyToClipboard(transcript.finalText(), el.copy);
}

async function copyToClipboard(text, button) {
  if (!text) return flashLabel(button, 'Nothing yet');
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
    if (!ok) return showMessage('Copying was blocked by the browser; select the text and copy it by hand.');
  }
  flashLabel(button, 'Copied');
}

function showShare(path, sessionId) {
  const url = new URL(path, location.href).href;
  el.shareLink.href = url;
  el.shareLink.textContent = url;
  // The QR code of the same link, drawn by the server (webapp/share_pages.py), for viewers in the room.
  if (sessionId) el.shareQr.src = `/api/sessions/${encodeURIComponent(sessionId)}/qr.svg`;
  el.shareQr.hidden = !sessionId;
  // A loopback address works on this computer only: say so rather than hand viewers a QR code that cannot open.
  el.shareHint.hidden = !/^(localhost|127\.\d+\.\d+\.\d+|\[::1\])$/.test(new URL(url).hostname);
  el.share.hidden = false;
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

// ---- wiring ---------------------------------------------------------------------------------

el.start.addEventListener('click', start);
el.stop.addEventListener('click', stop);
el.finalize.addEventListener('click', finalizeTurn);
el.copy.addEventListener('click', copyText);
el.shareCopy.addEventListener('click', () => copyToClipboard(el.shareLink.href, el.shareCopy));
el.download.addEventListener('click', downloadText);
el.clear.addEventListener('click', clearTranscript);
el.mic.addEventListener('change', () => storage('mic', el.mic.value));
el.processing.addEventListener('change', () => storage('processing', el.processing.checked ? '1' : '0'));
navigator.mediaDevices?.addEventListener?.('devicechange', () => refreshMics());
// Back online while waiting to reconnect: try now instead of at the end of the backoff.
window.addEventListener('online', () => session?.retryNow());

el.processing.checked = storage('processing') === '1';
// ---- presentation mode (static/present.js, issue 19): only the captions, whole lines, full screen ----
setupPresentation({ box: el.transcript, button: $('present'), status: el.state });
// ---- end presentation mode ----
setState('idle');
refreshMics();
if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  fail('insecure', 'The microphone is only available on a secure page. Open this site over https:// (or on localhost): start the server with ./scripts/start --tls --host 0.0.0.0 and open the https:// address it prints.');
}

window.captionRelay = { start, stop, finalize: finalizeTurn, clear: clearTranscript };
