// Caption style choices (the overlay's URL parameters, the presentation mode's remembered settings): one table
// of parameters, each value checked against a whitelist or a bounded number, so nothing from a URL or from
// localStorage ever reaches CSS unchecked. Pure: no DOM, tested under node (tests/js/style.test.mjs).

// Font stacks by name: a URL names a stack, never a CSS font-family string.
export const FONTS = {
  sans: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif',
  serif: 'Georgia, "Times New Roman", serif',
  mono: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
  rounded: '"Nunito", "Arial Rounded MT Bold", "Varela Round", system-ui, sans-serif',
  condensed: '"Roboto Condensed", "Arial Narrow", "DejaVu Sans Condensed", sans-serif',
  dyslexic: '"OpenDyslexic", "Comic Sans MS", "Atkinson Hyperlegible", sans-serif',
};

const NAMED_COLORS = {
  white: '#ffffff', black: '#000000', yellow: '#ffe45c', cyan: '#7fe7ff', green: '#7dff9b', red: '#ff6b6b',
};

// name, kind, default, bounds/choices, and what it does (the builder and docs/overlay.md show the same).
export const PARAMS = [
  { name: 'font', kind: 'choice', def: 'sans', choices: Object.keys(FONTS), help: 'font family' },
  { name: 'size', kind: 'int', def: 48, min: 12, max: 160, help: 'font size in CSS pixels' },
  { name: 'bold', kind: 'bool', def: false, help: 'bold text' },
  { name: 'color', kind: 'color', def: '#ffffff', help: 'text colour: #rgb, #rrggbb or a name (white, black, yellow, cyan, green, red)' },
  { name: 'bg', kind: 'color', def: 'transparent', alpha: true, transparent: true, help: 'page background: transparent, or a colour (#rrggbbaa for see-through)' },
  { name: 'box', kind: 'color', def: 'none', alpha: true, none: true, help: 'a box behind the text: none, or a colour (#rrggbbaa for see-through)' },
  { name: 'outline', kind: 'choice', def: 'thin', choices: ['none', 'thin', 'thick'], help: 'an outline around each letter' },
  { name: 'outlinecolor', kind: 'color', def: '#000000', help: 'the outline and shadow colour' },
  { name: 'shadow', kind: 'choice', def: 'none', choices: ['none', 'soft', 'hard'], help: 'a drop shadow' },
  { name: 'lines', kind: 'int', def: 2, min: 1, max: 12, help: 'lines kept on screen (whole lines: older text scrolls off the top)' },
  { name: 'align', kind: 'choice', def: 'center', choices: ['left', 'center', 'right'], help: 'horizontal alignment' },
  { name: 'position', kind: 'choice', def: 'bottom', choices: ['top', 'bottom'], help: 'where the lines sit on the page' },
  { name: 'interim', kind: 'bool', def: true, help: 'show words still being recognized (lighter, italic); 0 shows finished sentences only' },
  { name: 'clear', kind: 'int', def: 0, min: 0, max: 600, help: 'fade the text out after this many seconds of silence; 0 never' },
];

const BY_NAME = new Map(PARAMS.map((p) => [p.name, p]));

export function defaults(overrides = {}) {
  const out = Object.fromEntries(PARAMS.map((p) => [p.name, p.def]));
  return { ...out, ...overrides };
}

// A colour value as '#rrggbb' or '#rrggbbaa' (lowercase), or null when not one.
export function parseColor(raw, { alpha = false } = {}) {
  const s = String(raw).trim().toLowerCase();
  if (Object.hasOwn(NAMED_COLORS, s)) return NAMED_COLORS[s];
  const hex = s.startsWith('#') ? s.slice(1) : s; // '#' must be %23 in a URL; accept it bare too
  if (!/^[0-9a-f]+$/.test(hex)) return null;
  if (hex.length === 3 || (alpha && hex.length === 4)) {
    return `#${[...hex].map((c) => c + c).join('')}`;
  }
  if (hex.length === 6 || (alpha && hex.length === 8)) return `#${hex}`;
  return null;
}

// One parameter's raw string → its value, or undefined when it is not a valid value.
export function parseValue(param, raw) {
  if (typeof raw !== 'string' || raw.length > 32) return undefined;
  const s = raw.trim().toLowerCase();
  switch (param.kind) {
    case 'choice':
      return param.choices.includes(s) ? s : undefined;
    case 'int': {
      if (!/^\d{1,4}$/.test(s)) return undefined;
      const n = Number(s);
      return n >= param.min && n <= param.max ? n : undefined;
    }
    case 'bool':
      if (['1', 'true', 'yes', 'on', ''].includes(s)) return true;
      if (['0', 'false', 'no', 'off'].includes(s)) return false;
      return undefined;
    case 'color':
      if (param.transparent && s === 'transparent') return 'transparent';
      if (param.none && s === 'none') return 'none';
      return parseColor(s, { alpha: param.alpha }) ?? undefined;
    default:
      return undefined;
  }
}

