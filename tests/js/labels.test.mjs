// Unit tests for static/labels.js: the state words people read, and times in the reader's own time zone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CAPTURE_LABELS, VIEW_LABELS, formatLocal, stateLabel } from '../../static/labels.js';

test('capture states read as words for people, unknown ones as they are', () => {
  const cases = [['idle', 'Ready'], ['connecting', 'Connecting…'], ['live', 'Listening'],
    ['reconnecting', 'Reconnecting…'], ['closed', 'Stopped'], ['error', 'Error'], ['novel', 'novel']];
  for (const [state, label] of cases) assert.equal(stateLabel(state, CAPTURE_LABELS), label, state);
  assert.equal(stateLabel('idle'), 'Ready'); // capture labels by default
});

test('viewer states read as words for people', () => {
  const cases = [['live', 'Live'], ['reconnecting', 'Reconnecting…'], ['paused', 'Paused'], ['ended', 'Ended'],
    ['revoked', 'Link turned off'], ['deleted', 'Session deleted']];
  for (const [state, label] of cases) assert.equal(stateLabel(state, VIEW_LABELS), label, state);
});

test('formatLocal shows an instant in the given time zone and locale', () => {
  const iso = '2026-12-03T15:29:00+00:00'; // what the server renders
  const cases = [
    // [when, locale, timeZone, expected]
    [iso, 'en-GB', 'UTC', '3 Dec 2026, 15:29'],
    [iso, 'en-GB', 'Europe/Berlin', '3 Dec 2026, 16:29'],
    [iso, 'en-GB', 'America/New_York', '3 Dec 2026, 10:29'],
    [iso, 'en-GB', 'Asia/Kolkata', '3 Dec 2026, 20:59'],
    ['2026-12-03T23:30:00+00:00', 'en-GB', 'Pacific/Auckland', '4 Dec 2026, 12:30'], // the next day there
    [1796311740, 'en-GB', 'UTC', '3 Dec 2026, 15:29'], // Unix seconds, as the API gives them
    [iso, 'de-DE', 'Europe/Berlin', '03.12.2026, 16:29'],
  ];
  for (const [when, locale, timeZone, expected] of cases) {
    assert.equal(formatLocal(when, { locale, timeZone }).replace(/\u202f|\u00a0/g, ' '), expected, `${when} ${timeZone}`);
  }
});

test('formatLocal gives nothing for a time it cannot read, so the server\'s UTC text stays', () => {
  for (const bad of ['', 'not a time', undefined, null, Number.NaN]) assert.equal(formatLocal(bad), '', String(bad));
});
