// One capture session (Start … Stop) of the page (app.js) or the widget (embed.js), kept DOM-free so it can
// be unit-tested with a fake socket and fake timers (tests/js/session.test.mjs).
//
// A session outlives its sockets: when the socket drops (network change, laptop sleep, server restart) the
// mic keeps running, frames wait in the bounded queue, and the session reconnects with backoff using the
// newest resume token from `ready` (static/reconnect.js has the policy; a token is good once, so each
// resumed `ready` brings the next one). On the new `ready` the queued audio goes first, then live frames.
// A session the user stopped is never restarted.
//
// It reports through `on` callbacks, all optional:
//   state(state)                 'connecting' | 'live' | 'reconnecting' | 'closed' | 'error'; `ended` is set
//                                before the last one
//   ready({sessionId, shareUrl, shortUrl, resumed})   shortUrl: the short link (/v/<id>), or null
//   change({entry, committed})   a transcript entry (static/transcript.js) to show
//   remove(key)                  a transcript entry to take away (an empty open turn at a drop)
//   notice(key, text, kind)      a message for the user; kind 'info' | 'error'; a key names one to update in place
//   error({code, message, key})  an error for the user (also in stats.lastError); key as for notice
//   message(msg)                 every server message, as received
//   started(capture)             the mic is open and the first socket made (take the wake lock)
//   captureStopped()             the mic is released (drop the wake lock, zero the level meter)
import { describeCaptureError } from './capture.js';
import { AudioQueue, BYTES_PER_SECOND, GIVE_UP_MS, backoffDelay, decide, droppedNotice, isInputError } from './reconnect.js';
import { RelaySocket, listenUrl } from './socket.js';

export const CONNECT_TIMEOUT_MS = 15000; // socket not open by then: treat as a failure
export const CLOSE_TIMEOUT_MS = 10000; // after CloseStream, wait this long for the server's "closed"

const EVENTS = ['state', 'ready', 'change', 'remove', 'notice', 'error', 'message', 'started', 'captureStopped'];

// Server messages are phrases or sentences: end them with one full stop before adding more text.
function sentence(text) {
  const t = String(text || '').trim();
  return /[.!?…]$/.test(t) ? t : `${t}.`;
}

export class CaptureSession {
  // capture(onFrame): resolves once audio flows with {finish(): Promise<ArrayBuffer|null>, …} (capture.js)
  // location: {protocol, host} of the server; params: extra /ws/listen query parameters (the widget's key)
  // transcript: a Transcript; stats: an object the session keeps its counters in (the page's test hooks)
  constructor({ capture, location, params = {}, transcript, stats = {}, on = {}, WebSocket = globalThis.WebSocket,
    timers = { setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (t) => clearTimeout(t) }, now = Date.now,
    random = Math.random, describeError = describeCaptureError }) {
    this.openCapture = capture;
    this.location = location;
    this.params = params;
    this.transcript = transcript;
    this.WebSocket = WebSocket;
    this.timers = timers;
    this.now = now;
    this.random = random;
    this.describeError = describeError;
    this.on = Object.fromEntries(EVENTS.map((name) => [name, on[name] ?? (() => {})]));
    this.stats = Object.assign(stats, {
      bytesSent: 0, framesSent: 0,
      sessionId: null, // the server session (the same across resumes)
      reconnects: 0, // successful resumes of this session
      queuedBytes: 0, // audio waiting for a socket (while disconnected)
      queuedPeak: 0, // the most that waited at once in this session
      droppedBytes: 0, // audio dropped from a full queue
      connections: [], // one per socket: {resume, sessionId, bytesSent, framesSent, closeCode, closedReason}
      lastError: null,
    });
    this.state = null;
    this.stopping = false;
    this.ended = false;
    this.fatal = false;
    this.failed = false;
    this.timedOut = false;
    this.upstreamDown = false;
    this.serverEnded = false;
    this.capture = null;
    this.conn = null;
    this.queue = new AudioQueue(); // frames waiting for a socket: before the first one exists, and while disconnected
    this.everLive = false;
    this.sessionId = null;
    this.token = null;
    this.attempt = 0;
    this.downSince = null;
    this.retryTimer = null;
    this.closeTimer = null;
  }

