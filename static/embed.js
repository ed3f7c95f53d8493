// The embeddable widget (/embed, docs/embed.md): live captions of this device's microphone (capture mode) or
// of someone else's shared session (view mode), in a frame of a site the embed key names. It reports to the
// embedding page with postMessage and takes start/stop commands from it.
import { watchLive } from './watch.js';
import { describeCaptureError, startCapture } from './capture.js';
import { levelToMeter } from './pcm.js';
import { AudioQueue, GIVE_UP_MS, backoffDelay, decide, isInputError } from './reconnect.js';
import { RelaySocket, listenUrl } from './socket.js';
import { Transcript } from './transcript.js';

const $ = (id) => document.getElementById(id);
const body = document.body;
const el = { start: $('start'), stop: $('stop'), level: $('level'), status: $('status'), captions: $('captions'),
  error: $('error'), announcer: $('announcer') };
const MODE = body.dataset.mode; // 'capture' | 'view'
const KEY = body.dataset.key || '';
const KEPT = 40; // caption paragraphs kept in the page; only the last few lines are visible anyway
const CLOSE_TIMEOUT_MS = 10000;
const WORKLET_URL = new URL(`./worklet.js${new URL(import.meta.url).search}`, import.meta.url).href;
const LABELS = { idle: 'Ready', connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…',
  closed: 'Stopped', ended: 'Ended', revoked: 'Link turned off', error: 'Error' };

// Test hooks, updated in place.
const hooks = { mode: MODE, state: null, finals: [], interim: '', posted: [], commands: [], error: null, targets: [] };
window.__embed = hooks;

// ---- presentation (validated by the server; applied here because the CSP forbids inline styles) ---------

document.documentElement.style.setProperty('--fs', `${Number(body.dataset.fontSize) || 20}px`);
document.documentElement.style.setProperty('--lines', String(Number(body.dataset.lines) || 3));

// ---- the embedding page ----------------------------------------------------------------------------------

// Sites the key names, plus this server (the snippet page's preview, a demo served from here).
const allowed = new Set([...(body.dataset.origins || '').split(' ').filter(Boolean), location.origin]);

function parentOrigin() {
  const ancestor = location.ancestorOrigins?.[0];
  if (ancestor && ancestor !== 'null') return ancestor;
  try {
    return document.referrer ? new URL(document.referrer).origin : null;
  } catch {
    return null;
  }
}

// Messages go only to an allowed origin, never '*'. When the parent's origin cannot be known (no referrer and
// no ancestorOrigins), each allowed origin is tried: the browser delivers only to the one the parent really has.
const targets = (() => {
  if (window.parent === window) return [];
  const origin = parentOrigin();
  if (origin) return allowed.has(origin) ? [origin] : [];
  return [...allowed];
})();
hooks.targets = targets;

function post(type, data = {}) {
  const msg = { source: 'caption-relay', type, ...data };
  hooks.posted.push(msg);
  if (hooks.posted.length > 500) hooks.posted.splice(0, hooks.posted.length - 500);
  for (const origin of targets) window.parent.postMessage(msg, origin);
}

window.addEventListener('message', (e) => {
  if (e.source !== window.parent || !allowed.has(e.origin)) return;
  const d = e.data;
  if (!d || typeof d !== 'object' || d.source !== 'caption-relay-host') return;
  hooks.commands.push(d.command);
  // The host may have missed the first announcement (its listener attached after this frame loaded): repeat it.
  if (d.command === 'state') {
    if (hooks.state) post('state', { state: hooks.state });
    return;
  }
  if (MODE !== 'capture') return;
  if (d.command === 'start') start();
  else if (d.command === 'stop') stop();
});

// ---- view ----------------------------------------------------------------------------------------------

function setState(state, extra = {}) {
  if (el.start) {
    const busy = session !== null;
    el.start.hidden = busy;
    el.stop.hidden = !busy;
    el.stop.disabled = Boolean(session?.stopping);
  }
  if (hooks.state === state && !Object.keys(extra).length) return;
  hooks.state = state;
  el.status.dataset.state = state;
  el.status.textContent = LABELS[state] || state;
  post('state', { state, ...extra });
}

function showError(code, message) {
  hooks.error = { code, message };
  el.error.textContent = message;
  el.error.hidden = false;
  post('error', { code, message });
}

function clearError() {
  hooks.error = null;
  el.error.hidden = true;
  el.error.textContent = '';
}

const paragraphs = new Map(); // key -> <p>

function showLine(key, text, final) {
  let p = paragraphs.get(key);
  if (!p) {
    p = document.createElement('p');
    paragraphs.set(key, p);
    el.captions.append(p);
    while (paragraphs.size > KEPT) {
      const [oldest, node] = paragraphs.entries().next().value;
      node.remove();
      paragraphs.delete(oldest);
    }
  }
  p.className = final ? 'final' : 'interim';
  p.textContent = text;
  if (final && text) el.announcer.textContent = text; // finals only: interims would chatter
}

function dropLine(key) {
  paragraphs.get(key)?.remove();
  paragraphs.delete(key);
}

