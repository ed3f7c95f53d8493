// Presentation mode for the capture and viewer pages: only the captions, full screen (Fullscreen API) when the
// browser allows, whole lines at the bottom (the box is exactly N line-heights tall, so neither the newest nor
// the top line is ever cut), controls that hide while the pointer rests and come back on pointer move or
// keyboard focus. Size, lines, colours and font are remembered in localStorage, validated on the way back in
// (static/caption-style.js). Enter with the button or the P key; leave with Esc or the Exit button.
import { FONTS, THEMES, parsePresentation, wholeLines } from './caption-style.js';

const IDLE_MS = 2500;
const STORE_KEY = 'captionRelay.present';
const SIZES = [24, 32, 40, 48, 56, 64, 72, 88, 104, 120, 140, 160];

function load() {
  try {
    return localStorage.getItem(STORE_KEY);
  } catch {
    return null; // storage disabled: defaults
  }
}

function save(settings) {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(settings));
  } catch {
    // storage disabled: the choice is just not remembered
  }
}

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

// `box`: the element holding the caption lines; `button`: the page's "Present" toggle; `status`: the page's
// connection state, shown in the corner while it is not live (the audience must not read stale captions).
export function setupPresentation({ box, button, status }) {
  const $ = (id) => document.getElementById(id);
  const bar = $('present-bar');
  const theme = $('present-theme');
  const font = $('present-font');
  let settings = parsePresentation(load());
  let idleTimer = 0;
  let wasFullscreen = false;
  const state = { on: false, rows: 0, lineHeight: 0, settings }; // test hooks
  window.__present = state;
  status?.classList.add('present-status');

  function wake() {
    document.body.classList.remove('present-idle');
    clearTimeout(idleTimer);
    if (state.on) idleTimer = setTimeout(() => document.body.classList.add('present-idle'), IDLE_MS);
  }

  function fit() {
    if (!state.on) return;
    const lh = Math.round(settings.size * 1.25); // whole pixels: N lines are exactly N × lh
    const room = window.innerHeight - Math.ceil(window.innerHeight * 0.04); // the 2vh margins
    state.rows = wholeLines(room, lh, settings.lines);
    state.lineHeight = lh;
    box.style.lineHeight = `${lh}px`;
    box.style.height = `${state.rows * lh}px`;
  }

  function apply() {
    const colours = THEMES[settings.theme];
    document.body.style.setProperty('--present-fg', colours.color);
    document.body.style.setProperty('--present-bg', colours.bg);
    box.style.fontSize = `${settings.size}px`;
    box.style.fontFamily = FONTS[settings.font];
    theme.value = settings.theme;
    font.value = settings.font;
    state.settings = settings;
    fit();
  }

  function change(next) {
    settings = parsePresentation(JSON.stringify({ ...settings, ...next }));
    save(settings);
    apply();
  }

  function enter({ fullscreen = true } = {}) {
    if (state.on) return;
    state.on = true;
    box.classList.add('present-caption');
    document.body.classList.add('presenting');
    button.setAttribute('aria-pressed', 'true');
    apply();
    wake();
    if (fullscreen && document.fullscreenEnabled && !document.fullscreenElement) {
      document.documentElement.requestFullscreen?.().then(
        () => {
          wasFullscreen = true;
        },
        () => {}, // refused (no gesture, an iframe without allow="fullscreen"): present in the window
      );
    }
  }

  function leave() {
    if (!state.on) return;
    state.on = false;
    clearTimeout(idleTimer);
    box.classList.remove('present-caption');
    document.body.classList.remove('presenting', 'present-idle');
    for (const prop of ['height', 'line-height', 'font-size', 'font-family']) box.style.removeProperty(prop);
    button.setAttribute('aria-pressed', 'false');
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    wasFullscreen = false;
    box.scrollTop = box.scrollHeight;
    button.focus({ preventScroll: true });
  }

  const step = (list, value, by) => {
    const i = list.findIndex((v) => v >= value);
    return list[Math.max(0, Math.min(list.length - 1, (i < 0 ? list.length - 1 : i) + by))];
  };

  button.addEventListener('click', () => (state.on ? leave() : enter()));
  $('present-exit').addEventListener('click', leave);
  $('present-smaller').addEventListener('click', () => change({ size: step(SIZES, settings.size, -1) }));
  $('present-larger').addEventListener('click', () => change({ size: step(SIZES, settings.size, 1) }));
  $('present-fewer').addEventListener('click', () => change({ lines: Math.max(1, settings.lines - 1) }));
  $('present-more').addEventListener('click', () => change({ lines: Math.min(12, settings.lines + 1) }));
  theme.addEventListener('change', () => change({ theme: theme.value }));
  font.addEventListener('change', () => change({ font: font.value }));
  bar.addEventListener('focusin', wake);
  document.addEventListener('pointermove', () => state.on && wake());
  document.addEventListener('pointerdown', () => state.on && wake());
  document.addEventListener('keydown', (e) => {
    if (state.on) wake(); // Tab to the controls shows them
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target) || document.querySelector('dialog[open]')) return;
    if (e.key === 'Escape' && state.on) leave();
    else if ((e.key === 'p' || e.key === 'P') && !e.repeat) {
      e.preventDefault();
      if (state.on) leave();
      else enter();
    }
  });
  document.addEventListener('fullscreenchange', () => {
    if (document.fullscreenElement) wasFullscreen = true;
    else if (wasFullscreen && state.on) leave(); // Esc in full screen: the browser left it, so do we
  });
  window.addEventListener('resize', fit);
  button.hidden = false;
  return { enter, leave, state };
}
