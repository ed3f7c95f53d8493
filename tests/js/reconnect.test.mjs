// Unit tests for the page's reconnect policy (static/reconnect.js) and the transcript's recovery of open
// turns across a reconnect (static/transcript.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AudioQueue, BACKOFF, GIVE_UP_MS, backoffDelay, clockTime, decide, droppedNotice, isInputError } from '../../static/reconnect.js';
import { Transcript } from '../../static/transcript.js';
import { RelaySocket, listenUrl } from '../../static/socket.js';

test('backoff: 0.5, 1, 2, 4, then 5 s (the cap), without jitter at the middle of the range', () => {
  const mid = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 10, 100].map((a) => backoffDelay(a, { random: mid })),
    [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000]);
});

test('backoff: jitter stays within ±20 % and never passes the cap', () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const nominal = Math.min(BACKOFF.capMs, BACKOFF.firstMs * 2 ** attempt);
    const lo = backoffDelay(attempt, { random: () => 0 });
    const hi = backoffDelay(attempt, { random: () => 0.999999 });
    assert.equal(lo, Math.round(nominal * 0.8));
    assert.equal(hi, Math.min(BACKOFF.capMs, Math.round(nominal * 1.2)));
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= lo && d <= hi && d <= BACKOFF.capMs, `${attempt}: ${d}`);
    }
  }
  // Different pages spread out: not all the same delay.
  assert.ok(new Set(Array.from({ length: 20 }, () => backoffDelay(3))).size > 1);
});

test('backoff: retry_after from the server is a floor, even above the cap', () => {
  assert.equal(backoffDelay(0, { retryAfter: 7, random: () => 0.5 }), 7000);
  assert.equal(backoffDelay(4, { retryAfter: 1, random: () => 0.5 }), 5000);
  assert.equal(backoffDelay(0, { retryAfter: null, random: () => 0.5 }), 500);
  assert.equal(backoffDelay(0, { retryAfter: -3, random: () => 0.5 }), 500);
});

test('backoff: the attempts up to the give-up time are many (about two minutes of trying)', () => {
  let t = 0;
  let n = 0;
  while (t + backoffDelay(n, { random: () => 0.5 }) <= GIVE_UP_MS) t += backoffDelay(n++, { random: () => 0.5 });
  assert.ok(GIVE_UP_MS === 120000 && n >= 20, n);
});

test('decide: which end of a connection resumes, starts fresh, or stops', () => {
  const live = { everLive: true, canResume: true };
  const cases = [
    // [situation, expected action]
    [{ ...live, closedReason: 'server_restart' }, 'resume'],
    [{ ...live, closedReason: null }, 'resume'], // dropped socket (1006), no closed message
    [{ ...live, closedReason: 'upstream_error', error: { code: 'upstream_unavailable', retryable: true } }, 'resume'],
    [{ ...live, closedReason: 'capacity', error: { code: 'capacity', retryable: true, retry_after: 7 } }, 'resume'],
    [{ ...live, closedReason: 'client_closed' }, 'end'],
    [{ ...live, closedReason: 'upstream_error', error: { code: 'upstream_auth', retryable: false } }, 'end'],
    [{ ...live, closedReason: 'idle_timeout', error: { code: 'idle_timeout', retryable: false } }, 'end'],
    [{ ...live, closedReason: 'resume_refused', error: { code: 'resume_refused', retryable: false } }, 'fresh'],
    [{ ...live, userStopped: true, closedReason: 'server_restart' }, 'end'], // a stopped session is never restarted
    [{ ...live, userStopped: true, closedReason: null }, 'end'],
    [{ ...live, userStopped: true, error: { code: 'resume_refused', retryable: false } }, 'end'],
    [{ everLive: true, canResume: false, closedReason: 'server_restart' }, 'fresh'], // no token: new session
    [{ everLive: false, canResume: false, closedReason: null }, 'end'], // first connect failed: report it
    [{ everLive: false, closedReason: 'unauthorized', error: { code: 'unauthorized', retryable: false } }, 'end'],
    // refused while the old process drains: retryable with retry_after
    [{ ...live, closedReason: 'server_restart', error: { code: 'server_restart', retryable: true, retry_after: 1 } }, 'resume'],
    // a bad-input error earlier on the connection does not make its drop fatal
    [{ ...live, closedReason: null, error: { code: 'bad_message', retryable: false } }, 'resume'],
  ];
  for (const [situation, want] of cases) assert.equal(decide(situation).action, want, JSON.stringify(situation));
  assert.equal(decide({ ...live, error: { code: 'rate_limited', retryable: true, retry_after: 7 } }).retryAfter, 7);
  assert.equal(decide({ ...live, closedReason: 'server_restart' }).retryAfter, null);
  assert.equal(decide({ ...live, closedReason: 'server_restart' }).why, 'server_restart');
  assert.equal(decide({ ...live }).why, 'dropped');
});

