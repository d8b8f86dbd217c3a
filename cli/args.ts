import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ApiClient, busyLine } from '../src/api/client.js';
import { dfError } from '../src/errors.js';

/** Global options every command takes. */
export const GLOBAL_OPTIONS = {
  server: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies ParseArgsConfig['options'];

export interface Io {
  out: NodeJS.WriteStream;
  err: NodeJS.WriteStream;
  env: Record<string, string | undefined>;
}

export function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...GLOBAL_OPTIONS, ...options }, allowPositionals: true, strict: true });
  } catch (cause) {
    throw dfError('DF_ERR_USAGE', (cause as Error).message, {}, cause);
  }
}

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';

/** --server/DESKFUSE_SERVER; --token/DESKFUSE_TOKEN, else the admin.token of the local data dir. */
export function clientFrom(values: { server?: string | undefined; token?: string | undefined }, env: Io['env']): ApiClient {
  const server = values.server ?? env.DESKFUSE_SERVER ?? DEFAULT_SERVER;
  let token = values.token ?? env.DESKFUSE_TOKEN;
  if (!token) {
    try {
      token = readFileSync(path.join(env.DESKFUSE_DATA ?? 'data', 'admin.token'), 'utf8').trim();
    } catch {
      token = undefined;
    }
  }
  return new ApiClient({ server, ...(token ? { token } : {}), onBusy: (b) => process.stderr.write(busyLine('deskfuse', b)) });
}

/** "64K", "1M", "65536" → bytes. */
export function parseSize(s: string, option: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(s.trim());
  if (!m) throw dfError('DF_ERR_USAGE', `${option}: expected a size like 65536, 64K or 1M, got ${JSON.stringify(s)}`, { option });
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[(m[2] ?? '').charAt(0).toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}

/** `--expect` of a compare-and-swap: a version number, or "none" (no version yet). */
export function parseExpect(s: string, option = '--expect'): number | null {
  if (s === 'none') return null;
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < 1) throw dfError('DF_ERR_USAGE', `${option}: expected a version number or none, got ${JSON.stringify(s)}`, { option });
  return n;
}

export function need<T>(v: T | undefined, what: string): T {
  if (v === undefined || v === '') throw dfError('DF_ERR_USAGE', `missing ${what}`);
  return v;
}
