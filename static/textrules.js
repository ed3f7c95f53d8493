// The capture page's "Caption text" panel (issue 19): word replacements, the profanity mask and key terms for
// this session. The server applies them (webapp/textrules.py) to what this page, viewers, exports and outputs
// get; this module only edits them and sends them with PUT /api/sessions/{id}/rules (the owner cookie).
// Rules set before Start are kept here (and in localStorage) and sent as soon as the session is `ready`.
// It hears the session's messages as `relay:message` events on document, dispatched by static/app.js.

const $ = (id) => globalThis.document?.getElementById(id) ?? null; // null under node (tests/js)
const el = {
  form: $('textrules-form'),
  replacements: $('textrules-replacements'),
  profanity: $('textrules-profanity'),
  keyterms: $('textrules-keyterms'),
  status: $('textrules-status'),
};
const STORE_KEY = 'captionRelay.textRules';
const hooks = { sessionId: null, sent: 0, last: null, status: '', answer: null };
if (globalThis.window) window.__textRules = hooks;

// "from => to", one a line; blank lines are skipped. Returns {rules} or {error}.
export function parseForm(replacementsText, profanity, keytermsText) {
  const replacements = [];
  const lines = replacementsText.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    const at = line.indexOf('=>');
    if (at < 0) return { error: `Line ${i + 1} of the replacements needs "=>", e.g. caption relay => Caption Relay.` };
    const from = line.slice(0, at).trim();
    const to = line.slice(at + 2).trim();
    if (!from) return { error: `Line ${i + 1} of the replacements has nothing to replace before "=>".` };
    replacements.push([from, to]);
  }
  const keyterms = keytermsText.split('\n').map((t) => t.trim()).filter(Boolean);
  return { rules: { replacements, profanity, keyterms } };
}

function show(text, kind = 'info') {
  hooks.status = text;
  el.status.textContent = text;
  el.status.dataset.kind = kind;
}

function current() {
  return parseForm(el.replacements.value, el.profanity.checked, el.keyterms.value);
}

function isEmpty(rules) {
  return !rules.replacements.length && !rules.profanity && !rules.keyterms.length;
}

function remember(rules) {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(rules));
  } catch {
    // private mode or full: the rules still apply to this session
  }
}

function restore() {
  let rules;
  try {
    rules = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
  } catch {
    return;
  }
  if (!rules || typeof rules !== 'object') return;
  el.replacements.value = (rules.replacements || []).map(([from, to]) => `${from} => ${to}`).join('\n');
  el.profanity.checked = rules.profanity === true;
  el.keyterms.value = (rules.keyterms || []).join('\n');
}

const KEYTERMS = {
  sent: 'Key terms sent to the recognizer…',
  next_connection: 'Key terms apply from the recognizer\'s next connection.',
  unsupported: 'The embedded recognizer does not use key terms.',
  unchanged: '',
  not_running: '',
};

async function send(rules) {
  const id = hooks.sessionId;
  if (!id) {
    show(isEmpty(rules) ? 'No rules.' : 'Saved: they apply when you press Start.');
    return;
  }
  const answerBefore = hooks.answer; // the recognizer's answer may come before the PUT's own response
  let response;
  try {
    response = await fetch(`/api/sessions/${encodeURIComponent(id)}/rules`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(rules),
      credentials: 'same-origin',
    });
  } catch {
    show('The server could not be reached; the rules were not applied. Try Apply again.', 'error');
    return;
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    // an error page: the status says enough
  }
  hooks.last = { status: response.status, body };
  if (!response.ok) {
    show(body.message || `The server refused the rules (HTTP ${response.status}).`, 'error');
    return;
  }
  hooks.sent += 1;
  const n = body.rules.replacements.length;
  const parts = [`Applied: ${n} replacement${n === 1 ? '' : 's'}${body.rules.profanity ? ', profanity masked' : ''}.`];
  if (body.keyterms === 'sent' && hooks.answer !== answerBefore) {
    parts.push(hooks.answer.message);
    show(parts.join(' '), hooks.answer.code === 'keyterms_refused' ? 'error' : 'info');
    return;
  }
  if (KEYTERMS[body.keyterms]) parts.push(KEYTERMS[body.keyterms]);
  show(parts.join(' '));
}

function onMessage(msg) {
  if (msg.type === 'ready' && typeof msg.session_id === 'string') {
    const fresh = msg.session_id !== hooks.sessionId;
    hooks.sessionId = msg.session_id;
    const parsed = current();
    // A resumed session keeps its stored rules; a new one gets what the panel holds.
    if (fresh && parsed.rules && !isEmpty(parsed.rules)) send(parsed.rules);
  } else if (msg.type === 'notice' && (msg.code === 'keyterms_applied' || msg.code === 'keyterms_refused')) {
    hooks.answer = { code: msg.code, message: msg.message };
    show(msg.message, msg.code === 'keyterms_refused' ? 'error' : 'info');
  }
}

if (el.form) {
  restore();
  el.form.addEventListener('submit', (e) => {
    e.preventDefault();
    const parsed = current();
    if (parsed.error) {
      show(parsed.error, 'error');
      return;
    }
    remember(parsed.rules);
    send(parsed.rules);
  });
  document.addEventListener('relay:message', (e) => onMessage(e.detail));
}
