// Transcript state, kept apart from the DOM so it can be unit-tested: one entry per turn, whose text
// interim updates replace and a final commits. Turn numbers restart with each server session, so
// entries are keyed by session and turn. A resumed session keeps its session (its turn numbers go on).
//
// When the socket drops, a turn still open (interim only) would never get its final on this page, so
// recover() keeps its last interim text as a final-looking line (entry.recovered). After the resume:
// - a final for that turn number with no new start before it is the server's own final of that very
//   turn: it replaces the recovered text;
// - a StartOfTurn or an interim for that number is a new turn that reuses the number (the server never
//   committed the old one): it gets a new entry, and the recovered line stays.

import { joinTurns } from './flow.js';

// The turn's times, seconds of the stream (docs/protocol.md): a paragraph breaks at a pause (static/flow.js).
function times(entry, msg) {
  if (Number.isFinite(msg.start)) entry.start = msg.start;
  if (Number.isFinite(msg.end)) entry.end = msg.end;
}

export class Transcript {
  constructor() {
    this.entries = new Map(); // key -> {key, turn, text, final, eager, recovered, start, end}, in insertion order
    this.session = 0;
    this.alias = new Map(); // turn -> key, for a turn number reused after a recovered line
    this.reuse = 0;
  }

  newSession() {
    this.session += 1;
    this.alias.clear();
  }

  clear() {
    this.entries.clear();
    this.alias.clear();
  }

  #entry(turn, { fresh = false } = {}) {
    let key = this.alias.get(turn) ?? `${this.session}-${turn}`;
    let entry = this.entries.get(key);
    if (entry?.recovered && fresh) {
      key = `${this.session}-${turn}.${++this.reuse}`;
      this.alias.set(turn, key);
      entry = null;
    }
    if (!entry) {
      entry = { key, turn, text: '', final: false, eager: false, recovered: false, start: null, end: null };
      this.entries.set(key, entry);
    }
    return entry;
  }

  // Applies a server message; returns the entry it changed (or null) and whether it was just committed.
  apply(msg) {
    if (!Number.isInteger(msg.turn)) return null;
    if (msg.type === 'transcript') {
      const entry = this.#entry(msg.turn, { fresh: !msg.final });
      if (entry.recovered) {
        // the server's final of the turn we kept from before the reconnect
        entry.text = typeof msg.text === 'string' && msg.text ? msg.text : entry.text;
        entry.recovered = false;
        times(entry, msg);
        return { entry, committed: true };
      }
      if (entry.final && !msg.final) return null; // a late interim must not reopen a committed turn
      times(entry, msg);
      const committed = Boolean(msg.final) && !entry.final;
      entry.text = typeof msg.text === 'string' ? msg.text : '';
      entry.final = Boolean(msg.final);
      // the interim's prefix the last two hypotheses agreed on (docs/protocol.md); the rest may still change
      const stable = Number.isInteger(msg.stable_chars) ? msg.stable_chars : entry.text.length;
      entry.stable = entry.final ? entry.text.length : Math.max(0, Math.min(stable, entry.text.length));
      if (entry.final) entry.eager = false;
      return { entry, committed };
    }
    if (msg.type === 'turn') {
      const entry = this.#entry(msg.turn, { fresh: msg.event === 'StartOfTurn' });
      if (entry.recovered) return null; // EndOfTurn etc. of the recovered turn: nothing to change
      if (msg.event === 'EagerEndOfTurn' && !entry.final) entry.eager = true;
      else if (msg.event === 'TurnResumed') entry.eager = false;
      return { entry, committed: false };
    }
    return null;
  }

  // The socket dropped: every turn still open keeps its last interim text as a (recovered) final line;
  // open turns with no text yet are removed. Returns {changed: [entries], removed: [keys]}.
  recover() {
    const changed = [];
    const removed = [];
    for (const entry of this.entries.values()) {
      if (entry.final) continue;
      if (!entry.text) {
        removed.push(entry.key);
        continue;
      }
      entry.final = true;
      entry.eager = false;
      entry.recovered = true;
      changed.push(entry);
    }
    for (const key of removed) this.entries.delete(key);
    return { changed, removed };
  }

  get finals() {
    return this.finalTurns.map((e) => e.text);
  }

  get finalTurns() {
    return [...this.entries.values()].filter((e) => e.final && e.text);
  }

  // The committed text, a line per paragraph as the page shows it (what copy and download use).
  finalText() {
    const text = joinTurns(this.finalTurns);
    return text ? `${text}\n` : '';
  }
}

// "captions-2024-05-01-1432.txt" in local time.
export function downloadName(date = new Date()) {
  const p = (n) => String(n).padStart(2, '0');
  return `captions-${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}-${p(date.getHours())}${p(date.getMinutes())}.txt`;
}
