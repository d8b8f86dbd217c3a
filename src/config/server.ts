import { readFileSync } from 'node:fs';
import path from 'node:path';
import { dfError } from '../errors.js';

/**
 * Server configuration: one schema with documented defaults. load = defaults < file < env < flags,
 * every problem reported at once, then deep-frozen and passed down.
 */
export interface ServerConfig {
  /** Where metadata (SQLite), chunks, blobs and the admin token live. Default `./data`. */
  readonly dataDir: string;
  /** HTTP listen address. Default 127.0.0.1:8080 (give 0.0.0.0:8080 to serve a network). */
  readonly listen: { readonly host: string; readonly port: number };
  /** pino level. Default `info`. */
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Largest request body (packs, layers), bytes. Default 256 MiB. */
  readonly bodyLimit: number;
}

export const DEFAULTS: ServerConfig = {
  dataDir: './data',
  listen: { host: '127.0.0.1', port: 8080 },
  logLevel: 'info',
  bodyLimit: 256 * 1024 * 1024,
};

export interface ConfigSources {
  file?: string;
  env?: Record<string, string | undefined>;
  flags?: { data?: string; listen?: string; logLevel?: string };
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function parseHostPort(s: string, problems: string[], what: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s);
  if (!m) {
    problems.push(`${what}: expected HOST:PORT, got ${JSON.stringify(s)}`);
    return undefined;
  }
  const port = Number(m[3]);
  if (port < 0 || port > 65535) {
    problems.push(`${what}: port must be 0-65535, got ${port}`);
    return undefined;
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export function loadServerConfig(src: ConfigSources = {}): ServerConfig {
  const problems: string[] = [];
  let file: Record<string, unknown> = {};
  if (src.file) {
    try {
      file = JSON.parse(readFileSync(src.file, 'utf8')) as Record<string, unknown>;
    } catch (cause) {
      throw dfError('DF_ERR_CONFIG', `config file ${src.file}: ${(cause as Error).message}`, { file: src.file }, cause);
    }
    for (const k of Object.keys(file)) if (!['dataDir', 'listen', 'logLevel', 'bodyLimit'].includes(k)) problems.push(`config file: unknown key ${JSON.stringify(k)}`);
  }
  const env = src.env ?? {};
  const pick = <T>(flag: T | undefined, envv: T | undefined, filev: T | undefined, def: T): T => flag ?? envv ?? filev ?? def;

  const dataDir = pick(src.flags?.data, env.DESKFUSE_DATA, file.dataDir as string | undefined, DEFAULTS.dataDir);
  if (typeof dataDir !== 'string' || !dataDir) problems.push('dataDir: expected a non-empty path');
  const listenRaw = pick(src.flags?.listen, env.DESKFUSE_LISTEN, file.listen as string | undefined, `${DEFAULTS.listen.host}:${DEFAULTS.listen.port}`);
  const listen = typeof listenRaw === 'string' ? parseHostPort(listenRaw, problems, 'listen') : (problems.push('listen: expected HOST:PORT'), undefined);
  const logLevel = pick(src.flags?.logLevel, env.DESKFUSE_LOG_LEVEL, file.logLevel as string | undefined, DEFAULTS.logLevel);
  if (!LEVELS.includes(logLevel)) problems.push(`logLevel: expected one of ${LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  const bodyLimit = file.bodyLimit ?? DEFAULTS.bodyLimit;
  if (typeof bodyLimit !== 'number' || !Number.isInteger(bodyLimit) || bodyLimit < 1024 * 1024) problems.push('bodyLimit: expected an integer of at least 1048576');

  if (problems.length) throw dfError('DF_ERR_CONFIG', `invalid configuration:\n  - ${problems.join('\n  - ')}`, { problems });
  return deepFreeze({ dataDir: path.resolve(dataDir), listen: listen!, logLevel: logLevel as ServerConfig['logLevel'], bodyLimit: bodyLimit as number });
}

export function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
