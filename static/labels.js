// Words for people: the state labels of the capture page, the widget and the viewer, and times in the reader's
// own time zone. DOM-free except localizeTimes (tests/js/labels.test.mjs). The machine-readable state stays in
// data-state (tests, and the widget's messages to its host page: docs/embed.md).

// Capture: what the microphone side is doing.
export const CAPTURE_LABELS = {
  idle: 'Ready',
  connecting: 'Connecting…',
  live: 'Listening',
  reconnecting: 'Reconnecting…',
  closed: 'Stopped',
  error: 'Error',
};

// Viewing: what the captions someone shares are doing.
export const VIEW_LABELS = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  paused: 'Paused',
  ended: 'Ended',
  revoked: 'Link turned off',
  deleted: 'Session deleted',
  error: 'Link not valid',
};

export function stateLabel(state, labels = CAPTURE_LABELS) {
  return labels[state] ?? String(state);
}

// "3 Dec 2026, 16:05" in the reader's locale and time zone (both overridable for tests); '' for a bad time.
// `when` is an ISO 8601 string or Unix seconds.
export function formatLocal(when, { locale, timeZone } = {}) {
  const ms = typeof when === 'number' ? when * 1000 : Date.parse(when);
  if (!Number.isFinite(ms)) return '';
  return new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'short', timeZone }).format(new Date(ms));
}

// Every <time data-local datetime="…"> under `root`: the server wrote UTC; show the reader's local time, and
// keep UTC in the title for whoever compares notes across time zones.
export function localizeTimes(root = document) {
  for (const el of root.querySelectorAll('time[data-local]')) {
    const text = formatLocal(el.getAttribute('datetime'));
    if (!text) continue;
    if (!el.title) el.title = el.textContent;
    el.textContent = text;
    el.dataset.localized = 'true';
  }
}