function clearLines() {
  paragraphs.clear();
  el.captions.replaceChildren();
}

// ---- capture mode ---------------------------------------------------------------------------------------

const transcript = new Transcript();
let session = null;

function micMessage(err) {
  const denied = err?.name === 'NotAllowedError' || err?.name === 'SecurityError';
  if (denied && window.parent !== window) {
    const policy = document.featurePolicy;
    if (policy && !policy.allowsFeature('microphone')) {
      return 'The page showing these captions does not let them use the microphone: its <iframe> tag needs allow="microphone".';
    }
    return 'Microphone access was denied. Allow the microphone for this site and press Start again '
      + '(if it stays blocked, the page\'s <iframe> tag needs allow="microphone").';
  }
  return describeCaptureError(err);
}

function onTranscriptEvent(msg) {
  const change = transcript.apply(msg);
  if (!change) return;
  const { entry, committed } = change;
  if (entry.text || entry.final) showLine(entry.key, entry.text, entry.final);
  else dropLine(entry.key);
  if (committed && entry.text) hooks.finals = transcript.finals;
  hooks.interim = entry.final ? '' : entry.text;
}

function connect(s, resume) {
  const params = { sample_rate: 16000, key: KEY };
  if (resume && s.token) params.resume = s.token;
  // The first socket takes audio at once (queued until open); a resumed one only after `ready`.
  const c = { closedReason: null, error: null, flowing: !resume, resume };
  s.conn = c;
  c.socket = new RelaySocket(listenUrl(location, params), {
    message: (msg) => onMessage(s, c, msg),
    close: (info) => onClose(s, c, info),
  });
  if (c.flowing) flush(s, c);
}

function sendAudio(s, buffer) {
  const c = s.conn;
  if (c && c.flowing && !c.socket.isClosing) c.socket.send(buffer);
  else s.queue.push(buffer); // bounded: the oldest audio goes first
}

function flush(s, c) {
  for (const buffer of s.queue.drain()) c.socket.send(buffer);
}

function onMessage(s, c, msg) {
  if (session !== s || s.conn !== c) return;
  switch (msg.type) {
    case 'ready': {
      const resumed = c.resume && msg.session_id === s.sessionId;
      if (s.sessionId && !resumed) transcript.newSession();
      s.sessionId = msg.session_id;
      s.token = msg.resume_token || null;
      s.everLive = true;
      s.attempt = 0;
      s.downSince = null;
      flush(s, c);
      c.flowing = true;
      const shareUrl = typeof msg.share_url === 'string' ? new URL(msg.share_url, location.href).href : null;
      setState('live', { session_id: msg.session_id, share_url: shareUrl });
      break;
    }
    case 'status':
      if (msg.state === 'live' || msg.state === 'reconnecting') setState(msg.state);
      break;
    case 'transcript':
      onTranscriptEvent(msg);
      post('transcript', { turn: msg.turn, text: msg.text, final: Boolean(msg.final), start: msg.start, end: msg.end });
      break;
    case 'turn':
      onTranscriptEvent(msg);
      post('turn', { turn: msg.turn, event: msg.event });
      break;
    case 'error':
      if (!isInputError(msg)) c.error = msg; // input errors drop one frame; the session goes on
      // resume_refused starts a fresh session, and a live session retries retryable errors by itself
      if (msg.code !== 'resume_refused' && !(msg.retryable && s.everLive)) {
        showError(msg.code, msg.message || 'The server reported an error.');
      }
      break;
    case 'closed':
      c.closedReason = msg.reason || 'closed';
      if (!s.stopping && policy(s, c).action === 'end') s.capture?.finish(); // release the mic now
      else if (!s.stopping) c.flowing = false;
      break;
    default:
      break;
  }
}

function policy(s, c) {
  return decide({ userStopped: s.stopping, closedReason: c.closedReason, error: c.error, everLive: s.everLive,
    canResume: Boolean(s.token) });
}

function onClose(s, c, { code }) {
  c.flowing = false;
  if (session !== s || s.conn !== c) return;
  s.conn = null;
  clearTimeout(s.closeTimer);
  const next = policy(s, c);
  if (next.action !== 'end') {
    // Dropped mid-session: keep the mic running, queue its audio, and continue the same session.
    if (s.downSince === null) s.downSince = Date.now();
    setState('reconnecting');
    if (next.action === 'fresh') s.token = null;
    const delay = backoffDelay(s.attempt++, { retryAfter: next.retryAfter });
    if (Date.now() + delay - s.downSince > GIVE_UP_MS) {
      showError('reconnect_failed', 'Could not reconnect to the caption server. Press Start to try again.');
      end(s, 'error');
      return;
    }
    s.retryTimer = setTimeout(() => {
      if (session === s && !s.stopping && !s.conn) connect(s, Boolean(s.token));
    }, delay);
    return;
  }
  if (s.stopping && (c.closedReason || code === 1000)) end(s, 'closed');
  else if (c.error) end(s, 'error'); // already shown
  else if (c.closedReason) end(s, 'closed');
  else {
    showError('socket', 'Could not reach the caption server. Check the network and press Start again.');
    end(s, 'error');
  }
}

