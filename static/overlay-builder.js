// The viewer page's overlay builder: a form built from caption-style.js's PARAMS, a live preview (an iframe of
// the real overlay with &sample) and the browser-source address to copy. Opens with the "OBS overlay…"
// button, or with #overlay in the address (the /sessions page links there).
import { PARAMS, contrast, defaults, parseColor, parseParams, toQuery } from './caption-style.js';

const $ = (id) => document.getElementById(id);

function valuesText(p) {
  if (p.kind === 'choice') return p.choices.join(', ');
  if (p.kind === 'int') return `${p.min}–${p.max}`;
  if (p.kind === 'bool') return '1 or 0';
  return [p.transparent && 'transparent', p.none && 'none', p.alpha ? '#rgb, #rrggbb, #rrggbbaa' : '#rgb, #rrggbb', 'a name']
    .filter(Boolean).join(', ');
}

function defaultText(p) {
  if (p.kind === 'bool') return p.def ? '1' : '0';
  return String(p.def);
}

function field(p) {
  const wrap = document.createElement('div');
  wrap.className = 'builder-field';
  const label = document.createElement('label');
  label.htmlFor = `ov-${p.name}`;
  label.textContent = p.name;
  const hint = document.createElement('span');
  hint.className = 'builder-help';
  hint.id = `ov-${p.name}-help`;
  hint.textContent = p.help;
  let input;
  if (p.kind === 'choice') {
    input = document.createElement('select');
    for (const c of p.choices) input.append(new Option(c, c));
  } else if (p.kind === 'int') {
    input = document.createElement('input');
    Object.assign(input, { type: 'number', min: String(p.min), max: String(p.max), step: '1', inputMode: 'numeric' });
  } else if (p.kind === 'bool') {
    input = document.createElement('input');
    input.type = 'checkbox';
  } else {
    input = document.createElement('input');
    Object.assign(input, { type: 'text', spellcheck: false, maxLength: 12, placeholder: defaultText(p) });
  }
  input.id = `ov-${p.name}`;
  input.name = p.name;
  input.setAttribute('aria-describedby', hint.id);
  wrap.append(label, input, hint);
  return { wrap, input };
}

export function setupBuilder() {
  const dialog = $('overlay-builder');
  const open = $('overlay-open');
  if (!dialog || !open) return null;
  const form = $('overlay-form');
  const frame = $('overlay-preview');
  const url = $('overlay-url');
  const warn = $('overlay-warn');
  const base = defaults();
  const inputs = new Map();
  for (const p of PARAMS) {
    const { wrap, input } = field(p);
    inputs.set(p.name, input);
    form.append(wrap);
    const row = document.createElement('tr');
    for (const text of [p.name, valuesText(p), defaultText(p), p.help]) {
      const td = document.createElement('td');
      td.textContent = text;
      row.append(td);
    }
    $('overlay-params').append(row);
  }

  function set(values) {
    for (const p of PARAMS) {
      const input = inputs.get(p.name);
      if (p.kind === 'bool') input.checked = values[p.name];
      else input.value = String(values[p.name]);
    }
  }

  // The form's raw strings go through the same parser as the overlay's URL: what is shown is what OBS gets.
  function read() {
    const raw = new URLSearchParams();
    for (const p of PARAMS) {
      const input = inputs.get(p.name);
      raw.set(p.name, p.kind === 'bool' ? (input.checked ? '1' : '0') : input.value);
    }
    return parseParams(raw);
  }

  let timer = 0;
  function update() {
    const { values, rejected } = read();
    for (const [name, input] of inputs) input.setAttribute('aria-invalid', String(rejected.includes(name)));
    const query = toQuery(values, base);
    const address = new URL(dialog.dataset.overlay + (query ? `?${query}` : ''), location.href).href;
    url.value = address;
    const notes = [];
    if (rejected.length) notes.push(`Not valid, default used: ${rejected.join(', ')}.`);
    const behind = values.box !== 'none' ? values.box : values.bg !== 'transparent' ? values.bg : null;
    const text = parseColor(values.color);
    if (behind && text) {
      const ratio = contrast(text, behind.slice(0, 7));
      if (ratio < 4.5) notes.push(`Text on its background is ${ratio.toFixed(1)}:1; aim for at least 4.5:1.`);
    }
    warn.textContent = notes.join(' ');
    clearTimeout(timer);
    timer = setTimeout(() => {
      frame.src = `${dialog.dataset.overlay}?${query}${query ? '&' : ''}sample`;
    }, 200);
    window.__builder = { url: address, rejected, values };
  }

  set(base);
  form.addEventListener('input', update);
  form.addEventListener('change', update);
  form.addEventListener('submit', (e) => e.preventDefault());
  open.addEventListener('click', () => {
    dialog.showModal();
    update();
  });
  $('overlay-close').addEventListener('click', () => dialog.close());
  $('overlay-copy').addEventListener('click', async () => {
    const button = $('overlay-copy');
    try {
      await navigator.clipboard.writeText(url.value);
      button.textContent = 'Copied';
    } catch {
      url.select(); // clipboard refused: the address is selected for Ctrl+C
      button.textContent = 'Press Ctrl+C';
    }
    setTimeout(() => {
      button.textContent = 'Copy';
    }, 1500);
  });
  open.hidden = false;
  if (location.hash === '#overlay') open.click();
  return { update };
}
