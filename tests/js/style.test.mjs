// Unit tests for static/caption-style.js: the overlay's URL parameters (every bad value falls back to its
// default, nothing unchecked reaches CSS), whole-line fitting, WCAG contrast, presentation settings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  PARAMS, THEMES, contrast, cssFor, defaults, parseColor, parseParams, parsePresentation, toQuery, wholeLines,
} from '../../static/caption-style.js';

test('defaults: transparent page, white text with a thin outline, 2 lines, centred at the bottom', () => {
  const { values, rejected } = parseParams('');
  assert.deepEqual(rejected, []);
  assert.deepEqual(values, defaults());
  assert.equal(values.bg, 'transparent');
  const css = cssFor(values);
  assert.equal(css.pageBackground, 'transparent');
  assert.equal(css.boxBackground, 'transparent');
  assert.equal(css.fontSize, '48px');
  assert.equal(css.lineHeight, '60px');
  assert.match(css.textShadow, /#000000/);
});

const GOOD = [
  ['font=serif', { font: 'serif' }],
  ['font=MONO', { font: 'mono' }],
  ['size=72', { size: 72 }],
  ['size=12', { size: 12 }],
  ['size=160', { size: 160 }],
  ['color=%23ff0', { color: '#ffff00' }],
  ['color=ffe45c', { color: '#ffe45c' }],
  ['color=yellow', { color: '#ffe45c' }],
  ['bg=%23000000aa', { bg: '#000000aa' }],
  ['bg=transparent', { bg: 'transparent' }],
  ['box=%23000a', { box: '#000000aa' }],
  ['box=none', { box: 'none' }],
  ['outline=thick&outlinecolor=%23123456', { outline: 'thick', outlinecolor: '#123456' }],
  ['shadow=soft', { shadow: 'soft' }],
  ['lines=5', { lines: 5 }],
  ['align=left&position=top', { align: 'left', position: 'top' }],
  ['interim=0', { interim: false }],
  ['interim', { interim: true }],
  ['bold=1', { bold: true }],
  ['clear=8', { clear: 8 }],
  ['SIZE=30', { size: 30 }], // names are case-insensitive
  ['nonsense=1&size=30', { size: 30 }], // unknown names are ignored, not errors
];

for (const [query, want] of GOOD) {
  test(`parses ${query}`, () => {
    const { values, rejected } = parseParams(query);
    assert.deepEqual(rejected, []);
    assert.deepEqual(values, { ...defaults(), ...want });
  });
}

// Each bad value: the default stays, the name is reported, and no CSS text comes from the URL.
const BAD = [
  ['size=0', 'size'], ['size=161', 'size'], ['size=-5', 'size'], ['size=48px', 'size'], ['size=1e2', 'size'],
  ['size=', 'size'], ['lines=0', 'lines'], ['lines=13', 'lines'], ['lines=2.5', 'lines'], ['clear=601', 'clear'],
  ['font=Comic%20Sans', 'font'], ['font=sans;color:red', 'font'],
  ['color=red;background:url(x)', 'color'], ['color=rgb(1,2,3)', 'color'], ['color=%23ggg', 'color'],
  ['color=%2312345', 'color'], ['color=%2300000000', 'color'], // alpha only where a see-through colour makes sense
  ['color=transparent', 'color'], ['bg=none', 'bg'], ['box=transparent', 'box'],
  ['bg=expression(alert(1))', 'bg'], ['bg=%23fff%7D%20body%7Bdisplay:none', 'bg'],
  ['outline=fat', 'outline'], ['shadow=1px%201px%20red', 'shadow'], ['align=justify', 'align'],
  ['position=middle', 'position'], ['interim=maybe', 'interim'], ['bold=2', 'bold'],
  [`color=${'a'.repeat(40)}`, 'color'],
];

for (const [query, name] of BAD) {
  test(`falls back on ${query.slice(0, 40)}`, () => {
    const { values, rejected } = parseParams(query);
    assert.deepEqual(rejected, [name]);
    assert.deepEqual(values, defaults());
  });
}

test('every CSS value built is from the whitelist or a validated number or colour', () => {
  const hostile = 'font=sans&size=99&color=%23abc&bg=%23000000cc&box=%23112233&outlinecolor=%23fff&outline=thick&shadow=hard';
  const css = cssFor(parseParams(hostile).values);
  for (const [k, v] of Object.entries(css)) {
    if (k === 'fontFamily') continue; // one of FONTS, by name
    assert.match(String(v), /^[#0-9a-z.,\s()-]*$/i, k);
    assert.doesNotMatch(String(v), /[;{}:]|url|expression/i, k);
  }
});

test('a URL with thousands of parameters costs bounded work', () => {
  const many = Array.from({ length: 5000 }, (_, i) => `size=${i % 150}`).join('&');
  const t = process.hrtime.bigint();
  const { rejected } = parseParams(many);
  assert.ok(Number(process.hrtime.bigint() - t) / 1e6 < 50);
  assert.ok(rejected.length <= 64);
});

test('toQuery gives back the same values and leaves defaults out', () => {
  assert.equal(toQuery(defaults()), '');
  const values = { ...defaults(), size: 64, color: '#ffe45c', interim: false, box: '#000000aa', align: 'left' };
  const q = toQuery(values);
  assert.equal(q, 'size=64&color=%23ffe45c&box=%23000000aa&align=left&interim=0');
  assert.deepEqual(parseParams(q).values, values);
});

test('parseColor', () => {
  assert.equal(parseColor('#FFF'), '#ffffff');
  assert.equal(parseColor('#abcd'), null);
  assert.equal(parseColor('#abcd', { alpha: true }), '#aabbccdd');
  assert.equal(parseColor('white'), '#ffffff');
  assert.equal(parseColor('constructor'), null); // not an Object.prototype key
});

const FITS = [
  // available px, line height, wanted → rows
  [300, 60, 2, 2], [300, 60, 10, 5], [299, 60, 10, 4], [59, 60, 3, 1], [0, 60, 3, 1], [720, 80, 3, 3], [100, 0, 3, 1],
];
for (const [room, lh, wanted, rows] of FITS) {
  test(`wholeLines(${room}, ${lh}, ${wanted}) = ${rows}`, () => assert.equal(wholeLines(room, lh, wanted), rows));
}

test('WCAG contrast: known pairs', () => {
  assert.equal(contrast('#ffffff', '#000000').toFixed(1), '21.0');
  assert.equal(contrast('#b00020', '#000000').toFixed(2), '2.87'); // the old "● Live" badge on black
  assert.equal(contrast('#777777', '#ffffff').toFixed(2), '4.48');
});

test('every presentation theme is at least 4.5:1, also its interim colour (75 % mix)', () => {
  const mix = (a, b) => '#' + [1, 3, 5].map((i) => Math.round(parseInt(a.slice(i, i + 2), 16) * 0.75
    + parseInt(b.slice(i, i + 2), 16) * 0.25).toString(16).padStart(2, '0')).join('');
  for (const [name, t] of Object.entries(THEMES)) {
    assert.ok(contrast(t.color, t.bg) >= 4.5, name);
    assert.ok(contrast(mix(t.color, t.bg), t.bg) >= 4.5, `${name} interim`);
  }
});

test('presentation settings from localStorage are validated', () => {
  const base = parsePresentation(null);
  assert.deepEqual(base, { theme: 'dark', size: 64, lines: 3, font: 'sans' });
  assert.deepEqual(parsePresentation('{"theme":"light","size":88,"lines":4,"font":"serif"}'),
    { theme: 'light', size: 88, lines: 4, font: 'serif' });
  for (const raw of ['not json', '[]', '42', '{"theme":"__proto__"}', '{"size":"9999"}', '{"lines":-1}',
    '{"font":"x;y"}', '{"size":"64px"}']) {
    assert.deepEqual(parsePresentation(raw), base, raw);
  }
});

test('docs/overlay.md has a row for every parameter, with its default', () => {
  const doc = readFileSync(new URL('../../docs/overlay.md', import.meta.url), 'utf8');
  for (const p of PARAMS) {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${p.name}\` |`));
    assert.ok(row, p.name);
    const def = p.kind === 'bool' ? (p.def ? '1' : '0') : String(p.def);
    assert.ok(row.includes(`\`${def}\``), `${p.name} default ${def}`);
  }
});
