// Unit tests for the page's DOM-free parts: the socket queue, the URL, the transcript model.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelaySocket, listenUrl } from '../../static/socket.js';
import { Transcript, downloadName } from '../../static/transcript.js';
import { audioConstraints } from '../../static/capture.js';

class FakeWebSocket {
  constructor(url) { this.url = url; this.readyState = 0; this.sent = []; FakeWebSocket.last = this; }
  send(data) { this.sent.push(data); }
  close() { this.readyState = 3; this.onclose?.({ code: 1000, reason: '', wasClean: true }); }
  open() { this.readyState = 1; this.onopen?.(); }
  receive(data) { this.onmessage?.({ data }); }
}

test('listenUrl follows the page scheme and host', () => {
  assert.equal(listenUrl({ protocol: 'https:', host: 'cap.example:8443' }), 'wss://cap.example:8443/ws/listen?sample_rate=16000');
  assert.equal(listenUrl({ protocol: 'http:', host: 'localhost:8000' }), 'ws://localhost:8000/ws/listen?sample_rate=16000');
});

test('RelaySocket queues audio and text sent before open, in order, then sends directly', () => {
  const sent = [];
  const got = [];
  const sock = new RelaySocket('ws://x/ws/listen', { sent: (d) => sent.push(d), message: (m) => got.push(m) }, { WebSocketImpl: FakeWebSocket });
  const ws = FakeWebSocket.last;
  assert.equal(ws.binaryType, 'arraybuffer');
  const a = new ArrayBuffer(2560), b = new ArrayBuffer(2560);
  sock.send(a);
  sock.send(b);
  sock.send({ type: 'CloseStream' });
  assert.equal(ws.sent.length, 0);
  assert.equal(sock.queuedCount, 3);
  ws.open();
  assert.deepEqual(ws.sent, [a, b, '{"type":"CloseStream"}']);
  assert.equal(sent.length, 3);
  const c = new ArrayBuffer(10);
  sock.send(c);
  assert.equal(ws.sent[3], c);
  ws.receive('{"type":"ready","session_id":"s1","backend":"local","sample_rate":16000}');
  ws.receive('not json');
  ws.receive(new ArrayBuffer(4));
  assert.deepEqual(got, [{ type: 'ready', session_id: 's1', backend: 'local', sample_rate: 16000 }]);
  sock.close();
  sock.send(new ArrayBuffer(2)); // after close: silently dropped
  assert.equal(ws.sent.length, 4);
});

test('Transcript: interim replaces in place, final commits, late interim ignored, sessions kept apart', () => {
  const t = new Transcript();
  t.newSession();
  t.apply({ type: 'turn', turn: 0, event: 'StartOfTurn' });
  t.apply({ type: 'transcript', turn: 0, text: 'hello', final: false });
  let r = t.apply({ type: 'transcript', turn: 0, text: 'hello world', final: false });
  assert.equal(r.entry.text, 'hello world');
  assert.equal(t.entries.size, 1);
  t.apply({ type: 'turn', turn: 0, event: 'EagerEndOfTurn' });
  assert.equal(r.entry.eager, true);
  r = t.apply({ type: 'transcript', turn: 0, text: 'Hello world.', final: true });
  assert.equal(r.committed, true);
  assert.equal(r.entry.eager, false);
  assert.equal(t.apply({ type: 'transcript', turn: 0, text: 'stale', final: false }), null);
  t.apply({ type: 'transcript', turn: 1, text: 'second', final: false });
  assert.deepEqual(t.finals, ['Hello world.']);
  t.newSession();
  t.apply({ type: 'transcript', turn: 0, text: 'New session.', final: true });
  assert.equal(t.entries.size, 3);
  assert.equal(t.finalText(), 'Hello world.\nNew session.\n');
  assert.equal(t.apply({ type: 'status', state: 'live' }), null);
  t.clear();
  assert.equal(t.finalText(), '');
});

test('copied text starts a line where a turn starts 1.5 s or more after the last one ended', () => {
  const t = new Transcript();
  t.apply({ type: 'transcript', turn: 0, text: 'made amiable', final: false, start: 2, end: 4 });
  t.apply({ type: 'transcript', turn: 0, text: 'made amiable himself', final: true, start: 2, end: 5 });
  t.apply({ type: 'transcript', turn: 1, text: 'It was the best', final: true, start: 6.5, end: 8 });
  t.apply({ type: 'transcript', turn: 2, text: 'of times.', final: true, start: 8.2, end: 9 });
  assert.deepEqual(t.finalTurns.map((e) => [e.start, e.end]), [[2, 5], [6.5, 8], [8.2, 9]]);
  assert.equal(t.finalText(), 'made amiable himself\nIt was the best of times.\n');
});

test('downloadName and audio constraints', () => {
  assert.equal(downloadName(new Date(2024, 4, 1, 14, 32)), 'captions-2024-05-01-1432.txt');
  const off = audioConstraints({});
  assert.deepEqual(off.audio, { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false });
  const on = audioConstraints({ deviceId: 'abc', processing: true });
  assert.deepEqual(on.audio.deviceId, { exact: 'abc' });
  assert.equal(on.audio.echoCancellation && on.audio.noiseSuppression && on.audio.autoGainControl, true);
});
