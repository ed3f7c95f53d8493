// The embeddable widget (/embed, docs/embed.md): live captions of this device's microphone (capture mode) or
// of someone else's shared session (view mode), in a frame of a site the embed key names. It reports to the
// embedding page with postMessage and takes start/stop commands from it.
import { watchLive } from './watch.js';
import { appendTurn, setTimes, settle } from './flow.js';
import { describeCaptureError, startCapture } from './capture.js';
import { CAPTURE_LABELS, VIEW_LABELS, stateLabel } from './labels.js';
import { levelToMeter } from './pcm.js';
import { CaptureSession } from './session.js';
import { Transcript } from './transcript.js';

const $ = (id) => document.getElementById(id);
const body = document.body;
const el = { start: $('start'), stop: $('stop'), level: $('level'), status: $('status'), captions: $('captions'),
  error: $('error'), announcer: $('announcer') };
const MODE = body.dataset.mode; // 'capture' | 'view'
const KEY = body.dataset.key || '';
const KEPT = 40; // caption paragraphs kept in the page; only the last few lines are visible anyway
const WORKLET_URL = new URL(`./worklet.js${new URL(import.meta.url).search}`, import.meta.url).href;
// What people read; the state names themselves (data-state, and the `state` messages to the host) stay as they are.
const LABELS = MODE === 'capture' ? CAPTURE_LABELS : { ...VIEW_LABELS, error: 'Error' };

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
  el.status.textContent = stateLabel(state, LABELS);
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

const paragraphs = new Map(); // key -> the turn's <span>, inside a paragraph per sentence (static/flow.js)

function removeTurn(node) {
  const para = node.parentElement;
  node.remove();
  if (para && !para.querySelector('.turn')) para.remove();
}

// `times`: the turn's {start, end} in seconds, if known (a new paragraph after a pause, static/flow.js).
function showLine(key, text, final, times = {}) {
  let p = paragraphs.get(key);
  if (!p) {
    p = document.createElement('span');
    setTimes(p, times);
    paragraphs.set(key, p);
    appendTurn(el.captions, p);
    while (paragraphs.size > KEPT) {
      const [oldest, node] = paragraphs.entries().next().value;
      removeTurn(node);
      paragraphs.delete(oldest);
    }
  }
  p.className = final ? 'turn final' : 'turn interim';
  setTimes(p, times);
  p.textContent = text;
  settle(el.captions, p);
  if (final && text) el.announcer.textContent = text; // finals only: interims would chatter
}

function dropLine(key) {
  const node = paragraphs.get(key);
  if (node) removeTurn(node);
  paragraphs.delete(key);
}

function clearLines() {
  paragraphs.clear();
  el.captions.replaceChildren();
}

// ---- capture mode ---------------------------------------------------------------------------------------
//
// static/session.js runs the session (mic, socket, queue, reconnects); the widget shows its state, captions and
// errors, and reports them to the host.

const transcript = new Transcript();
let session = null;
let wakeLock = null;

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

function onChange({ entry, committed }) {
  if (entry.text || entry.final) showLine(entry.key, entry.text, entry.final, entry);
  else dropLine(entry.key);
  if (committed && entry.text) hooks.finals = transcript.finals;
  hooks.interim = entry.final ? '' : entry.text;
}

// The host gets the server's transcript and turn events as they come.
function relay(msg) {
  if (msg.type === 'transcript') {
    post('transcript', { turn: msg.turn, text: msg.text, final: Boolean(msg.final), start: msg.start, end: msg.end });
  } else if (msg.type === 'turn') {
    post('turn', { turn: msg.turn, event: msg.event });
  }
}

function start() {
  if (session || MODE !== 'capture') return;
  clearError();
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    showError('insecure', 'The microphone needs a secure page: this widget must be served over https://.');
    setState('error');
    return;
  }
  const s = new CaptureSession({
    capture: (onFrame) => startCapture({
      workletUrl: WORKLET_URL,
      onFrame,
      onLevel: (level) => {
        el.level.value = levelToMeter(level.peak);
      },
    }),
    location,
    params: { key: KEY },
    transcript,
    describeError: micMessage,
    on: {
      state: (state) => {
        if (s.ended && session === s) session = null;
        setState(state);
      },
      ready: ({ sessionId, shareUrl }) => {
        setState('live', { session_id: sessionId, share_url: shareUrl === null ? null : new URL(shareUrl, location.href).href });
      },
      change: onChange,
      remove: dropLine,
      error: ({ code, message }) => showError(code, message),
      message: relay,
      started: async () => {
        try {
          wakeLock = (await navigator.wakeLock?.request('screen')) ?? null; // allowed when the host delegates it
        } catch {
          wakeLock = null;
        }
      },
      captureStopped: () => {
        wakeLock?.release().catch(() => {});
        wakeLock = null;
        if (el.level) el.level.value = 0;
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
          showLine(finalKey(t.seq), t.text, true, t);
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
          showLine(finalKey(msg.seq), msg.text, true, msg);
          hooks.finals.push(msg.text);
          hooks.interim = '';
        } else {
          interimKey ??= `interim-${msg.turn}-${Date.now()}`;
          showLine(interimKey, msg.text, false, msg);
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
      case 'deleted': // to the host, the same as a link turned off (docs/embed.md's states are unchanged)
        stopWatching('revoked', 'revoked', 'The person sharing these captions deleted the session.');
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
