// Reconnect policy of the capture page, kept DOM-free so it can be unit-tested:
// - backoffDelay(): when to try again after the browser socket dropped (exponential, jittered, capped);
// - decide(): what a socket's end means — resume the same session, start a fresh one, or stop for good;
// - AudioQueue: the microphone frames captured while disconnected, bounded, dropping the oldest.

export const BACKOFF = Object.freeze({ firstMs: 500, capMs: 5000, jitter: 0.2 });
export const GIVE_UP_MS = 120000; // stop trying to reconnect after this long without a `ready`
export const QUEUE_SECONDS = 120;
export const BYTES_PER_SECOND = 32000; // 16 kHz, 16-bit mono

// Delay before reconnect attempt `attempt` (0 = the first try after a drop): 0.5, 1, 2, 4, 5, 5, … s,
// each spread by ±jitter so that pages dropped together by a server restart do not come back in step,
// never above the cap, and never before the server's `retry_after` (seconds) when it gave one.
export function backoffDelay(attempt, { retryAfter = null, random = Math.random, firstMs = BACKOFF.firstMs,
  capMs = BACKOFF.capMs, jitter = BACKOFF.jitter } = {}) {
  const nominal = Math.min(capMs, firstMs * 2 ** Math.max(0, Math.min(attempt, 30)));
  const spread = nominal * (1 - jitter + 2 * jitter * random());
  const delay = Math.round(Math.min(capMs, spread));
  const floor = Number.isFinite(retryAfter) && retryAfter > 0 ? Math.round(retryAfter * 1000) : 0;
  return Math.max(delay, floor);
}

// Errors about one bad input (docs/protocol.md: "bad input never ends the session"): shown, but they
// neither end the session nor decide how a connection's end is handled.
export const INPUT_ERRORS = new Set(['frame_too_large', 'bad_audio', 'bad_message', 'unknown_message', 'buffer_full']);

export function isInputError(msg) {
  return INPUT_ERRORS.has(msg?.code);
}

// What to do once a connection of a capture session has ended.
//   userStopped: the user pressed Stop (the session must never be restarted)
//   closedReason: `reason` of the server's `closed` message, or null when the socket ended without one
//   error: the last `error` message of this connection ({code, retryable, retry_after}) or null
//   everLive: the session got a `ready` at least once (there is a session to continue)
//   canResume: a resume token is known
// Returns {action, retryAfter}; action is
//   'end'       the session is over (user stop, fatal error, or a first connection that never worked)
//   'resume'    reconnect with backoff and continue the same session (resume token)
//   'fresh'     start a new server session, keeping the page's text (resume refused, or no token)
export function decide({ userStopped = false, closedReason = null, error = null, everLive = false, canResume = false } = {}) {
  if (userStopped) return { action: 'end', why: 'user_stopped' };
  if (error?.code === 'resume_refused') return { action: 'fresh', why: 'resume_refused' };
  if (error && !error.retryable && !isInputError(error)) return { action: 'end', why: 'fatal' };
  if (closedReason === 'client_closed') return { action: 'end', why: 'client_closed' };
  if (!everLive) return { action: 'end', why: 'never_connected' }; // nothing to resume: report the failure
  const retryAfter = error && Number.isFinite(error.retry_after) ? error.retry_after : null;
  // server_restart, a retryable error, a dropped socket (no `closed` at all), or any other end of a live session
  return { action: canResume ? 'resume' : 'fresh', why: error ? 'retryable_error' : closedReason || 'dropped', retryAfter };
}

// Frames waiting to be sent, oldest first, at most maxBytes; older frames are dropped to make room, and
// the dropped stretch is accounted for (bytes, and the capture clock times it covered).
export class AudioQueue {
  constructor({ maxBytes = QUEUE_SECONDS * BYTES_PER_SECOND, bytesPerSecond = BYTES_PER_SECOND } = {}) {
    this.maxBytes = maxBytes;
    this.bytesPerSecond = bytesPerSecond;
    this.items = []; // {buffer, at}: `at` is the wall-clock ms when the frame's last sample was captured
    this.bytes = 0;
    this.dropped = null; // {bytes, from, to} since the last takeDropped()
    this.droppedTotal = 0;
  }

  get length() {
    return this.items.length;
  }

  // Returns true when older audio had to be dropped to make room.
  push(buffer, at = Date.now()) {
    const n = buffer.byteLength;
    let dropped = false;
    while (this.items.length && this.bytes + n > this.maxBytes) {
      const old = this.items.shift();
      this.bytes -= old.buffer.byteLength;
      this.#drop(old);
      dropped = true;
    }
    if (n > this.maxBytes) {
      this.#drop({ buffer, at }); // cannot ever fit
      return true;
    }
    this.items.push({ buffer, at });
    this.bytes += n;
    return dropped;
  }

  #drop(item) {
    const n = item.buffer.byteLength;
    const from = item.at - (n / this.bytesPerSecond) * 1000;
    if (!this.dropped) this.dropped = { bytes: 0, from, to: item.at };
    this.dropped.bytes += n;
    this.dropped.from = Math.min(this.dropped.from, from);
    this.dropped.to = Math.max(this.dropped.to, item.at);
    this.droppedTotal += n;
  }

  // Everything queued, oldest first; the queue is empty afterwards.
  drain() {
    const out = this.items.map((i) => i.buffer);
    this.items = [];
    this.bytes = 0;
    return out;
  }

  takeDropped() {
    const d = this.dropped;
    this.dropped = null;
    return d;
  }
}

// "14:03:07" in local time.
export function clockTime(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// The notice for audio dropped from a full queue.
export function droppedNotice(dropped) {
  return `The connection was down too long: audio from ${clockTime(dropped.from)} to ${clockTime(dropped.to)} could not be sent.`;
}
