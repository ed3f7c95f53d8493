// The page's WebSocket to /ws/listen. Anything sent before the socket is open (audio captured while
// connecting, even CloseStream) is queued in order and sent on open, so the first words are never dropped.

export function listenUrl(loc, params = { sample_rate: 16000 }) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws/listen?${new URLSearchParams(params)}`;
}

export class RelaySocket {
  // handlers: {open(), message(obj), close({code, reason, wasClean}), error(), sent(data)}
  constructor(url, handlers = {}, { WebSocketImpl = globalThis.WebSocket } = {}) {
    this.handlers = handlers;
    this.queue = [];
    this.ws = new WebSocketImpl(url);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => {
      const queued = this.queue;
      this.queue = [];
      for (const item of queued) this.#transmit(item);
      handlers.open?.();
    };
    this.ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return; // the server only sends JSON text
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg && typeof msg === 'object') handlers.message?.(msg);
    };
    this.ws.onerror = () => handlers.error?.();
    this.ws.onclose = (e) => {
      this.queue = [];
      handlers.close?.({ code: e.code, reason: e.reason, wasClean: e.wasClean });
    };
  }

  // CLOSING or CLOSED: nothing sent now would be delivered.
  get isClosing() {
    return this.ws.readyState >= 2;
  }

  get queuedCount() {
    return this.queue.length;
  }

  // data: ArrayBuffer (audio) or a plain object (sent as JSON text).
  send(data) {
    const item = data instanceof ArrayBuffer ? data : JSON.stringify(data);
    if (this.ws.readyState === 0) this.queue.push(item);
    else if (this.ws.readyState === 1) this.#transmit(item);
    // CLOSING / CLOSED: nothing can be sent any more.
  }

  #transmit(item) {
    this.ws.send(item);
    this.handlers.sent?.(item);
  }

  close(code = 1000, reason = '') {
    if (this.ws.readyState <= 1) this.ws.close(code, reason);
  }
}
