/**
 * Text an endpoint reports (agent errors, reasons, serial numbers) is untrusted: it ends up in logs,
 * tables and iPXE scripts, where a line break or `${` would break or inject. Cleaned where it enters.
 */
export const UNTRUSTED_TEXT_MAX = 500;

/** One line of printable text: control characters become spaces, `${` loses its meaning, long text is cut. */
export function cleanText(s: string, max = UNTRUSTED_TEXT_MAX): string {
  // eslint-disable-next-line no-control-regex
  let t = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, ' ').replace(/\$\{/g, '$ {').trim();
  if (t.length > max) t = `${t.slice(0, max - 1)}…`;
  return t;
}

/** A reported detail object with every string in it cleaned (nested objects and arrays too, to a small depth). */
export function cleanDetail(v: Record<string, unknown>): Record<string, unknown> {
  return clean(v, 0) as Record<string, unknown>;
}

function clean(v: unknown, depth: number): unknown {
  if (typeof v === 'string') return cleanText(v);
  if (depth >= 4 || v === null || typeof v !== 'object') return typeof v === 'object' && v !== null ? '[nested too deep]' : v;
  if (Array.isArray(v)) return v.slice(0, 64).map((x) => clean(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v).slice(0, 64)) out[cleanText(k, 64)] = clean(x, depth + 1);
  return out;
}
