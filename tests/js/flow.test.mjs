// Unit tests for static/flow.js: turns of one sentence read as one paragraph (issue 22).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { endsSentence, joinTurns } from '../../static/flow.js';

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
