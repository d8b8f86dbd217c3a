/**
 * HTML for the web console: a tagged template that escapes every value it is given (text from
 * endpoints, users and the database is never markup), and the page frame every page shares.
 *
 *   html`<td>${name}</td>`     name is escaped
 *   html`<ul>${items.map((i) => html`<li>${i}</li>`)}</ul>`     nested html stays markup
 *   raw(s)                      markup we wrote ourselves (never input)
 */
export class Raw {
  constructor(readonly s: string) {}
  toString(): string {
    return this.s;
  }
}
export const raw = (s: string): Raw => new Raw(s);

export type Part = Raw | string | number | boolean | null | undefined | readonly Part[];

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ESC[c]!);

function part(v: Part): string {
  if (v === null || v === undefined || v === false || v === true) return '';
  if (v instanceof Raw) return v.s;
  if (Array.isArray(v)) return (v as readonly Part[]).map(part).join('');
  return esc(String(v));
}

export function html(strings: TemplateStringsArray, ...vals: Part[]): Raw {
  let out = strings[0]!;
  for (let i = 0; i < vals.length; i++) out += part(vals[i]) + strings[i + 1]!;
  return new Raw(out);
}

/** A path segment: names and refs (`desktops/alice`) go into URLs encoded. */
export const seg = (s: string | number): string => encodeURIComponent(String(s));

export interface Flash {
  kind: 'ok' | 'error';
  text: string;
}

export interface Frame {
  title: string;
  /** Which tab is current. */
  nav?: 'endpoints' | 'images' | 'desktops' | 'vdi' | 'store';
  /** The session's CSRF token (absent on the login page: no logout form). */
  csrf?: string;
  flash?: Flash[];
  body: Raw;
}

const TABS: Array<[NonNullable<Frame['nav']>, string, string]> = [
  ['endpoints', '/endpoints', 'Endpoints'],
  ['images', '/images', 'Images'],
  ['desktops', '/desktops', 'Desktops'],
  ['vdi', '/vdi', 'VDI sessions'],
  ['store', '/store', 'Store'],
];

/** A hidden CSRF field: every form of a signed-in page carries one. */
export const csrfField = (csrf: string): Raw => html`<input type="hidden" name="_csrf" value="${csrf}">`;

/** A one-button form posting to `action` (approve, break, discard…). */
export function button(action: string, label: string, csrf: string, o: { fields?: Record<string, string | number>; danger?: boolean; title?: string } = {}): Raw {
  return html`<form method="post" action="${action}" class="inline">${csrfField(csrf)}${Object.entries(o.fields ?? {}).map(([k, v]) => html`<input type="hidden" name="${k}" value="${String(v)}">`)}<button type="submit"${raw(o.danger ? ' class="danger"' : '')}${o.title ? html` title="${o.title}"` : ''}>${label}</button></form>`;
}

export function page(f: Frame): string {
  const nav = f.csrf !== undefined
    ? html`<nav aria-label="Sections"><ul>${TABS.map(([k, href, label]) => html`<li><a href="${href}"${raw(f.nav === k ? ' aria-current="page"' : '')}>${label}</a></li>`)}</ul>
<form method="post" action="/logout" class="logout">${csrfField(f.csrf)}<button type="submit">Log out</button></form></nav>`
    : '';
  const flash = (f.flash ?? []).map((m) => html`<p class="flash ${m.kind}" role="${m.kind === 'error' ? 'alert' : 'status'}">${m.text}</p>`);
  return `<!doctype html>\n${html`<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${f.title} · deskfuse</title><link rel="stylesheet" href="/assets/console.css"><script src="/assets/console.js" defer></script></head>
<body><a class="skip" href="#main">Skip to content</a><header><span class="brand">deskfuse</span>${nav}</header>
<main id="main"><h1>${f.title}</h1>${flash}${f.body}</main></body></html>`.s}\n`;
}

/** "3 minutes ago" style, with the ISO time in a title for the exact value. */
export function ago(iso: string | null | undefined, now: Date): Raw {
  if (!iso) return html`<span class="muted">never</span>`;
  const t = Date.parse(iso);
  const s = Math.round((now.getTime() - t) / 1000);
  const abs = Math.abs(s);
  const [n, unit] = abs < 60 ? [abs, 's'] : abs < 3600 ? [Math.floor(abs / 60), 'min'] : abs < 86400 ? [Math.floor(abs / 3600), 'h'] : [Math.floor(abs / 86400), 'd'];
  return html`<time datetime="${iso}" title="${iso}">${s >= 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`}</time>`;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

export const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;