// URL query (string or URLSearchParams) → {values, rejected}. Unknown names are ignored; a bad value keeps
// the default and is listed in `rejected` (the builder shows them; the overlay stays clean for the stream).
export function parseParams(query, base = defaults()) {
  const params = typeof query === 'string' ? new URLSearchParams(query) : query;
  const values = { ...base };
  const rejected = [];
  let seen = 0;
  for (const [name, raw] of params) {
    if (++seen > 64) break; // a hostile URL with thousands of parameters: bounded work
    const param = BY_NAME.get(name.toLowerCase());
    if (!param) continue;
    const value = parseValue(param, raw);
    if (value === undefined) rejected.push(param.name);
    else values[param.name] = value;
  }
  return { values, rejected };
}

// Values → the shortest query string that gives them back (defaults left out), in table order.
export function toQuery(values, base = defaults()) {
  const out = new URLSearchParams();
  for (const p of PARAMS) {
    const v = values[p.name];
    if (v === undefined || v === base[p.name]) continue;
    out.set(p.name, p.kind === 'bool' ? (v ? '1' : '0') : String(v));
  }
  return out.toString();
}

const OUTLINES = { none: 0, thin: 0.045, thick: 0.09 }; // of the font size

// Validated values → CSS property values (applied through CSSOM, never as a style attribute or a sheet).
export function cssFor(values) {
  const size = values.size;
  const lineHeight = Math.round(size * 1.25); // whole pixels, so N lines are exactly N × lineHeight tall
  const edge = values.outlinecolor;
  const shadows = [];
  const w = OUTLINES[values.outline] * size;
  if (w > 0) {
    const r = Math.max(1, Math.round(w * 10) / 10);
    for (const [x, y] of [[1, 0], [-1, 0], [0, 1], [0, -1], [0.7, 0.7], [-0.7, 0.7], [0.7, -0.7], [-0.7, -0.7]]) {
      shadows.push(`${(x * r).toFixed(1)}px ${(y * r).toFixed(1)}px 0 ${edge}`);
    }
  }
  if (values.shadow === 'soft') shadows.push(`0 ${Math.round(size * 0.06)}px ${Math.round(size * 0.2)}px ${edge}`);
  if (values.shadow === 'hard') shadows.push(`${Math.round(size * 0.06)}px ${Math.round(size * 0.06)}px 0 ${edge}`);
  return {
    fontFamily: FONTS[values.font],
    fontSize: `${size}px`,
    fontWeight: values.bold ? '700' : '400',
    lineHeight: `${lineHeight}px`,
    lineHeightPx: lineHeight,
    color: values.color,
    textAlign: values.align,
    textShadow: shadows.length ? shadows.join(', ') : 'none',
    pageBackground: values.bg === 'transparent' ? 'transparent' : values.bg,
    boxBackground: values.box === 'none' ? 'transparent' : values.box,
  };
}

// How many whole lines fit: at most `wanted`, at least 1, never more than the height holds.
export function wholeLines(available, lineHeight, wanted) {
  if (!(lineHeight > 0)) return 1;
  return Math.max(1, Math.min(wanted, Math.floor((available + 0.5) / lineHeight)));
}

// WCAG 2 contrast ratio of two '#rrggbb' colours (the builder warns about a pair under 4.5:1).
export function contrast(a, b) {
  const lum = (hex) => {
    const [r, g, b2] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
      .map((c) => (c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b2;
  };
  const [x, y] = [lum(a), lum(b)].sort((m, n) => n - m);
  return (x + 0.05) / (y + 0.05);
}

// Presentation mode's colour themes: each pair is ≥ 4.5:1 (tests/js/style.test.mjs checks).
export const THEMES = {
  dark: { color: '#ffffff', bg: '#000000' },
  light: { color: '#000000', bg: '#ffffff' },
  yellow: { color: '#ffe45c', bg: '#000000' },
  blue: { color: '#ffffff', bg: '#0b2a5b' },
};

// Presentation settings (localStorage): {theme, size, lines, font}; anything stored that is not valid is dropped.
export function parsePresentation(raw) {
  const base = { theme: 'dark', size: 64, lines: 3, font: 'sans' };
  let obj;
  try {
    obj = JSON.parse(raw ?? '{}');
  } catch {
    return base;
  }
  if (!obj || typeof obj !== 'object') return base;
  const out = { ...base };
  if (typeof obj.theme === 'string' && Object.hasOwn(THEMES, obj.theme)) out.theme = obj.theme;
  const size = parseValue({ kind: 'int', min: 16, max: 160 }, String(obj.size ?? ''));
  if (size !== undefined) out.size = size;
  const lines = parseValue(BY_NAME.get('lines'), String(obj.lines ?? ''));
  if (lines !== undefined) out.lines = lines;
  const font = parseValue(BY_NAME.get('font'), String(obj.font ?? ''));
  if (font !== undefined) out.font = font;
  return out;
}
