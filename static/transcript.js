// Transcript state, kept apart from the DOM so it can be unit-tested: one entry per turn, whose text
// interim updates replace and a final commits. Turn numbers restart with each server session, so
// entries are keyed by session and turn.

export class Transcript {
  constructor() {
    this.entries = new Map(); // key -> {key, turn, text, final, eager}; Map keeps insertion order
    this.session = 0;
  }

  newSession() {
    this.session += 1;
  }

  clear() {
    this.entries.clear();
  }

  #entry(turn) {
    const key = `${this.session}-${turn}`;
    let entry = this.entries.get(key);
    if (!entry) {
      entry = { key, turn, text: '', final: false, eager: false };
      this.entries.set(key, entry);
    }
    return entry;
  }

  // Applies a server message; returns the entry it changed (or null) and whether it was just committed.
  apply(msg) {
    if (!Number.isInteger(msg.turn)) return null;
    if (msg.type === 'transcript') {
      const entry = this.#entry(msg.turn);
      if (entry.final && !msg.final) return null; // a late interim must not reopen a committed turn
      const committed = Boolean(msg.final) && !entry.final;
      entry.text = typeof msg.text === 'string' ? msg.text : '';
      entry.final = Boolean(msg.final);
      if (entry.final) entry.eager = false;
      return { entry, committed };
    }
    if (msg.type === 'turn') {
      const entry = this.#entry(msg.turn);
      if (msg.event === 'EagerEndOfTurn' && !entry.final) entry.eager = true;
      else if (msg.event === 'TurnResumed') entry.eager = false;
      return { entry, committed: false };
    }
    return null;
  }

  get finals() {
    return [...this.entries.values()].filter((e) => e.final && e.text).map((e) => e.text);
  }

  // The committed text, one turn per line (what copy and download use).
  finalText() {
    const lines = this.finals;
    return lines.length ? `${lines.join('\n')}\n` : '';
  }
}

// "captions-2024-05-01-1432.txt" in local time.
export function downloadName(date = new Date()) {
  const p = (n) => String(n).padStart(2, '0');
  return `captions-${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}-${p(date.getHours())}${p(date.getMinutes())}.txt`;
}
