import { dfError } from '../errors.js';
import type { Logger } from '../log.js';
import { PgEngine, type PgEngineOptions } from './pg-engine.js';
import type { SqlEngine } from './sql.js';
import { SqliteEngine } from './sqlite-engine.js';

/**
 * The metadata engine a `--meta` value names (the composition root calls this once):
 *   postgres://USER:PASS@HOST:PORT/DB (or postgresql://…)  → PostgreSQL, proved with SELECT 1 now, so
 *                                        wrong credentials or an unreachable server fail at start, coded
 *   sqlite:PATH, or a plain file path    → SQLite (the embedded default)
 * Anything else is DF_ERR_CONFIG naming the value (its password masked).
 */
export interface OpenEngineOptions extends PgEngineOptions {
  log?: Logger;
}

export async function openEngine(spec: string, opts: OpenEngineOptions = {}): Promise<SqlEngine> {
  const kind = engineKind(spec);
  if (kind.engine === 'postgres') return PgEngine.open(spec, opts);
  return new SqliteEngine(kind.path);
}

/** Which engine a spec names, without opening it (DF_ERR_CONFIG if none). */
export function engineKind(spec: string): { engine: 'postgres' } | { engine: 'sqlite'; path: string } {
  const bad = (why: string) =>
    dfError('DF_ERR_CONFIG', `the metadata database "${maskUrl(spec)}" is not valid: ${why}`, { option: 'meta', value: maskUrl(spec) });
  const s = spec.trim();
  if (/^postgres(ql)?:\/\//i.test(s)) {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw bad('not a URL (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE; percent-encode special characters)');
    }
    if (!u.hostname) throw bad('the URL names no host (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)');
    return { engine: 'postgres' };
  }
  if (/^sqlite:/i.test(s)) {
    const path = s.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
    if (!path) throw bad('sqlite: names no file (expected sqlite:PATH)');
    return { engine: 'sqlite', path };
  }
  // any other scheme (mysql://, http:, s3:…) is not a file path
  if (!s || /^[a-z][a-z0-9+.-]*:/i.test(s)) {
    throw bad('expected postgres://USER:PASSWORD@HOST:PORT/DATABASE, sqlite:PATH or a file path');
  }
  return { engine: 'sqlite', path: spec };
}

/** A URL with its password replaced by `***` (for messages and logs). */
export function maskUrl(spec: string): string {
  return spec.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*:).*@/i, '$1***@'); // up to the last @: over-masking is safe
}
