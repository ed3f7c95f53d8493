// The live-viewer socket (/ws/watch/<token>), shared by the viewer page and the widget's view mode: JSON
// messages go to `message`; after a drop it reconnects with doubling backoff (1 s to 15 s), and every
// snapshot resets the backoff, since the snapshot catches the reader up.
export function watchLive(path, { message, down, isDone }) {
  let retryMs = 1000;
  const open = () => {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}${path}`);
    ws.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (!msg || typeof msg !== 'object') return;
      if (msg.type === 'snapshot') retryMs = 1000;
      message(msg);
    };
    ws.onclose = () => {
      if (isDone()) return;
      down(); // dropped (network, server restart, or too far behind): say so, then try again
      setTimeout(open, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    };
  };
  open();
}
