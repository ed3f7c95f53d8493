// Viewer of a shared session (/s/<token>). The server already rendered the transcript so far, so the page
// reads fine without this module; it adds live updates over /ws/watch/<token>, follow-the-text scrolling
// that stops when the reader scrolls up, presentation mode (static/present.js) and the overlay builder.
import { setupBuilder } from './overlay-builder.js';
import { setupPresentation } from './present.js';
import { VIEW_LABELS, localizeTimes, stateLabel } from './labels.js';
import { watchLive } from './watch.js';
import { appendTurn, regroup, setTimes, settle } from './flow.js';

const $ = (id) => document.getElementById(id);
const box = $('transcript');
const badge = $('badge');
const announcer = $('announcer');
const jump = $('jump');

// Test hooks (read by the browser tests), updated in place.
const hooks = {
  state: 'connecting',
  finals: [...box.querySelectorAll('.turn.final')].map((p) => p.textContent),
  interim: '',
  received: 0,
};
window.__viewer = hooks;
regroup(box); // the server rendered one line per turn: one paragraph per sentence (static/flow.js)

let interimEl = null;
let follow = true;
let done = document.body.dataset.live !== 'true';
let paused = document.body.dataset.paused === 'true'; // stopped by a server restart: its speaker is expected back

function atBottom() {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
}

function keepFollowing() {
  if (follow) box.scrollTop = box.scrollHeight;
}

box.addEventListener('scroll', () => {
  follow = atBottom(); // the reader scrolled up: stop pulling the text away from them
  jump.hidden = follow;
});

jump.addEventListener('click', () => {
  follow = true;
  jump.hidden = true;
  keepFollowing();
});

// `state` is the machine-readable one (data-state, for tests); `look` picks the badge's style.
function setBadge(state, look = state) {
  badge.className = `badge ${look}`;
  badge.dataset.state = state;
  badge.textContent = stateLabel(state, VIEW_LABELS);
}

function finalEl(t) {
  const p = document.createElement('span');
  p.className = 'turn final';
  p.dataset.seq = String(t.seq);
  p.dataset.turn = String(t.turn);
  setTimes(p, t); // a new paragraph after a pause (static/flow.js)
  p.textContent = t.text;
  return p;
}

function snapshot(msg) {
  interimEl = null;
  regroup(box, msg.turns.map(finalEl)); // the turns of one sentence are one paragraph (static/flow.js)
  hooks.finals = msg.turns.map((t) => t.text);
  hooks.interim = '';
  keepFollowing();
}

// The connection to the speaker is interrupted (a dropped socket, a server restart): not the end.
function reconnecting() {
  hooks.state = 'reconnecting';
  setBadge('reconnecting');
  badge.title = 'The captions were interrupted; they continue when the connection is back.';
}

function live() {
  paused = false;
  hooks.state = 'live';
  setBadge('live');
  badge.removeAttribute('title');
}

function transcript(msg) {
  if (paused) live();
  $('empty-note')?.remove();
  if (msg.final) {
    if (box.querySelector(`.final[data-seq="${msg.seq}"]`)) return; // already shown
    const p = finalEl(msg);
    if (interimEl) {
      interimEl.replaceWith(p);
      interimEl = null;
    } else {
      appendTurn(box, p);
    }
    settle(box, p);
    hooks.finals.push(msg.text);
    hooks.interim = '';
    announcer.textContent = msg.text; // screen readers get finals only; interims would chatter
  } else {
    if (!interimEl) {
      interimEl = document.createElement('span');
      interimEl.className = 'turn interim';
      setTimes(interimEl, msg);
      appendTurn(box, interimEl);
    }
    interimEl.dataset.turn = String(msg.turn);
    setTimes(interimEl, msg);
    const text = typeof msg.text === 'string' ? msg.text : '';
    // the interim's prefix the last two hypotheses agreed on; the tail may still change (docs/protocol.md)
    const stable = Number.isInteger(msg.stable_chars) ? Math.max(0, Math.min(msg.stable_chars, text.length)) : text.length;
    if (stable < text.length) {
      const tail = document.createElement('span');
      tail.className = 'unstable';
      tail.textContent = text.slice(stable);
      interimEl.replaceChildren(text.slice(0, stable), tail);
    } else {
      interimEl.textContent = text;
    }
    settle(box, interimEl);
    hooks.interim = msg.text;
  }
  keepFollowing();
}

function finish(state, label = stateLabel(state, VIEW_LABELS)) {
  done = true;
  paused = false;
  badge.removeAttribute('title');
  hooks.state = state;
  setBadge(state, state === 'ended' ? 'ended' : 'gone');
  badge.textContent = label;
  interimEl?.remove();
  interimEl = null;
}

function onWatchMessage(msg) {
  hooks.received += 1;
  switch (msg.type) {
    case 'snapshot':
      snapshot(msg);
      paused = !msg.live && Boolean(msg.paused);
      if (msg.live) live();
      else if (paused) reconnecting();
      else finish('ended', 'Ended');
      break;
    case 'paused':
      paused = true;
      reconnecting();
      break;
    case 'resumed':
      live();
      break;
    case 'transcript':
      transcript(msg);
      break;
    case 'ended':
      finish('ended', 'Ended');
      break;
    case 'revoked':
      finish('revoked');
      break;
    case 'deleted': { // its owner deleted the session: its text goes from this page too, and the link is gone
      finish('deleted');
      const note = document.createElement('p');
      note.className = 'empty-note';
      note.id = 'deleted-note';
      note.textContent = 'The person sharing these captions deleted this session.';
      box.replaceChildren(note);
      hooks.finals = [];
      document.querySelector('nav.exports')?.remove();
      break;
    }
    case 'error':
      finish('error', msg.code === 'expired' ? 'Link expired' : 'Link not valid');
      break;
    default:
      break;
  }
}

function connect() {
  watchLive(document.body.dataset.watch, {
    message: onWatchMessage,
    down: reconnecting,
    isDone: () => done,
  });
}

// Presentation mode (static/present.js) and the OBS overlay builder (static/overlay-builder.js).
const presenter = setupPresentation({ box, button: $('present'), status: badge });
const params = new URLSearchParams(location.search);
if (params.has('present') || params.has('large')) presenter.enter({ fullscreen: false }); // ?large: older links
setupBuilder();

localizeTimes();
keepFollowing();
if (done) {
  hooks.state = 'ended';
} else {
  if (paused) reconnecting();
  connect();
}
