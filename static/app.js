// Caption Relay page: wires the microphone capture, the /ws/listen socket and the transcript view.
import { describeCaptureError, listMicrophones, startCapture } from './capture.js';
import { levelToMeter } from './pcm.js';
import { AudioQueue, BYTES_PER_SECOND, GIVE_UP_MS, backoffDelay, decide, droppedNotice, isInputError } from './reconnect.js';
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
  share: $('share'),
  shareLink: $('share-link'),
  shareCopy: $('share-copy'),
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
  sessionId: null, // the server session (the same across resumes)
  reconnects: 0, // successful resumes of this session
  queuedBytes: 0, // audio waiting for a socket (while disconnected)
  queuedPeak: 0, // the most that waited at once in this session
  droppedBytes: 0, // audio dropped from a full queue
  connections: [], // one per socket: {resume, sessionId, bytesSent, framesSent, closeCode, closedReason}
  states: [], // the indicator's states, in order
  shareUrl: null,
};
window.__captionRelay = hooks;

const transcript = new Transcript();
const turnEls = new Map(); // entry key -> <p>
let session = null; // the running capture + socket, or null when idle

// ---- small UI helpers -----------------------------------------------------------------------

function setState(state) {
  if (hooks.states.at(-1) !== state) hooks.states.push(state);
  if (hooks.states.length > 200) hooks.states.splice(0, hooks.states.length - 200);
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

function fail(code, message, key = null) {
  hooks.lastError = { code, message };
  if (key) notice(key, message, 'error'); // replaces the notice it concludes (e.g. "retrying…")
  else showMessage(message);
}

// Server messages are phrases or sentences: end them with one full stop before adding more text.
function sentence(text) {
  const t = String(text || '').trim();
  return /[.!?…]$/.test(t) ? t : `${t}.`;
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
  p.className = `turn ${entry.final ? 'final' : 'interim'}${entry.recovered ? ' recovered' : ''}${entry.eager ? ' eager' : ''}${entry.text ? '' : ' empty'}`;
  if (entry.recovered) p.title = 'Kept from before the connection was lost';
  else p.removeAttribute('title');
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
//
// A session (Start … Stop) outlives its sockets: when the socket drops (network change, laptop sleep,
// server restart) the mic keeps running, frames wait in the bounded s.queue, and the page reconnects with
// backoff using the resume token from `ready` (static/reconnect.js has the policy). On the new `ready`
// the queued audio goes first, then live frames. A session the user stopped is never restarted.

function newConnection(s, { resume }) {
  const params = { sample_rate: 16000 };
  if (resume) params.resume = s.token;
  const first = hooks.connections.length === 0;
  const stats = { resume, sessionId: null, bytesSent: 0, framesSent: 0, closeCode: null, closedReason: null };
  hooks.connections.push(stats);
  // The first socket takes audio at once (RelaySocket queues it until open, the server until `ready`);
  // a later one only on `ready`, so a long backlog never meets the server's pre-ready limit.
  const c = { resume, stats, opened: false, ready: false, flowing: first, closedReason: null, error: null };
  s.conn = c;
  c.socket = new RelaySocket(listenUrl(location, params), {
    open: () => {
      c.opened = true;
      clearTimeout(c.connectTimer);
    },
    message: (msg) => onServerMessage(s, c, msg),
    close: (info) => onSocketClose(s, c, info),
    sent: (data) => {
      if (data instanceof ArrayBuffer) {
        hooks.bytesSent += data.byteLength;
        hooks.framesSent += 1;
        stats.bytesSent += data.byteLength;
        stats.framesSent += 1;
      }
    },
  });
  c.connectTimer = setTimeout(() => {
    if (!c.opened) c.socket.close(1000, 'connect timeout'); // the close event reports the failure
  }, CONNECT_TIMEOUT_MS);
  if (c.flowing) flushQueue(s, c);
  return c;
}

// Audio from the worklet: straight to a socket that takes it, else into the bounded queue.
function sendAudio(s, buffer) {
  const c = s.conn;
  if (c && c.flowing && !c.socket.isClosing) {
    c.socket.send(buffer);
    return;
  }
  if (s.queue.push(buffer)) notice('dropped', droppedNotice(s.queue.dropped), 'error');
  hooks.queuedBytes = s.queue.bytes;
  hooks.queuedPeak = Math.max(hooks.queuedPeak, s.queue.bytes);
  hooks.droppedBytes = s.queue.droppedTotal;
}

function flushQueue(s, c) {
  for (const buffer of s.queue.drain()) c.socket.send(buffer);
  hooks.queuedBytes = 0;
}

function onServerMessage(s, c, msg) {
  hooks.messages.push(msg);
  if (hooks.messages.length > MAX_MESSAGES) hooks.messages.splice(0, hooks.messages.length - MAX_MESSAGES);
  if (session !== s || s.conn !== c) return;
  switch (msg.type) {
    case 'ready':
      onReady(s, c, msg);
      break;
    case 'status':
      if (!s.fatal && (msg.state === 'live' || msg.state === 'reconnecting')) setState(msg.state);
      if (msg.state === 'reconnecting' && msg.message) {
        // the server retries the recognizer by itself: say why while it does, once, updated in place
        s.upstreamDown = true;
        notice('upstream', `Waiting for the speech recognizer: ${sentence(msg.message)} Retrying…`, 'info');
      } else if (msg.state === 'live' && s.upstreamDown) {
        s.upstreamDown = false;
        notice('upstream', 'The speech recognizer answers again; captions continue.', 'info');
      }
      break;
    case 'transcript':
    case 'turn': {
      const change = transcript.apply(msg);
      if (change) render(change);
      break;
    }
    case 'gap':
    case 'notice': // e.g. finals_lost: the recording lacks some turns (this page's captions are whole)
      if (msg.message) showMessage(msg.message, 'info');
      break;
    case 'error': {
      if (isInputError(msg)) {
        // one frame or message was dropped; the session goes on (one notice per kind, updated in place)
        hooks.lastError = { code: msg.code, message: msg.message };
        notice(`input-${msg.code}`, msg.message || 'The server ignored a message.', 'error');
        break;
      }
      c.error = msg;
      if (msg.code === 'resume_refused') {
        notice('conn', `${msg.message || 'The session could not be resumed.'} Captions continue in a new session; the text so far is kept.`, 'info');
        break;
      }
      const wait = msg.retry_after ? ` (try again in ${Math.ceil(msg.retry_after)} s)` : '';
      const text = `${msg.message || 'The server reported an error.'}${wait}`;
      if (msg.retryable && s.everLive) {
        // the page retries by itself: one notice updated in place, not a new error per attempt
        hooks.lastError = { code: msg.code, message: text };
        notice('conn', `${msg.message || 'The server reported an error.'} Reconnecting…`, 'info');
        break;
      }
      if (msg.retryable) {
        // a passing fault, but this session ends (the server gave up before it was ever live): say what to do
        s.failed = true;
        const again = msg.retry_after ? `in ${Math.ceil(msg.retry_after)} s` : 'to try again';
        const operator = String(msg.code).startsWith('upstream') ? '; if this keeps happening, tell whoever runs this server' : '';
        const said = sentence(msg.message || 'the server reported an error');
        // the server's message may already say what to do: add only what it leaves out
        const todo = /press start/i.test(said) ? (operator ? ` If this keeps happening, tell whoever runs this server.` : '')
          : ` Press Start ${again}${operator}.`;
        fail(msg.code, `Captioning stopped: ${said}${todo}`,
          s.upstreamDown ? 'upstream' : null);
        break;
      }
      fail(msg.code, text, s.upstreamDown ? 'upstream' : null);
      s.fatal = true;
      setState('error');
      break;
    }
    case 'closed':
      c.closedReason = msg.reason || 'closed';
      c.stats.closedReason = c.closedReason;
      if (s.stopping) break; // the socket's close event finishes the session
      if (policy(s, c).action === 'end') {
        endCapture(s); // the server ended the session: release the mic now
      } else {
        c.flowing = false; // frames from now on wait for the next socket instead of a closing one
        setState('reconnecting');
      }
      break;
    default:
      break;
  }
}

function onReady(s, c, msg) {
  c.ready = true;
  const id = typeof msg.session_id === 'string' ? msg.session_id : null;
  c.stats.sessionId = id;
  const resumed = c.resume && s.sessionId !== null && id === s.sessionId;
  if (s.sessionId !== null && !resumed) transcript.newSession(); // a new server session numbers turns from 0
  if (resumed) hooks.reconnects += 1;
  if (s.downSince !== null) {
    const away = Math.round((Date.now() - s.downSince) / 1000);
    notice('conn', resumed ? `Reconnected after ${away} s; captions continue.`
      : `Reconnected after ${away} s in a new session; the text so far is kept.`, 'info');
  }
  s.everLive = true;
  s.sessionId = id;
  hooks.sessionId = id;
  s.token = typeof msg.resume_token === 'string' && msg.resume_token ? msg.resume_token : null;
  if (typeof msg.share_url === 'string') {
    hooks.shareUrl = msg.share_url;
    showShare(msg.share_url);
  }
  s.attempt = 0;
  s.downSince = null;
  flushQueue(s, c); // audio captured while disconnected, in order, before any new frame
  c.flowing = true;
  if (!s.fatal) setState('live');
}

function policy(s, c) {
  return decide({ userStopped: s.stopping, closedReason: c.closedReason, error: c.error, everLive: s.everLive,
    canResume: Boolean(s.token) });
}

function onSocketClose(s, c, { code }) {
  clearTimeout(c.connectTimer);
  c.flowing = false;
  c.stats.closeCode = code;
  if (session !== s || s.conn !== c) return;
  s.conn = null;
  clearTimeout(s.closeTimer);
  const next = policy(s, c);
  if (next.action !== 'end') {
    scheduleReconnect(s, next);
    return;
  }
  const cleanAfterStop = s.stopping && code === 1000; // server ended without a closed event: still fine
  if (!c.closedReason && !s.timedOut && !s.fatal && !cleanAfterStop) {
    s.failed = true;
    const what = c.opened ? 'The connection to the server was lost' : 'Could not connect to the server';
    fail('socket', `${what}${code && code !== 1006 ? ` (code ${code})` : ''}. Check your network and press Start again.`);
  }
  dropQueue(s);
  endSession(s, s.fatal || s.failed ? 'error' : 'closed');
}

// The socket is gone but the session goes on: keep open turns' text, then try again after a backoff.
function scheduleReconnect(s, { action, why, retryAfter }) {
  const now = Date.now();
  if (s.downSince === null) {
    s.downSince = now;
    recoverTranscript();
    if (why !== 'resume_refused') {
      notice('conn', 'The connection to the server was lost; reconnecting. Captions resume where they stopped.', 'info');
    }
  }
  setState('reconnecting');
  if (action === 'fresh') s.token = null;
  const delay = why === 'resume_refused' ? 0 : backoffDelay(s.attempt, { retryAfter });
  if (now + delay - s.downSince > GIVE_UP_MS) {
    giveUp(s);
    return;
  }
  s.attempt += 1;
  s.retryTimer = setTimeout(() => reconnectNow(s), delay);
}

function reconnectNow(s) {
  clearTimeout(s.retryTimer);
  s.retryTimer = null;
  if (session !== s || s.stopping || s.conn) return;
  newConnection(s, { resume: Boolean(s.token) });
}

function giveUp(s) {
  s.failed = true;
  const minutes = Math.round(GIVE_UP_MS / 60000);
  fail('reconnect_failed', `Could not reconnect to the server for ${minutes} minute${minutes === 1 ? '' : 's'}. `
    + 'The transcript so far is kept; press Start to caption again.');
  dropQueue(s);
  endSession(s, 'error');
}

function dropQueue(s) {
  const unsent = s.queue.bytes;
  s.queue.drain();
  hooks.queuedBytes = 0;
  if (unsent) showMessage(`${(unsent / BYTES_PER_SECOND).toFixed(1)} s of audio captured while disconnected could not be sent.`, 'info');
}

function endSession(s, state) {
  clearTimeout(s.retryTimer);
  endCapture(s);
  if (session === s) session = null;
  setState(state);
}

// An open turn whose final will not reach this page stays as a final-looking line (class "recovered").
function recoverTranscript() {
  const { changed, removed } = transcript.recover();
  for (const key of removed) {
    turnEls.get(key)?.remove();
    turnEls.delete(key);
  }
  for (const entry of changed) render({ entry, committed: true });
}

// Stops the mic and the worklet. Idempotent; resolves with the worklet's last partial frame.
function endCapture(s) {
  unlockScreen(s);
  el.level.value = 0;
  hooks.level = { rms: 0, peak: 0 };
  return s.capture?.finish() ?? Promise.resolve(null);
}

// Normal stop: flush the last audio, then CloseStream; the socket stays open for the last events.
// Disconnected at that moment: the session just ends here (it is never reopened after Stop).
async function finishSession(s) {
  const rest = await endCapture(s);
  const c = s.conn;
  if (!c || c.socket.isClosing || c.closedReason) {
    if (rest) s.queue.push(rest);
    if (!c) {
      dropQueue(s);
      endSession(s, 'closed');
    }
    return; // a closing socket: its close event ends the session
  }
  c.flowing = true;
  flushQueue(s, c);
  if (rest) c.socket.send(rest);
  c.socket.send({ type: 'CloseStream' });
  s.closeTimer = setTimeout(() => {
    s.timedOut = true;
    c.socket.close(1000, 'no closed event');
  }, CLOSE_TIMEOUT_MS);
}

async function openMic(s, deviceId, processing) {
  const opts = {
    deviceId,
    processing,
    workletUrl: WORKLET_URL,
    onFrame: (buffer) => sendAudio(s, buffer), // queued until a socket takes it
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
  hooks.sessionId = null;
  hooks.reconnects = 0;
  hooks.queuedBytes = 0;
  hooks.queuedPeak = 0;
  hooks.droppedBytes = 0;
  hooks.connections = [];
  hooks.states = [];
  transcript.newSession();
  const s = {
    stopping: false, fatal: false, failed: false, timedOut: false,
    capture: null, conn: null,
    queue: new AudioQueue(), // frames waiting for a socket: before the first one exists, and while disconnected
    everLive: false, sessionId: null, token: null, attempt: 0, downSince: null, retryTimer: null,
  };
  session = s;
  setState('connecting');

  // Microphone first: a denied or missing microphone must not open a recognizer session (it may be billed).
  // Frames captured before the socket exists or opens wait in order, so the first words are never lost.
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
  newConnection(s, { resume: false });

  hooks.sampleRate = s.capture.sampleRate;
  if (s.stopping) {
    finishSession(s); // Stop was pressed while the mic was opening.
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
  clearTimeout(s.retryTimer);
  s.retryTimer = null;
  setState(hooks.state);
  if (s.capture) await finishSession(s); // else start() finishes once the mic is open
}

function finalizeTurn() {
  const c = session?.conn;
  if (c && !session.stopping && c.flowing) c.socket.send({ type: 'Finalize' });
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

function showShare(path) {
  const url = new URL(path, location.href).href;
  el.shareLink.href = url;
  el.shareLink.textContent = url;
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
el.shareCopy.addEventListener('click', () => copyToClipboard(el.shareLink.href, el.shareCopy));
el.download.addEventListener('click', downloadText);
el.clear.addEventListener('click', clearTranscript);
el.large.addEventListener('click', () => setLarge(!document.body.classList.contains('large')));
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && document.body.classList.contains('large')) setLarge(false);
});
el.mic.addEventListener('change', () => storage('mic', el.mic.value));
el.processing.addEventListener('change', () => storage('processing', el.processing.checked ? '1' : '0'));
navigator.mediaDevices?.addEventListener?.('devicechange', () => refreshMics());
// Back online while waiting to reconnect: try now instead of at the end of the backoff.
window.addEventListener('online', () => {
  if (session?.retryTimer) reconnectNow(session);
});

el.processing.checked = storage('processing') === '1';
setLarge(storage('large') === '1');
setState('idle');
refreshMics();
if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  fail('insecure', 'The microphone is only available on a secure page. Open this site over https:// (or on localhost).');
}

window.captionRelay = { start, stop, finalize: finalizeTurn, clear: clearTranscript };