test('input errors are not session errors', () => {
  for (const code of ['frame_too_large', 'bad_audio', 'bad_message', 'unknown_message', 'buffer_full']) assert.ok(isInputError({ code }));
  for (const code of ['upstream_auth', 'resume_refused', 'server_restart', 'idle_timeout']) assert.ok(!isInputError({ code }));
  assert.ok(!isInputError(null));
});

test('AudioQueue keeps frames in order and drops the oldest past the bound, accounting for what it dropped', () => {
  const frame = (v, n = 2560) => new Uint8Array(n).fill(v).buffer;
  const q = new AudioQueue({ maxBytes: 3 * 2560 });
  assert.equal(q.push(frame(1), 1080), false);
  assert.equal(q.push(frame(2), 1160), false);
  assert.equal(q.push(frame(3), 1240), false);
  assert.equal(q.bytes, 3 * 2560);
  assert.equal(q.dropped, null);
  assert.equal(q.push(frame(4), 1320), true); // drops frame 1
  assert.equal(q.push(frame(5), 1400), true); // drops frame 2
  assert.equal(q.bytes, 3 * 2560);
  assert.equal(q.length, 3);
  assert.deepEqual(q.dropped, { bytes: 2 * 2560, from: 1000, to: 1160 }); // 80 ms frames ending at 1080, 1160
  assert.equal(q.droppedTotal, 2 * 2560);
  const out = q.drain();
  assert.deepEqual(out.map((b) => new Uint8Array(b)[0]), [3, 4, 5]);
  assert.equal(q.bytes, 0);
  assert.equal(q.length, 0);
  assert.deepEqual(q.takeDropped(), { bytes: 5120, from: 1000, to: 1160 });
  assert.equal(q.takeDropped(), null);
  assert.equal(q.droppedTotal, 5120);
  // A bigger frame drops as many old ones as it needs; one that can never fit is dropped itself.
  q.push(frame(6, 2560), 2000);
  q.push(frame(7, 2560), 2080);
  q.push(frame(8, 5120), 2240);
  assert.deepEqual(q.drain().map((b) => new Uint8Array(b)[0]), [7, 8]);
  assert.equal(q.push(frame(9, 4 * 2560), 3000), true);
  assert.equal(q.length, 0);
  assert.equal(q.bytes, 0);
});

test('AudioQueue default bound is 120 s of 16 kHz audio', () => {
  const q = new AudioQueue();
  assert.equal(q.maxBytes, 120 * 32000);
  const f = new ArrayBuffer(2560);
  for (let i = 0; i < 1500; i++) assert.equal(q.push(f, i * 80), false); // exactly 120 s
  assert.equal(q.push(f, 1500 * 80), true);
  assert.equal(q.bytes, 120 * 32000);
});

test('dropped-audio notice names the clock times', () => {
  const from = new Date(2024, 4, 1, 9, 5, 7).getTime();
  assert.equal(clockTime(from), '09:05:07');
  assert.equal(droppedNotice({ bytes: 64000, from, to: from + 2000 }),
    'The connection was down too long: audio from 09:05:07 to 09:05:09 could not be sent.');
});

test('listenUrl carries the resume token, encoded', () => {
  assert.equal(listenUrl({ protocol: 'http:', host: 'h:1' }, { sample_rate: 16000, resume: 'a+b/c=' }),
    'ws://h:1/ws/listen?sample_rate=16000&resume=a%2Bb%2Fc%3D');
});

test('RelaySocket.isClosing tells a socket that can no longer deliver', () => {
  class WS { constructor() { this.readyState = 0; } close() { this.readyState = 3; this.onclose?.({ code: 1006 }); } }
  const s = new RelaySocket('ws://x', {}, { WebSocketImpl: WS });
  assert.equal(s.isClosing, false);
  s.ws.readyState = 1;
  assert.equal(s.isClosing, false);
  s.ws.readyState = 2;
  assert.equal(s.isClosing, true);
});

