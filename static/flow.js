// Turns are not sentences: a recognizer ends a turn at a short pause, often mid-sentence (issue 22). The pages
// show the turns of one sentence as one paragraph (<div class="para">, its turns inline), and start a new
// paragraph after a turn whose text ends a sentence. The DOM part is given the box; the rule is pure.

const SENTENCE_END = /[.?!…]["'”’»)\]]*$/u;
// "Mr." "Mrs." "Dr." "St.": a title's abbreviation (capitalised, 2-3 letters, no vowel), as webapp/exports.py
const TITLE = /(?:^|\s)[B-DF-HJ-NP-TV-XZ][b-df-hj-np-tv-xz]{1,2}\.$/u;

export function endsSentence(text) {
  const t = String(text ?? '').trim();
  return SENTENCE_END.test(t) && !TITLE.test(t);
}

// Text of finals joined as the pages show them: a space inside a sentence, a line break after one.
export function joinTurns(texts) {
  let out = '';
  for (const raw of texts) {
    const text = String(raw ?? '').trim();
    if (!text) continue;
    if (out) out += endsSentence(out) ? '\n' : ' ';
    out += text;
  }
  return out;
}

const isTurn = (node) => node instanceof Element && node.classList.contains('turn') && !node.classList.contains('empty');

function lastTurn(para) {
  const turns = [...para.children].filter(isTurn);
  return turns[turns.length - 1] ?? null;
}

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

// Appends a new turn element: into the last paragraph if its last turn did not end a sentence.
export function appendTurn(box, el) {
  const last = box.lastElementChild;
  const prev = last?.classList.contains('para') ? lastTurn(last) : null;
  const para = prev && !endsSentence(prev.textContent) ? last : newPara(box);
  para.append(el);
  spaces(para);
}

// The text of `el` changed: the turns after it in its paragraph move to a paragraph of their own if it now ends
// a sentence, and the next paragraph joins this one if it no longer does.
export function settle(box, el) {
  const para = el.parentElement;
  if (!para?.classList.contains('para')) return;
  const after = [];
  for (let n = el.nextElementSibling; n; n = n.nextElementSibling) after.push(n);
  if (endsSentence(el.textContent)) {
    if (after.some(isTurn)) {
      const next = newPara(box, para.nextElementSibling);
      next.append(...after);
      spaces(next);
      spaces(para);
    }
  } else if (lastTurn(para) === el) {
    const next = para.nextElementSibling;
    if (next?.classList.contains('para')) {
      para.append(...next.children);
      next.remove();
      spaces(para);
    }
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
