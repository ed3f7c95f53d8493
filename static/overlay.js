// The browser-source overlay (/s/<token>/overlay) for OBS/vMix: the share link's live captions over video,
// styled by URL parameters (static/caption-style.js validates them; docs/overlay.md lists them), on the
// same live socket as the viewer page (static/watch.js).
import { watchLive } from './watch.js';
import { appendTurn, setTimes, settle } from './flow.js';
import { cssFor, parseParams } from './caption-style.js';

const MAX_LINES = 40; // sentences kept in the DOM; only the last `lines` lines show
const query = new URLSearchParams(location.search);
const { values, rejected } = parseParams(query);
const css = cssFor(values);
const sample = query.has('sample'); // the builder's preview: sample text until real captions arrive

const stage = document.getElementById('stage');
const box = document.getElementById('box');
const captions = document.getElementById('captions');
const announcer = document.getElementById('announcer');

// Test hooks (read by the browser tests), updated in place.
const hooks = { values, rejected, state: 'connecting', finals: 0, interim: '', faded: false, received: 0 };
window.__overlay = hooks;
if (rejected.length) console.warn(`overlay: ignored bad values for ${rejected.join(', ')} (defaults used)`);

// Everything below is CSSOM with validated values: no style attribute or sheet is built from the URL.
document.documentElement.style.backgroundColor = css.pageBackground;
document.body.style.backgroundColor = css.pageBackground;
stage.style.justifyContent = values.position === 'top' ? 'flex-start' : 'flex-end';
stage.style.alignItems = { left: 'flex-start', center: 'center', right: 'flex-end' }[values.align];
box.style.backgroundColor = css.boxBackground;
Object.assign(captions.style, {
  fontFamily: css.fontFamily,
  fontSize: css.fontSize,
  fontWeight: css.fontWeight,
  lineHeight: css.lineHeight,
  color: css.color,
  textAlign: css.textAlign,
  textShadow: css.textShadow,
  maxHeight: `${values.lines * css.lineHeightPx}px`,
});

let interimEl = null;
let lastSeq = -1;
let done = document.body.dataset.live !== 'true';
let clearTimer = 0;
let sampleShown = false;

function line(text, kind, t = {}) {
  const p = document.createElement('span');
  p.className = `turn line ${kind}`; // inside a paragraph per sentence (static/flow.js)
  setTimes(p, t); // a new paragraph after a pause too
  p.textContent = text;
  return p;
}

function trim() {
  while (captions.childElementCount > MAX_LINES) captions.firstElementChild.remove();
  box.hidden = captions.childElementCount === 0;
}

function dropSample() {
  if (!sampleShown) return;
  captions.replaceChildren();
  sampleShown = false;
}

// Silence for `clear` seconds: fade out, then forget the old lines so the next words start clean.
function heard() {
  stage.classList.remove('faded');
  hooks.faded = false;
  if (!values.clear) return;
  clearTimeout(clearTimer);
  clearTimer = setTimeout(() => {
    stage.classList.add('faded');
    hooks.faded = true;
    clearTimer = setTimeout(() => {
      captions.replaceChildren();
      interimEl = null;
      trim();
    }, 700);
  }, values.clear * 1000);
}

function final(t) {
  if (Number.isInteger(t.seq) && t.seq <= lastSeq) return; // already shown (snapshot, then the live feed)
  if (Number.isInteger(t.seq)) lastSeq = t.seq;
  dropSample();
  const p = line(t.text, 'final', t);
  if (interimEl) interimEl.replaceWith(p);
  else appendTurn(captions, p);
  settle(captions, p);
  interimEl = null;
  hooks.finals += 1;
  hooks.interim = '';
  announcer.textContent = t.text; // screen readers hear finals only
}

function interim(t) {
  if (!values.interim) return;
  dropSample();
  if (!interimEl) {
    interimEl = line('', 'interim', t);
    appendTurn(captions, interimEl);
  }
  setTimes(interimEl, t);
  interimEl.textContent = t.text;
  settle(captions, interimEl);
  hooks.interim = t.text;
}

function onMessage(msg) {
  hooks.received += 1;
  switch (msg.type) {
    case 'snapshot':
      dropSample();
      captions.replaceChildren();
      interimEl = null;
      for (const t of (msg.turns || []).slice(-MAX_LINES)) final(t);
      hooks.state = msg.live || msg.paused ? 'live' : 'ended';
      done = hooks.state === 'ended';
      if (captions.childElementCount) heard();
      break;
    case 'transcript':
      if (typeof msg.text !== 'string') break;
      if (msg.final) final(msg);
      else interim(msg);
      heard();
      break;
    case 'ended':
      done = true;
      hooks.state = 'ended';
      interimEl?.remove();
      interimEl = null;
      break;
    case 'revoked':
    case 'error':
      done = true; // the link is off: nothing of the session stays on air
      hooks.state = msg.type;
      captions.replaceChildren();
      interimEl = null;
      break;
    default:
      break;
  }
  trim();
  showSample();
}

function showSample() {
  if (!sample || captions.childElementCount) return;
  captions.append(line('Sample caption: this is how your captions will look.', 'final'));
  if (values.interim) captions.append(line('and words still being recognized', 'interim'));
  sampleShown = true;
  trim();
}

showSample();
watchLive(document.body.dataset.watch, {
  message: onMessage,
  down: () => {
    hooks.state = 'reconnecting';
  },
  isDone: () => done,
});