test('Transcript.recover keeps an open turn as a recovered final line and drops empty ones', () => {
  const t = new Transcript();
  t.newSession();
  t.apply({ type: 'transcript', turn: 0, text: 'One two three.', final: true });
  t.apply({ type: 'transcript', turn: 1, text: 'Four five', final: false });
  t.apply({ type: 'turn', turn: 2, event: 'StartOfTurn' }); // no text yet
  const { changed, removed } = t.recover();
  assert.deepEqual(changed.map((e) => [e.turn, e.text, e.final, e.recovered]), [[1, 'Four five', true, true]]);
  assert.equal(removed.length, 1);
  assert.deepEqual(t.finals, ['One two three.', 'Four five']);
  assert.deepEqual(t.recover(), { changed: [], removed: [] }); // idempotent
});

test('Transcript after a resume: the server final of the recovered turn replaces it', () => {
  const t = new Transcript();
  t.newSession();
  t.apply({ type: 'transcript', turn: 1, text: 'Four five', final: false });
  t.recover();
  const r = t.apply({ type: 'transcript', turn: 1, text: 'Four five six.', final: true });
  assert.equal(r.committed, true);
  assert.equal(r.entry.recovered, false);
  assert.equal(t.apply({ type: 'turn', turn: 1, event: 'EndOfTurn' }).entry.final, true);
  assert.deepEqual(t.finals, ['Four five six.']);
  // an EndOfTurn straight after recovery changes nothing
  t.apply({ type: 'transcript', turn: 2, text: 'Seven', final: false });
  t.recover();
  assert.equal(t.apply({ type: 'turn', turn: 2, event: 'EndOfTurn' }), null);
  assert.deepEqual(t.finals, ['Four five six.', 'Seven']);
});

test('Transcript after a resume: a new turn reusing the number keeps the recovered line', () => {
  const t = new Transcript();
  t.newSession();
  t.apply({ type: 'transcript', turn: 0, text: 'One two three.', final: true });
  t.apply({ type: 'transcript', turn: 1, text: 'Four five', final: false });
  t.recover();
  // the server never committed turn 1 (killed), so its next turn is 1 again
  t.apply({ type: 'turn', turn: 1, event: 'StartOfTurn' });
  t.apply({ type: 'transcript', turn: 1, text: 'Seven', final: false });
  const r = t.apply({ type: 'transcript', turn: 1, text: 'Seven eight.', final: true });
  assert.equal(r.committed, true);
  t.apply({ type: 'transcript', turn: 2, text: 'Nine.', final: true });
  assert.deepEqual(t.finals, ['One two three.', 'Four five', 'Seven eight.', 'Nine.']);
  assert.equal(new Set([...t.entries.keys()]).size, 4);
  // an interim (no StartOfTurn seen) for a recovered number is also a new turn
  t.apply({ type: 'transcript', turn: 3, text: 'Ten', final: false });
  t.recover();
  t.apply({ type: 'transcript', turn: 3, text: 'Eleven', final: false });
  assert.deepEqual(t.finals, ['One two three.', 'Four five', 'Seven eight.', 'Nine.', 'Ten']);
  // a fresh server session keeps everything and numbers anew
  t.newSession();
  t.apply({ type: 'transcript', turn: 0, text: 'Fresh.', final: true });
  assert.equal(t.finals.at(-1), 'Fresh.');
  assert.equal(t.finals.length, 6);
});

test('Transcript keeps the agreed prefix of an interim (stable_chars, clamped) and all of a final', () => {
  const t = new Transcript();
  const cases = [
    [{ type: 'transcript', turn: 0, text: 'Hello wor', final: false, stable_chars: 5 }, 5],
    [{ type: 'transcript', turn: 0, text: 'Hello world', final: false, stable_chars: 99 }, 11], // clamped
    [{ type: 'transcript', turn: 0, text: 'Hello world how', final: false }, 15], // an older server: all stable
    [{ type: 'transcript', turn: 0, text: 'Hello world, how are you?', final: true }, 25],
  ];
  for (const [msg, stable] of cases) assert.equal(t.apply(msg).entry.stable, stable, msg.text);
});