function end(s, state) {
  clearTimeout(s.retryTimer);
  clearTimeout(s.closeTimer);
  s.capture?.finish();
  s.queue.drain();
  s.wakeLock?.release().catch(() => {});
  if (el.level) el.level.value = 0;
  if (session === s) session = null;
  setState(state);
}

async function start() {
  if (session || MODE !== 'capture') return;
  clearError();
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    showError('insecure', 'The microphone needs a secure page: this widget must be served over https://.');
    setState('error');
    return;
  }
  const s = { stopping: false, capture: null, conn: null, queue: new AudioQueue(), everLive: false, sessionId: null,
    token: null, attempt: 0, downSince: null, retryTimer: null, closeTimer: null, wakeLock: null };
  session = s;
  transcript.newSession();
  setState('connecting');
  // Microphone first: a blocked microphone must not open a recognizer session for nothing.
  try {
    s.capture = await startCapture({
      workletUrl: WORKLET_URL,
      onFrame: (buffer) => sendAudio(s, buffer),
      onLevel: (level) => {
        el.level.value = levelToMeter(level.peak);
      },
    });
  } catch (err) {
    if (session === s) {
      session = null;
      showError(err?.name || 'capture', micMessage(err));
      setState('error');
    }
    return;
  }
  if (session !== s) {
    s.capture.finish();
    return;
  }
  connect(s, false);
  try {
    s.wakeLock = (await navigator.wakeLock?.request('screen')) ?? null; // allowed when the host delegates it
  } catch {
    s.wakeLock = null;
  }
  if (s.stopping) finish(s);
}

// Flush the worklet's last audio, then CloseStream; the socket stays open for the last captions.
async function finish(s) {
  const rest = await s.capture.finish();
  const c = s.conn;
  if (!c || c.socket.isClosing || c.closedReason) {
    if (!c) end(s, 'closed');
    return; // a closing socket: its close event ends the session
  }
  c.flowing = true;
  flush(s, c);
  if (rest) c.socket.send(rest);
  c.socket.send({ type: 'CloseStream' });
  s.closeTimer = setTimeout(() => c.socket.close(1000, 'no closed event'), CLOSE_TIMEOUT_MS);
}

async function stop() {
  const s = session;
  if (!s || s.stopping) return;
  s.stopping = true;
  clearTimeout(s.retryTimer);
  setState(hooks.state);
  if (s.capture) await finish(s); // else start() finishes once the mic is open
}

// ---- view mode ---------------------------------------------------------------------------------------------

function watch() {
  let done = false;
  let interimKey = null;
  const finalKey = (seq) => `seq-${seq}`;
  const stopWatching = (state, code, message) => {
    done = true;
    if (interimKey) dropLine(interimKey);
    interimKey = null;
    hooks.interim = '';
    if (message) showError(code, message);
    setState(state);
  };
  const message = (msg) => {
    switch (msg.type) {
      case 'snapshot':
        clearLines();
        interimKey = null;
        hooks.finals = [];
        for (const t of msg.turns.slice(-KEPT)) {
          showLine(finalKey(t.seq), t.text, true);
          hooks.finals.push(t.text);
        }
        if (msg.live) setState('live');
        else if (msg.paused) setState('reconnecting'); // stopped by a server restart: its speaker is expected back
        else stopWatching('ended');
        break;
      case 'paused':
        setState('reconnecting');
        break;
      case 'resumed':
        setState('live');
        break;
      case 'transcript':
        if (msg.final) {
          if (paragraphs.has(finalKey(msg.seq))) return; // already in the snapshot
          if (interimKey) dropLine(interimKey);
          interimKey = null;
          showLine(finalKey(msg.seq), msg.text, true);
          hooks.finals.push(msg.text);
          hooks.interim = '';
        } else {
          interimKey ??= `interim-${msg.turn}-${Date.now()}`;
          showLine(interimKey, msg.text, false);
          hooks.interim = msg.text;
        }
        post('transcript', { turn: msg.turn, text: msg.text, final: Boolean(msg.final), start: msg.start, end: msg.end });
        break;
      case 'ended':
        stopWatching('ended');
        break;
      case 'revoked':
        stopWatching('revoked', 'revoked', 'The person sharing these captions turned the link off.');
        break;
      case 'error':
        stopWatching('error', msg.code, msg.code === 'expired' ? 'This caption link has expired.'
          : 'This caption link does not work; ask for a new one.');
        break;
      default:
        break;
    }
  };
  watchLive(body.dataset.watch, { message, down: () => setState('reconnecting'), isDone: () => done });
}

// ---- wiring --------------------------------------------------------------------------------------------------

if (MODE === 'capture') {
  el.start.addEventListener('click', start);
  el.stop.addEventListener('click', stop);
  setState('idle');
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    showError('insecure', 'The microphone needs a secure page: this widget must be served over https://.');
  }
} else {
  setState('connecting');
  watch();
}
window.captionWidget = { start, stop };
