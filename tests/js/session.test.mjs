// Unit tests for the capture session (static/session.js) that the page and the widget share: a fake
// WebSocket, fake timers and a fake microphone drive it through connect, ready, drops, resumes, give-up, stop.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CLOSE_TIMEOUT_MS, CONNECT_TIMEOUT_MS, CaptureSession } from '../../static/session.js';
import { GIVE_UP_MS } from '../../static/reconnect.js';
import { Transcript } from '../../static/transcript.js';

class FakeWebSocket {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.all.push(this);
  }
  get query() { return Object.fromEntries(this.url.searchParams); }
  get audio() { return this.sent.filter((d) => d instanceof ArrayBuffer).map((b) => new Uint8Array(b)[0]); }
  get texts() { return this.sent.filter((d) => typeof d === 'string').map((t) => JSON.parse(t).type); }
  send(data) { this.sent.push(data); }
  // the page closing: the browser reports the close event later (the test calls drop())
  close(code, reason) { this.closedWith = { code, reason }; this.readyState = 2; }
  open() { this.readyState = 1; this.onopen?.(); }
  receive(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '', wasClean: code !== 1006 }); }
}

// Timers on a clock the test moves.
function fakeClock() {
  let now = 1_000_000;
  let next = 1;
  const pending = new Map(); // id -> {at, fn, ms}
  return {
    now: () => now,
    timers: {
      setTimeout: (fn, ms) => { pending.set(next, { at: now + ms, fn, ms }); return next++; },
      clearTimeout: (id) => pending.delete(id),
    },
    delays: () => [...pending.values()].map((t) => t.ms),
    advance(ms) {
      const until = now + ms;
      for (;;) {
        const due = [...pending.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        pending.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = until;
    },
  };
}

const frame = (v) => new Uint8Array(2560).fill(v).buffer;
const settle = () => new Promise((resolve) => setImmediate(resolve));

// A session with a fake mic; `log` records every callback, `mic.frame(v)` captures one frame.
async function setup({ params, failMic = null, startNow = true } = {}) {
  FakeWebSocket.all = [];
  const clock = fakeClock();
  const log = [];
  const mic = { finished: 0, rest: null, frame: null };
  const transcript = new Transcript();
  let openMic;
  const micOpen = new Promise((resolve) => { openMic = resolve; });
  const on = {};
  for (const name of ['state', 'ready', 'change', 'remove', 'notice', 'error', 'message', 'started', 'captureStopped']) {
    on[name] = (...args) => log.push([name, ...args]);
  }
  on.change = ({ entry, committed }) => log.push(['change', { entry: { ...entry }, committed }]); // entries change in place
  const s = new CaptureSession({
    capture: async (onFrame) => {
      mic.frame = (v) => onFrame(frame(v));
      await micOpen;
      if (failMic) throw failMic;
      return { sampleRate: 48000, finish: async () => { mic.finished += 1; const r = mic.rest; mic.rest = null; return r; } };
    },
    location: { protocol: 'https:', host: 'cap.example' },
    params,
    transcript,
    WebSocket: FakeWebSocket,
    timers: clock.timers,
    now: clock.now,
    random: () => 0.5,
    on,
  });
  const started = s.start();
  if (startNow) {
    openMic();
    await started;
  }
  const ws = () => FakeWebSocket.all.at(-1);
  const states = () => log.filter((e) => e[0] === 'state').map((e) => e[1]);
  const of = (name) => log.filter((e) => e[0] === name).map((e) => e.slice(1));
  return { s, clock, log, mic, transcript, openMic, started, ws, states, of };
}

async function live(t, { token = 'tok1', id = 'sess1' } = {}) {
  t.ws().open();
  t.ws().receive({ type: 'ready', session_id: id, resume_token: token, share_url: '/s/abc', short_url: '/v/abcdefghij' });
}

test('the first socket takes audio at once; ready makes the session live; Stop flushes the last frame, then CloseStream', async () => {
  const t = await setup({ params: { key: 'K' } });
  t.mic.frame(1);
  assert.deepEqual(t.ws().query, { sample_rate: '16000', key: 'K' });
  assert.equal(t.ws().url.protocol, 'wss:');
  assert.deepEqual(t.ws().sent, []); // RelaySocket holds it until open
  await live(t);
  assert.deepEqual(t.ws().audio, [1]);
  assert.deepEqual(t.of('ready'), [[{ sessionId: 'sess1', shareUrl: '/s/abc', shortUrl: '/v/abcdefghij', resumed: false }]]);
  assert.equal(t.s.stats.sessionId, 'sess1');
  t.mic.frame(2);
  t.ws().receive({ type: 'transcript', turn: 0, text: 'Hello', final: false });
  t.ws().receive({ type: 'transcript', turn: 0, text: 'Hello there.', final: true });
  assert.deepEqual(t.of('change').map(([c]) => [c.entry.text, c.entry.final, c.committed]),
    [['Hello', false, false], ['Hello there.', true, true]]);
  t.s.finalize();
  t.mic.rest = frame(3);
  await t.s.stop();
  assert.equal(t.s.stopping, true);
  assert.deepEqual(t.ws().audio, [1, 2, 3]);
  assert.deepEqual(t.ws().texts, ['Finalize', 'CloseStream']);
  t.s.finalize(); // no Finalize once stopping
  assert.deepEqual(t.ws().texts, ['Finalize', 'CloseStream']);
  t.ws().receive({ type: 'closed', reason: 'client_closed' });
  t.ws().drop(1000);
  assert.deepEqual(t.states(), ['connecting', 'live', 'closed']);
  assert.equal(t.s.ended, true);
  assert.equal(t.mic.finished >= 1, true);
  assert.deepEqual(t.of('error'), []);
  assert.equal(t.s.stats.bytesSent, 3 * 2560);
  assert.equal(t.s.stats.framesSent, 3);
  assert.deepEqual(t.s.stats.connections, [{ resume: false, sessionId: 'sess1', bytesSent: 7680, framesSent: 3, closeCode: 1000, closedReason: 'client_closed' }]);
  assert.equal(t.of('message').length, 4);
  assert.deepEqual(t.clock.delays(), []); // the close timer went with the socket
});

test('a socket not open within the connect timeout is a failure the user is told about', async () => {
  const t = await setup();
  t.clock.advance(CONNECT_TIMEOUT_MS - 1);
  assert.equal(t.ws().closedWith, null);
  t.clock.advance(1);
  assert.deepEqual(t.ws().closedWith, { code: 1000, reason: 'connect timeout' });
  t.ws().drop(1006);
  assert.deepEqual(t.states(), ['connecting', 'error']);
  assert.deepEqual(t.of('error'), [[{ code: 'socket', key: null,
    message: 'Could not connect to the server. Check your network and press Start again.' }]]);
  assert.deepEqual(t.s.stats.lastError.code, 'socket');
  assert.equal(t.of('captureStopped').length, 1);
});

test('a dropped live socket resumes with the newest token; queued audio goes first on ready; open turns are kept', async () => {
  const t = await setup();
  await live(t, { token: 'tok1' });
  t.ws().receive({ type: 'transcript', turn: 0, text: 'One two three.', final: true });
  t.ws().receive({ type: 'transcript', turn: 1, text: 'Four five', final: false });
  t.ws().receive({ type: 'turn', turn: 2, event: 'StartOfTurn' });
  t.mic.frame(1);
  t.ws().drop(1006);
  assert.equal(t.s.state, 'reconnecting');
  // the open turn becomes a recovered final line; the empty one goes
  const recovered = t.of('change').at(-1)[0];
  assert.deepEqual([recovered.entry.text, recovered.entry.recovered, recovered.committed], ['Four five', true, true]);
  assert.equal(t.of('remove').length, 1);
  assert.match(t.of('notice').at(-1)[1], /connection to the server was lost; reconnecting/);
  t.mic.frame(2);
  t.mic.frame(3);
  assert.equal(t.s.stats.queuedBytes, 2 * 2560);
  assert.deepEqual(t.clock.delays(), [500]); // first backoff step
  t.clock.advance(500);
  const second = t.ws();
  assert.equal(FakeWebSocket.all.length, 2);
  assert.deepEqual(second.query, { sample_rate: '16000', resume: 'tok1' });
  second.open();
  t.mic.frame(4); // not before ready: the backlog must not meet the server's pre-ready limit
  assert.deepEqual(second.audio, []);
  t.clock.advance(3000);
  second.receive({ type: 'ready', session_id: 'sess1', resume_token: 'tok2' });
  t.mic.frame(5);
  assert.deepEqual(second.audio, [2, 3, 4, 5]);
  assert.equal(t.s.stats.queuedBytes, 0);
  assert.equal(t.s.stats.queuedPeak, 3 * 2560);
  assert.equal(t.s.stats.reconnects, 1);
  assert.equal(t.of('notice').at(-1)[1], 'Reconnected after 4 s; captions continue.');
  assert.deepEqual(t.of('ready').at(-1), [{ sessionId: 'sess1', shareUrl: null, shortUrl: null, resumed: true }]);
  // the server's final of the recovered turn replaces it
  second.receive({ type: 'transcript', turn: 1, text: 'Four five six.', final: true });
  assert.deepEqual(t.transcript.finals, ['One two three.', 'Four five six.']);
  // the next drop resumes with the token of the resumed ready: a token is good once
  second.drop(1006);
  t.clock.advance(500);
  assert.equal(t.ws().query.resume, 'tok2');
  assert.deepEqual(t.states(), ['connecting', 'live', 'reconnecting', 'live', 'reconnecting']);
});

test('resume_refused: a fresh session at once, without the token, keeping the text', async () => {
  const t = await setup();
  await live(t);
  t.ws().receive({ type: 'transcript', turn: 0, text: 'Kept.', final: true });
  t.ws().drop(1006);
  t.clock.advance(500);
  const refused = t.ws();
  refused.open();
  refused.receive({ type: 'error', code: 'resume_refused', message: 'The session could not be resumed.', retryable: false });
  refused.receive({ type: 'closed', reason: 'resume_refused' });
  refused.drop(1008);
  assert.deepEqual(t.clock.delays(), [0]);
  assert.match(t.of('notice').at(-1)[1], /^The session could not be resumed\. Captions continue in a new session/);
  t.clock.advance(0);
  assert.equal(FakeWebSocket.all.length, 3);
  assert.deepEqual(t.ws().query, { sample_rate: '16000' });
  t.ws().open();
  t.ws().receive({ type: 'ready', session_id: 'sess2', resume_token: 'tok9' });
  t.ws().receive({ type: 'transcript', turn: 0, text: 'New.', final: true }); // turn 0 again: a new entry
  assert.deepEqual(t.transcript.finals, ['Kept.', 'New.']);
  assert.equal(t.s.stats.reconnects, 0);
  assert.match(t.of('notice').at(-1)[1], /in a new session; the text so far is kept/);
  assert.equal(t.s.state, 'live');
  assert.deepEqual(t.of('error'), []);
});

test('the session gives up after GIVE_UP_MS without a ready and reports the audio it could not send', async () => {
  const t = await setup();
  await live(t);
  t.ws().drop(1006);
  for (let i = 0; i < 100 && !t.s.ended; i++) {
    t.mic.frame(i);
    t.clock.advance(Math.max(...t.clock.delays()));
    t.ws().drop(1006); // the server stays away
  }
  assert.equal(t.s.ended, true);
  assert.equal(t.s.state, 'error');
  const [err] = t.of('error').at(-1);
  assert.equal(err.code, 'reconnect_failed');
  assert.match(err.message, /^Could not reconnect to the server for 2 minutes\./);
  assert.match(t.of('notice').at(-1)[1], /s of audio captured while disconnected could not be sent\.$/);
  assert.equal(t.s.stats.queuedBytes, 0);
  const tries = FakeWebSocket.all.length;
  t.clock.advance(GIVE_UP_MS);
  assert.equal(FakeWebSocket.all.length, tries);
});

test('server errors: what the user is told, and whether the session goes on', async () => {
  const cases = [
    // [everLive, error, expected error text (null: none), expected state after the close]
    [false, { code: 'upstream_unavailable', message: 'The speech recognizer is not reachable', retryable: true },
      'Captioning stopped: The speech recognizer is not reachable. Press Start to try again; if this keeps happening, tell whoever runs this server.', 'error'],
    [false, { code: 'capacity', message: 'The server is full.', retryable: true, retry_after: 7.2 },
      'Captioning stopped: The server is full. Press Start in 8 s.', 'error'],
    [false, { code: 'upstream_unavailable', message: 'Gave up. Press Start to try again.', retryable: true },
      'Captioning stopped: Gave up. Press Start to try again. If this keeps happening, tell whoever runs this server.', 'error'],
    [false, { code: 'unauthorized', message: 'Sign in first.', retryable: false }, 'Sign in first.', 'error'],
    [true, { code: 'upstream_auth', message: 'The recognizer refused the server\'s API key.', retryable: false },
      'The recognizer refused the server\'s API key.', 'error'],
    [true, { code: 'upstream_unavailable', message: 'Lost the recognizer.', retryable: true }, null, 'reconnecting'],
  ];
  for (const [everLive, error, text, after] of cases) {
    const t = await setup();
    if (everLive) await live(t);
    else t.ws().open();
    t.ws().receive({ type: 'error', ...error });
    t.ws().receive({ type: 'status', state: 'live' }); // a late status never hides a fatal error
    t.ws().receive({ type: 'closed', reason: 'upstream_error' });
    t.ws().drop(1011);
    assert.deepEqual(t.of('error').map(([e]) => e.message), text ? [text] : [], JSON.stringify(error));
    assert.equal(t.s.state, after, JSON.stringify(error));
    if (!text) {
      assert.match(t.of('notice').find(([key]) => key === 'conn')[1], /^Lost the recognizer\. Reconnecting…$/);
      assert.equal(t.s.stats.lastError.code, 'upstream_unavailable');
    }
  }
});

test('a fatal error turns the indicator to error at once; the mic is released as soon as the server says closed', async () => {
  const t = await setup();
  await live(t);
  t.ws().receive({ type: 'error', code: 'idle_timeout', message: 'No audio for too long.', retryable: false });
  assert.equal(t.s.state, 'error');
  assert.equal(t.s.ended, false);
  t.ws().receive({ type: 'closed', reason: 'idle_timeout' });
  assert.equal(t.of('captureStopped').length, 1);
  assert.equal(t.mic.finished, 1);
  t.ws().readyState = 2; // the server's close frame is in
  t.mic.frame(9); // the worklet's tail: not "audio captured while disconnected"
  t.ws().drop(1000);
  assert.equal(t.s.ended, true);
  assert.deepEqual(t.of('error').length, 1); // no second "connection lost" error
  assert.deepEqual(t.of('notice'), []);
});

test('input errors and server notices are shown and the session goes on', async () => {
  const t = await setup();
  await live(t);
  t.ws().receive({ type: 'error', code: 'bad_audio', message: 'A frame was not audio.', retryable: false });
  t.ws().receive({ type: 'error', code: 'bad_message', retryable: false });
  t.ws().receive({ type: 'notice', code: 'finals_lost', message: 'Some turns are missing from the recording.' });
  t.ws().receive({ type: 'gap' });
  assert.deepEqual(t.of('error').map(([e]) => [e.key, e.message]),
    [['input-bad_audio', 'A frame was not audio.'], ['input-bad_message', 'The server ignored a message.']]);
  assert.deepEqual(t.of('notice'), [[null, 'Some turns are missing from the recording.', 'info']]);
  t.ws().drop(1006); // the drop after an input error still resumes
  assert.equal(t.s.state, 'reconnecting');
});

test('the server retrying its recognizer: one notice, updated in place, with the reason', async () => {
  const t = await setup();
  await live(t);
  t.ws().receive({ type: 'status', state: 'reconnecting', message: 'connection refused' });
  t.ws().receive({ type: 'status', state: 'live' });
  assert.deepEqual(t.of('notice'), [
    ['upstream', 'Waiting for the speech recognizer: connection refused. Retrying…', 'info'],
    ['upstream', 'The speech recognizer answers again; captions continue.', 'info'],
  ]);
  assert.deepEqual(t.states(), ['connecting', 'live', 'reconnecting', 'live']);
  // while it is down, the error that ends it replaces that notice
  t.ws().receive({ type: 'status', state: 'reconnecting', message: 'timed out' });
  t.ws().receive({ type: 'error', code: 'upstream_auth', message: 'Key refused.', retryable: false });
  assert.equal(t.of('error').at(-1)[0].key, 'upstream');
});

test('a server restart closes with `closed`: audio waits for the next socket instead of the closing one', async () => {
  const t = await setup();
  await live(t);
  t.ws().receive({ type: 'closed', reason: 'server_restart' });
  assert.equal(t.s.state, 'reconnecting');
  t.mic.frame(7);
  assert.deepEqual(t.ws().audio, []);
  assert.equal(t.s.stats.queuedBytes, 2560);
  t.ws().drop(1012);
  assert.equal(t.s.stats.connections[0].closedReason, 'server_restart');
  t.s.retryNow(); // e.g. back online: no need to wait for the backoff
  assert.equal(FakeWebSocket.all.length, 2);
  assert.deepEqual(t.clock.delays(), [CONNECT_TIMEOUT_MS]);
});

test('Stop while disconnected ends the session for good and reports the unsent audio', async () => {
  const t = await setup();
  await live(t);
  t.ws().drop(1006);
  t.mic.frame(1);
  t.mic.rest = frame(2);
  await t.s.stop();
  assert.equal(t.s.ended, true);
  assert.equal(t.s.state, 'closed');
  assert.equal(t.of('notice').at(-1)[1], '0.2 s of audio captured while disconnected could not be sent.');
  t.clock.advance(60000);
  assert.equal(FakeWebSocket.all.length, 1);
  await t.s.stop(); // idempotent
});

test('Stop while the mic is opening finishes once it is open', async () => {
  const t = await setup({ startNow: false });
  assert.deepEqual(t.states(), ['connecting']);
  const stopped = t.s.stop();
  t.openMic();
  await t.started;
  await stopped;
  await settle();
  assert.equal(t.of('started').length, 0); // no wake lock for a session already stopping
  t.ws().open();
  assert.deepEqual(t.ws().texts, ['CloseStream']);
  t.clock.advance(CLOSE_TIMEOUT_MS); // no `closed` from the server: the page closes
  assert.deepEqual(t.ws().closedWith, { code: 1000, reason: 'no closed event' });
  t.ws().drop(1000);
  assert.equal(t.s.state, 'closed');
  assert.deepEqual(t.of('error'), []);
});

test('a microphone that fails opens no socket', async () => {
  const err = Object.assign(new Error('denied'), { name: 'NotAllowedError' });
  const t = await setup({ failMic: err });
  assert.equal(FakeWebSocket.all.length, 0);
  assert.equal(t.s.ended, true);
  assert.deepEqual(t.states(), ['connecting', 'error']);
  assert.equal(t.of('error')[0][0].code, 'NotAllowedError');
  assert.match(t.of('error')[0][0].message, /^Microphone access was denied/);
  await t.s.stop(); // nothing to stop
});
