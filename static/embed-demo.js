// Demo host page for the Caption Relay widget (docs/embed.md): receives the widget's messages and sends it
// start/stop commands. Copy it next to embed-demo.html; nothing here needs to change but the iframe's src.
const frame = document.getElementById('captions');
const widgetOrigin = new URL(frame.src).origin; // only the caption server may talk to this page
const $ = (id) => document.getElementById(id);
const lines = new Map(); // turn -> <p>, interim text replaced in place until the turn is final

window.__host = { messages: [] }; // read by the browser tests

window.addEventListener('message', (event) => {
  // Anything not from the widget frame on the caption server is ignored.
  if (event.origin !== widgetOrigin || event.source !== frame.contentWindow) return;
  const msg = event.data;
  if (!msg || typeof msg !== 'object' || msg.source !== 'caption-relay') return;
  window.__host.messages.push(msg);
  const item = document.createElement('li');
  item.textContent = JSON.stringify(msg);
  $('log').append(item);

  switch (msg.type) {
    case 'state': // idle, connecting, live, reconnecting, closed, ended, revoked, error
      $('state').textContent = msg.state;
      if (msg.share_url) {
        $('share-link').href = msg.share_url;
        $('share').hidden = false;
      }
      break;
    case 'transcript': { // {turn, text, final, start, end}
      if (!lines.has(msg.turn) || lines.get(msg.turn).dataset.final === 'true') {
        const p = document.createElement('p');
        lines.set(msg.turn, p);
        $('text').append(p);
      }
      const p = lines.get(msg.turn);
      p.textContent = msg.text;
      p.dataset.final = String(msg.final);
      break;
    }
    case 'error': // {code, message}
      $('state').textContent = `error: ${msg.message}`;
      break;
    default: // 'turn' events ({turn, event}) are not needed here
      break;
  }
});

function command(name) {
  frame.contentWindow.postMessage({ source: 'caption-relay-host', command: name }, widgetOrigin);
}

// The widget announces its state as soon as it loads, which may be before this script ran: ask for it again once
// the listener is in place, and when the frame (re)loads.
frame.addEventListener('load', () => command('state'));
command('state');

$('start').addEventListener('click', () => command('start'));
$('stop').addEventListener('click', () => command('stop'));
