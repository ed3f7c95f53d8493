// static/sse.js: the "Transcribe a file" panel's reader of the growing event stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseEvents } from '../../static/sse.js';

const delta = (d) => `data: {"type":"transcript.text.delta","delta":${JSON.stringify(d)}}\n\n`;

test('events come out as their blank line arrives, a partial one waits', () => {
  const body = delta('Hello') + delta(' world') + 'data: {"type":"transcript.te';
  const first = parseEvents(body, 0);
  assert.deepEqual(first.events.map((e) => e.delta), ['Hello', ' world']);
  const grown = body + 'xt.done","text":"Hello world"}\n\n';
  const second = parseEvents(grown, first.offset);
  assert.deepEqual(second.events, [{ type: 'transcript.text.done', text: 'Hello world' }]);
  assert.equal(second.offset, grown.length);
});

test('comments, other fields and non-JSON data are skipped', () => {
  const body = ': keep-alive\n\nevent: x\ndata: not json\n\n' + delta('ok');
  assert.deepEqual(parseEvents(body, 0).events.map((e) => e.delta), ['ok']);
});
