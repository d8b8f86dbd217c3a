import { dfError } from '../errors.js';

/**
 * Canonical JSON for signed statements: the subset of RFC 8785 (JCS) that our statements use —
 * objects with keys sorted by UTF-16 code units, no whitespace, strings as JSON.stringify writes
 * them, safe integers only (no floats, so no number formatting question), booleans, null, arrays.
 * Anything else (undefined, NaN, a float, a function) is refused before a byte is made, so a
 * signer and a verifier can never disagree on the bytes.
 */
export type Canonical = string | number | boolean | null | Canonical[] | { [k: string]: Canonical };

export function canonicalJson(v: unknown, path = '$'): string {
  if (v === null || typeof v === 'boolean') return JSON.stringify(v);
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw dfError('DF_ERR_BAD_REQUEST', `${path}: ${v} is not a safe integer (signed statements hold integers only)`, { field: path });
    return String(v);
  }
  if (Array.isArray(v)) return `[${v.map((x, i) => canonicalJson(x, `${path}[${i}]`)).join(',')}]`;
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k], `${path}.${k}`)}`).join(',')}}`;
  }
  throw dfError('DF_ERR_BAD_REQUEST', `${path}: a ${typeof v} cannot be signed`, { field: path });
}