  async start() {
    this.transcript.newSession();
    this.#setState('connecting');
    // Microphone first: a denied or missing microphone must not open a recognizer session (it may be billed).
    // Frames captured before the socket exists or opens wait in order, so the first words are never lost.
    try {
      this.capture = await this.openCapture((buffer) => this.#sendAudio(buffer));
    } catch (err) {
      this.ended = true;
      this.fatal = true;
      this.#fail(err?.name || 'capture', this.describeError(err));
      this.#setState('error');
      return;
    }
    this.#connect({ resume: false });
    if (this.stopping) {
      this.#finish(); // Stop was pressed while the mic was opening.
      return;
    }
    this.on.started(this.capture);
  }

  async stop() {
    if (this.ended || this.stopping) return;
    this.stopping = true;
    this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.capture) await this.#finish(); // else start() finishes once the mic is open
  }

  finalize() {
    const c = this.conn;
    if (c && !this.stopping && c.flowing) c.socket.send({ type: 'Finalize' });
  }

  // Waiting to reconnect (e.g. the browser is back online): try now instead of at the end of the backoff.
  retryNow() {
    if (this.retryTimer) this.#reconnectNow();
  }

  #setState(state) {
    this.state = state;
    this.on.state(state);
  }

  #fail(code, message, key = null) {
    this.stats.lastError = { code, message };
    this.on.error({ code, message, key }); // a key replaces the notice it concludes (e.g. "retrying…")
  }

  #connect({ resume }) {
    const params = { sample_rate: 16000, ...this.params };
    if (resume) params.resume = this.token;
    const first = this.stats.connections.length === 0;
    const stats = { resume, sessionId: null, bytesSent: 0, framesSent: 0, closeCode: null, closedReason: null };
    this.stats.connections.push(stats);
    // The first socket takes audio at once (RelaySocket queues it until open, the server until `ready`);
    // a later one only on `ready`, so a long backlog never meets the server's pre-ready limit.
    const c = { resume, stats, opened: false, flowing: first, closedReason: null, error: null };
    this.conn = c;
    c.socket = new RelaySocket(listenUrl(this.location, params), {
      open: () => {
        c.opened = true;
        this.timers.clearTimeout(c.connectTimer);
      },
      message: (msg) => this.#onMessage(c, msg),
      close: (info) => this.#onClose(c, info),
      sent: (data) => {
        if (data instanceof ArrayBuffer) {
          this.stats.bytesSent += data.byteLength;
          this.stats.framesSent += 1;
          stats.bytesSent += data.byteLength;
          stats.framesSent += 1;
        }
      },
    }, { WebSocketImpl: this.WebSocket });
    c.connectTimer = this.timers.setTimeout(() => {
      if (!c.opened) c.socket.close(1000, 'connect timeout'); // the close event reports the failure
    }, CONNECT_TIMEOUT_MS);
    if (c.flowing) this.#flush(c);
  }

  // Audio from the capture: straight to a socket that takes it, else into the bounded queue.
  #sendAudio(buffer) {
    if (this.serverEnded) return; // the mic's last frames after the end: nothing will ever take them
    const c = this.conn;
    if (c && c.flowing && !c.socket.isClosing) {
      c.socket.send(buffer);
      return;
    }
    if (this.queue.push(buffer, this.now())) this.on.notice('dropped', droppedNotice(this.queue.dropped), 'error');
    this.stats.queuedBytes = this.queue.bytes;
    this.stats.queuedPeak = Math.max(this.stats.queuedPeak, this.queue.bytes);
    this.stats.droppedBytes = this.queue.droppedTotal;
  }

  #flush(c) {
    for (const buffer of this.queue.drain()) c.socket.send(buffer);
    this.stats.queuedBytes = 0;
  }

  #onMessage(c, msg) {
    this.on.message(msg);
    if (this.conn !== c) return;
    switch (msg.type) {
      case 'ready':
        this.#onReady(c, msg);
        break;
      case 'status':
        if (!this.fatal && (msg.state === 'live' || msg.state === 'reconnecting')) this.#setState(msg.state);
        if (msg.state === 'reconnecting' && msg.message) {
          // the server retries the recognizer by itself: say why while it does, once, updated in place
          this.upstreamDown = true;
          this.on.notice('upstream', `Waiting for the speech recognizer: ${sentence(msg.message)} Retrying…`, 'info');
        } else if (msg.state === 'live' && this.upstreamDown) {
          this.upstreamDown = false;
          this.on.notice('upstream', 'The speech recognizer answers again; captions continue.', 'info');
        }
        break;
      case 'transcript':
      case 'turn': {
        const change = this.transcript.apply(msg);
        if (change) this.on.change(change);
        break;
      }
      case 'gap':
      case 'notice': // e.g. finals_lost: the recording lacks some turns (this page's captions are whole)
        if (msg.message) this.on.notice(null, msg.message, 'info');
        break;
      case 'error':
        this.#onError(c, msg);
        break;
      case 'closed':
        c.closedReason = msg.reason || 'closed';
        c.stats.closedReason = c.closedReason;
        if (this.stopping) break; // the socket's close event finishes the session
        if (this.#policy(c).action === 'end') {
          this.serverEnded = true;
          this.#endCapture(); // the server ended the session: release the mic now
        } else {
          c.flowing = false; // frames from now on wait for the next socket instead of a closing one
          this.#setState('reconnecting');
        }
        break;
      default:
        break;
    }
  }

  #onError(c, msg) {
    if (isInputError(msg)) {
      // one frame or message was dropped; the session goes on (one notice per kind, updated in place)
      this.#fail(msg.code, msg.message || 'The server ignored a message.', `input-${msg.code}`);
      return;
    }
    c.error = msg;
    if (msg.code === 'resume_refused') {
      this.on.notice('conn', `${msg.message || 'The session could not be resumed.'} Captions continue in a new session; the text so far is kept.`, 'info');
      return;
    }
    const said = msg.message || 'The server reported an error.';
    const key = this.upstreamDown ? 'upstream' : null;
    if (msg.retryable && this.everLive) {
      // the session retries by itself: one notice updated in place, not a new error per attempt
      const wait = msg.retry_after ? ` (try again in ${Math.ceil(msg.retry_after)} s)` : '';
      this.stats.lastError = { code: msg.code, message: `${said}${wait}` };
      this.on.notice('conn', `${said} Reconnecting…`, 'info');
      return;
    }
    if (msg.retryable) {
      // a passing fault, but this session ends (the server gave up before it was ever live): say what to do
      this.failed = true;
      const again = msg.retry_after ? `in ${Math.ceil(msg.retry_after)} s` : 'to try again';
      const operator = String(msg.code).startsWith('upstream') ? '; if this keeps happening, tell whoever runs this server' : '';
      const told = sentence(msg.message || 'the server reported an error');
      // the server's message may already say what to do: add only what it leaves out
      const todo = /press start/i.test(told) ? (operator ? ' If this keeps happening, tell whoever runs this server.' : '')
        : ` Press Start ${again}${operator}.`;
      this.#fail(msg.code, `Captioning stopped: ${told}${todo}`, key);
      return;
    }
    const wait = msg.retry_after ? ` (try again in ${Math.ceil(msg.retry_after)} s)` : '';
    this.#fail(msg.code, `${said}${wait}`, key);
    this.fatal = true;
    this.#setState('error');
  }

  #onReady(c, msg) {
    const id = typeof msg.session_id === 'string' ? msg.session_id : null;
    c.stats.sessionId = id;
    const resumed = c.resume && this.sessionId !== null && id === this.sessionId;
    if (this.sessionId !== null && !resumed) this.transcript.newSession(); // a new server session numbers turns from 0
    if (resumed) this.stats.reconnects += 1;
    if (this.downSince !== null) {
      const away = Math.round((this.now() - this.downSince) / 1000);
      this.on.notice('conn', resumed ? `Reconnected after ${away} s; captions continue.`
        : `Reconnected after ${away} s in a new session; the text so far is kept.`, 'info');
    }
    this.everLive = true;
    this.sessionId = id;
    this.stats.sessionId = id;
    // Resume tokens are good once: always keep the newest.
    this.token = typeof msg.resume_token === 'string' && msg.resume_token ? msg.resume_token : null;
    const text = (v) => (typeof v === 'string' ? v : null);
    this.on.ready({ sessionId: id, shareUrl: text(msg.share_url), shortUrl: text(msg.short_url), resumed });
    this.attempt = 0;
    this.downSince = null;
    this.#flush(c); // audio captured while disconnected, in order, before any new frame
    c.flowing = true;
    if (!this.fatal) this.#setState('live');
  }

  #policy(c) {
    return decide({ userStopped: this.stopping, closedReason: c.closedReason, error: c.error, everLive: this.everLive,
      canResume: Boolean(this.token) });
  }

  #onClose(c, { code }) {
    this.timers.clearTimeout(c.connectTimer);
    c.flowing = false;
    c.stats.closeCode = code;
    if (this.conn !== c) return;
    this.conn = null;
    this.timers.clearTimeout(this.closeTimer);
    const next = this.#policy(c);
    if (next.action !== 'end') {
      this.#scheduleReconnect(next);
      return;
    }
    const cleanAfterStop = this.stopping && code === 1000; // server ended without a closed event: still fine
    if (!c.closedReason && !this.timedOut && !this.fatal && !cleanAfterStop) {
      this.failed = true;
      const what = c.opened ? 'The connection to the server was lost' : 'Could not connect to the server';
      this.#fail('socket', `${what}${code && code !== 1006 ? ` (code ${code})` : ''}. Check your network and press Start again.`);
    }
    this.#dropQueue();
    this.#end(this.fatal || this.failed ? 'error' : 'closed');
  }

  // The socket is gone but the session goes on: keep open turns' text, then try again after a backoff
  // (at once after resume_refused: the server answered, it just wants a new session).
  #scheduleReconnect({ action, why, retryAfter }) {
    const now = this.now();
    if (this.downSince === null) {
      this.downSince = now;
      this.#recoverTranscript();
      if (why !== 'resume_refused') {
        this.on.notice('conn', 'The connection to the server was lost; reconnecting. Captions resume where they stopped.', 'info');
      }
    }
    this.#setState('reconnecting');
    if (action === 'fresh') this.token = null;
    const delay = why === 'resume_refused' ? 0 : backoffDelay(this.attempt, { retryAfter, random: this.random });
    if (now + delay - this.downSince > GIVE_UP_MS) {
      this.#giveUp();
      return;
    }
    this.attempt += 1;
    this.retryTimer = this.timers.setTimeout(() => this.#reconnectNow(), delay);
  }

  #reconnectNow() {
    this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ended || this.stopping || this.conn) return;
    this.#connect({ resume: Boolean(this.token) });
  }

  #giveUp() {
    this.failed = true;
    const minutes = Math.round(GIVE_UP_MS / 60000);
    this.#fail('reconnect_failed', `Could not reconnect to the server for ${minutes} minute${minutes === 1 ? '' : 's'}. `
      + 'The transcript so far is kept; press Start to caption again.');
    this.#dropQueue();
    this.#end('error');
  }

  // An open turn whose final will not reach this page stays as a final-looking line (entry.recovered).
  #recoverTranscript() {
    const { changed, removed } = this.transcript.recover();
    for (const key of removed) this.on.remove(key);
    for (const entry of changed) this.on.change({ entry, committed: true });
  }

  #dropQueue() {
    const unsent = this.queue.bytes;
    this.queue.drain();
    this.stats.queuedBytes = 0;
    if (unsent) this.on.notice(null, `${(unsent / BYTES_PER_SECOND).toFixed(1)} s of audio captured while disconnected could not be sent.`, 'info');
  }

  #end(state) {
    this.timers.clearTimeout(this.retryTimer);
    this.#endCapture();
    this.ended = true;
    this.#setState(state);
  }

  // Stops the mic. Idempotent; resolves with the capture's last partial frame.
  #endCapture() {
    this.on.captureStopped();
    return this.capture?.finish() ?? Promise.resolve(null);
  }

  // Normal stop: flush the last audio, then CloseStream; the socket stays open for the last events.
  // Disconnected at that moment: the session just ends here (it is never reopened after Stop).
  async #finish() {
    const rest = await this.#endCapture();
    if (this.ended) return; // the socket closed meanwhile and ended the session
    const c = this.conn;
    if (!c || c.socket.isClosing || c.closedReason) {
      if (rest) this.queue.push(rest, this.now());
      if (!c) {
        this.#dropQueue();
        this.#end('closed');
      }
      return; // a closing socket: its close event ends the session
    }
    c.flowing = true;
    this.#flush(c);
    if (rest) c.socket.send(rest);
    c.socket.send({ type: 'CloseStream' });
    this.closeTimer = this.timers.setTimeout(() => {
      this.timedOut = true;
      c.socket.close(1000, 'no closed event');
    }, CLOSE_TIMEOUT_MS);
  }
}
