// Unit tests for static/flow.js: turns of one sentence read as one paragraph (issue 22).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JOIN_GAP, endsSentence, joinTurns, joins } from '../../static/flow.js';

test('a sentence ends at . ? ! or an ellipsis, also before closing quotes and brackets', () => {
  const cases = [
    ['It was the best of times.', true], ['Is it?', true], ['Stop!', true], ['and then…', true],
    ['He said "go."', true], ['(as planned.)', true], ['the end.  ', true],
    ['it was the best of times,', false], ['how much there might', false], ['ill-disposed:', false],
    ['version 2.0 is', false], ['', false], [null, false],
    ['And Mr.', false], ['ask Dr.', false], ['Yes.', true], ['No.', true],
  ];
  for (const [text, ends] of cases) assert.equal(endsSentence(text), ends, String(text));
});

test('finals join with a space inside a sentence and a line break after one', () => {
  const cases = [
    [['How much there might', 'be prudently in his power.', 'He was not'], 'How much there might be prudently in his power.\nHe was not'],
    [['Hello world.', 'New session.'], 'Hello world.\nNew session.'],
    [['it was the best of times,', 'it was the worst of times.'], 'it was the best of times, it was the worst of times.'],
    [['  ', 'one', '', 'two.'], 'one two.'],
    [[], ''],
  ];
  for (const [turns, text] of cases) assert.equal(joinTurns(turns), text, JSON.stringify(turns));
});

test('a turn joins the last one if that did not end a sentence and it starts within JOIN_GAP of its end', () => {
  assert.equal(JOIN_GAP, 1.5); // as webapp/exports.py
  const open = 'He might even have been made amiable himself';
  const cases = [
    [{ text: open, end: 10 }, { text: 'It was', start: 11.6 }, false], // the pause seen in Chromium
    [{ text: open, end: 10 }, { text: 'It was', start: 11.5 }, false],
    [{ text: open, end: 10 }, { text: 'and he', start: 11.49 }, true],
    [{ text: open, end: 10 }, { text: 'and he', start: 10 }, true],
    [{ text: open, end: 10 }, { text: 'and he', start: 9.8 }, true], // overlapping times
    [{ text: open }, { text: 'and he', start: 30 }, true], // times unknown: it goes on
    [{ text: open, end: 10 }, { text: 'and he' }, true],
    [{ text: open, end: null }, { text: 'and he', start: null }, true],
    [{ text: open, end: 10 }, { text: 'and he', start: Number.NaN }, true],
    [{ text: 'the end.', end: 10 }, { text: 'Next', start: 10.2 }, false],
    [{ text: 'the end.' }, { text: 'Next' }, false],
    [{ text: 'ask Dr.', end: 10 }, { text: 'Manette', start: 10.4 }, true],
    [{ text: '', end: 10 }, { text: 'x', start: 10.1 }, true],
  ];
  for (const [prev, next, want] of cases) assert.equal(joins(prev, next), want, JSON.stringify([prev, next]));
});

test('joined text with times breaks the line at a pause as the pages break the paragraph', () => {
  const cases = [
    [[{ text: 'He might even have been made amiable himself', start: 2, end: 5 }, { text: 'It was the best of times', start: 6.7, end: 8 }],
      'He might even have been made amiable himself\nIt was the best of times'],
    [[{ text: 'How much there might', start: 0, end: 1.2 }, { text: 'be in his power.', start: 1.5, end: 3 }, { text: 'He', start: 3.1, end: 3.4 }],
      'How much there might be in his power.\nHe'],
    [[{ text: 'one', start: 0, end: 1 }, 'two', { text: 'three', start: 9, end: 10 }], 'one two three'], // a time unknown
    [[{ text: 'one', start: 0, end: 1 }, { text: ' ', start: 1.1, end: 1.2 }, { text: 'two', start: 5, end: 6 }], 'one\ntwo'],
  ];
  for (const [turns, text] of cases) assert.equal(joinTurns(turns), text, JSON.stringify(turns));
});
