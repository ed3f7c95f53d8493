// "Send captions to…" on the capture page (issue 19): add a session's outputs (YouTube, Zoom, OBS, webhook),
// show each one's state and counts, remove them. Talks to /api/sessions/{id}/outputs; the owner cookie goes
// with every same-origin request. The session id comes from app.js's `caption-relay:session` event.
const $ = (id) => document.getElementById(id);
const POLL_MS = 1500;
const PLACEHOLDERS = {
  youtube: 'http://upload.youtube.com/closedcaption?cid=…',
  zoom: 'https://wmcapi.zoom.us/closedcaption?id=…&signature=…',
  obs: 'ws://127.0.0.1:4455',
  webhook: 'https://hooks.example.org/captions',
};
const STATES = { active: 'sending', retrying: 'retrying', failed: 'failed', stopped: 'stopped' };

const el = {
  panel: $('outputs'),
  form: $('output-form'),
  type: $('output-type'),
  url: $('output-url'),
  passwordField: $('output-password-field'),
  password: $('output-password'),
  error: $('output-error'),
  secret: $('output-secret'),
  secretValue: $('output-secret-value'),
  list: $('output-list'),
};
let sessionId = null;
let timer = null;

const api = (path = '', init = {}) => fetch(`/api/sessions/${encodeURIComponent(sessionId)}/outputs${path}`, {
  credentials: 'same-origin',
  cache: 'no-store',
  ...init,
});

function showError(text) {
  el.error.textContent = text || '';
  el.error.hidden = !text;
}

function item(output) {
  const li = document.createElement('li');
  li.className = 'output';
  li.dataset.id = output.id;
  li.dataset.state = output.state;
  const head = document.createElement('span');
  head.className = 'output-what';
  head.textContent = `${output.type} · ${output.url}`;
  const state = document.createElement('span');
  state.className = 'output-state';
  state.textContent = output.detail || STATES[output.state] || output.state;
  const counts = document.createElement('span');
  counts.className = 'output-counts';
  counts.textContent = `${output.sent} sent, ${output.failed} failed`;
  li.append(head, ' ', state, ' ', counts);
  if (output.last_error && output.state !== 'active') {
    const err = document.createElement('span');
    err.className = 'output-last-error';
    err.textContent = output.last_error;
    li.append(' ', err);
  }
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'output-remove';
  remove.textContent = 'Remove';
  remove.setAttribute('aria-label', `Remove the ${output.type} output`);
  remove.addEventListener('click', () => removeOutput(output.id));
  li.append(' ', remove);
  return li;
}

async function refresh() {
  if (!sessionId) return;
  try {
    const response = await api();
    if (!response.ok) return;
    const { outputs } = await response.json();
    el.list.replaceChildren(...outputs.map(item));
  } catch {
    // offline for a moment (a server restart): the next poll shows it again
  }
}

function poll() {
  clearTimeout(timer);
  refresh().finally(() => {
    timer = setTimeout(poll, POLL_MS);
  });
}

async function removeOutput(id) {
  const response = await api(`/${encodeURIComponent(id)}`, { method: 'DELETE' });
  if (!response.ok && response.status !== 404) showError('Could not remove that output; try again.');
  poll();
}

el.type.addEventListener('change', () => {
  el.url.placeholder = PLACEHOLDERS[el.type.value];
  el.passwordField.hidden = el.type.value !== 'obs';
});

el.form.addEventListener('submit', async (event) => {
  event.preventDefault();
  showError('');
  el.secret.hidden = true;
  const body = { type: el.type.value, url: el.url.value.trim() };
  if (body.type === 'obs' && el.password.value) body.password = el.password.value;
  let response;
  try {
    response = await api('', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch {
    showError('The server could not be reached; try again.');
    return;
  }
  const answer = await response.json().catch(() => ({}));
  if (response.status !== 201) {
    showError(answer.message || `Not added (${answer.error || response.status}).`);
    return;
  }
  el.url.value = '';
  el.password.value = '';
  if (answer.secret) {
    el.secretValue.textContent = answer.secret;
    el.secret.hidden = false;
  }
  poll();
});

document.addEventListener('caption-relay:session', (event) => {
  sessionId = event.detail.sessionId;
  el.panel.hidden = !sessionId;
  poll();
});
