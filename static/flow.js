// Turns are not sentences: a recognizer ends a turn at a short pause, often mid-sentence (issue 22). The pages
// show the turns of one sentence as one paragraph (<div class="para">, its turns inline), and start a new
// paragraph after a turn whose text ends a sentence or before one that starts JOIN_GAP or more after the last
// one ended. The DOM part is given the box; the rule is pure.

const SENTENCE_END = /[.?!…]["'”’»)\]]*$/u;
// "Mr." "Mrs." "Dr." "St.": a title's abbreviation (capitalised, 2-3 letters, no vowel), as webapp/exports.py
const TITLE = /(?:^|\s)[B-DF-HJ-NP-TV-XZ][b-df-hj-np-tv-xz]{1,2}\.$/u;

// Seconds: as JOIN_GAP in webapp/exports.py (the exports' lines and cues, the outputs' `continues`).
export const JOIN_GAP = 1.5;

export function endsSentence(text) {
  const t = String(text ?? '').trim();
  return SENTENCE_END.test(t) && !TITLE.test(t);
}

const seconds = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

// Whether turn `next` runs on in the paragraph of turn `prev` (each {text, start, end}, times in seconds of the
// stream): `prev` did not end a sentence and `next` starts within JOIN_GAP of its end (times unknown: it does).
export function joins(prev, next) {
  if (endsSentence(prev?.text)) return false;
  const end = seconds(prev?.end);
  const start = seconds(next?.start);
  return end === null || start === null || start - end < JOIN_GAP;
}

const asTurn = (t) => (t !== null && typeof t === 'object' ? t : { text: t });

// Text of finals (strings, or {text, start, end}) joined as the pages show them: a space inside a paragraph,
// a line break where a new one starts.
export function joinTurns(turns) {
  let out = '';
  let prev = null;
  for (const raw of turns) {
    const turn = asTurn(raw);
    const text = String(turn.text ?? '').trim();
    if (!text) continue;
    if (prev) out += joins(prev, turn) ? ' ' : '\n';
    out += text;
    prev = { ...turn, text };
  }
  return out;
}

// A turn element's times as data-start/data-end (seconds; removed when unknown), which the grouping reads.
export function setTimes(el, { start, end } = {}) {
  for (const [key, v] of [['start', start], ['end', end]]) {
    if (seconds(v) === null) delete el.dataset[key];
    else el.dataset[key] = String(v);
  }
}

function turnOf(el) {
  const time = (v) => (v === undefined || v === '' ? null : seconds(Number(v)));
  return { text: el.textContent, start: time(el.dataset.start), end: time(el.dataset.end) };
}

const isTurn = (node) => node instanceof Element && node.classList.contains('turn') && !node.classList.contains('empty');

function lastTurn(para) {
  const turns = [...para.children].filter(isTurn);
  return turns[turns.length - 1] ?? null;
}

const firstTurn = (para) => [...para.children].find(isTurn) ?? null;

function sibling(el, step) {
  for (let n = el[step]; n; n = n[step]) if (isTurn(n)) return n;
  return null;
}

const isPara = (node) => node?.classList.contains('para') ?? false;

function newPara(box, before = null) {
  const para = document.createElement('div');
  para.className = 'para';
  box.insertBefore(para, before);
  return para;
}

// A real space between the turns of a paragraph (selected and copied text, screen readers), none at its ends.
function spaces(para) {
  for (const n of [...para.childNodes]) if (n.nodeType === Node.TEXT_NODE) n.remove();
  for (const el of [...para.children].slice(1)) el.before(' ');
}

// `from` and the elements after it in its paragraph move to a new paragraph right after it; returns that one.
function split(box, para, from) {
  const moved = [];
  for (let n = from; n; n = n.nextElementSibling) moved.push(n);
  const next = newPara(box, para.nextElementSibling);
  next.append(...moved);
  spaces(next);
  spaces(para);
  return next;
}

// The paragraph after `para` joins it.
function merge(para, next) {
  para.append(...next.children);
  next.remove();
  spaces(para);
}

// Appends a new turn element: into the last paragraph if it runs on from that one's last turn (joins()).
export function appendTurn(box, el) {
  const last = box.lastElementChild;
  const prev = isPara(last) ? lastTurn(last) : null;
  const para = prev && joins(turnOf(prev), turnOf(el)) ? last : newPara(box);
  para.append(el);
  spaces(para);
}

// The text or times of `el` changed: it leaves the paragraph of the turn before it, or joins it, and the turns
// after it stay in its paragraph or move to one of their own, as joins() now says.
export function settle(box, el) {
  let para = el.parentElement;
  if (!isPara(para) || !isTurn(el)) return;
  const before = sibling(el, 'previousElementSibling');
  if (before) {
    if (!joins(turnOf(before), turnOf(el))) para = split(box, para, el);
  } else {
    const prevPara = para.previousElementSibling;
    const last = isPara(prevPara) ? lastTurn(prevPara) : null;
    if (last && joins(turnOf(last), turnOf(el))) {
      merge(prevPara, para);
      para = prevPara;
    }
  }
  const after = sibling(el, 'nextElementSibling');
  if (after) {
    if (!joins(turnOf(el), turnOf(after))) split(box, para, el.nextElementSibling);
  } else {
    const next = para.nextElementSibling;
    const first = isPara(next) ? firstTurn(next) : null;
    if (isPara(next) && joins(turnOf(el), first ? turnOf(first) : {})) merge(para, next);
  }
}

// Builds the paragraphs of `box` from turn elements: `els` replace everything in it (a snapshot); without them,
// the turns already in it are grouped, other children kept (the server's rendering of the page).
export function regroup(box, els = null) {
  if (els) {
    box.replaceChildren();
  } else {
    els = [...box.querySelectorAll('.turn')];
    box.replaceChildren(...[...box.children].filter((n) => !n.classList.contains('turn')));
  }
  for (const el of els) appendTurn(box, el);
}
