// The "Caption text" panel's parsing (static/textrules.js): one `from => to` a line, key terms one a line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseForm } from '../../static/textrules.js';

const cases = [
  ['caption relay => Caption Relay\n\n  gonna=>going to ', false, 'Flux\n\n Caption Relay ',
    { rules: { replacements: [['caption relay', 'Caption Relay'], ['gonna', 'going to']], profanity: false, keyterms: ['Flux', 'Caption Relay'] } }],
  ['um =>', true, '', { rules: { replacements: [['um', '']], profanity: true, keyterms: [] } }],
  ['', false, '', { rules: { replacements: [], profanity: false, keyterms: [] } }],
  ['a => b => c', false, '', { rules: { replacements: [['a', 'b => c']], profanity: false, keyterms: [] } }],
];

test('parseForm: rules and key terms as the API takes them', () => {
  for (const [replacements, profanity, keyterms, expected] of cases) {
    assert.deepEqual(parseForm(replacements, profanity, keyterms), expected);
  }
});

test('parseForm: a line without "=>" or with nothing before it is refused, naming the line', () => {
  assert.match(parseForm('ok => fine\ncaption test', false, '').error, /Line 2 .* needs "=>"/);
  assert.match(parseForm(' => x', false, '').error, /Line 1 .* nothing to replace/);
});
