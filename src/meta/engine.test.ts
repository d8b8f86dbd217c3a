import { describe, expect, it } from 'vitest';
import { rejection } from '../../test/helpers/expect.js';
import { engineKind, maskUrl, openEngine } from './engine.js';
import { numberPlaceholders, pgError, pgTarget } from './pg-engine.js';

// What needs no server: picking the engine from --meta, numbering placeholders, classifying failures.
// PgEngine against a real PostgreSQL: test/integration/pg-engine.test.ts.

describe('openEngine: the --meta value', () => {
  it('names PostgreSQL by URL, SQLite by sqlite:PATH or a plain path', () => {
    expect(engineKind('postgres://u:p@db.example:5433/deskfuse')).toEqual({ engine: 'postgres' });
    expect(engineKind('postgresql://u@10.0.0.5/deskfuse?sslmode=require')).toEqual({ engine: 'postgres' });
    expect(engineKind('./data/meta.sqlite')).toEqual({ engine: 'sqlite', path: './data/meta.sqlite' });
    expect(engineKind('/var/lib/deskfuse/meta.sqlite')).toEqual({ engine: 'sqlite', path: '/var/lib/deskfuse/meta.sqlite' });
    expect(engineKind('sqlite:meta.sqlite')).toEqual({ engine: 'sqlite', path: 'meta.sqlite' });
    expect(engineKind('sqlite:///var/lib/deskfuse/meta.sqlite')).toEqual({ engine: 'sqlite', path: '/var/lib/deskfuse/meta.sqlite' });
  });

  it('anything else is DF_ERR_CONFIG naming the value, its password masked', async () => {
    for (const spec of ['mysql://root:hunter2@db/deskfuse', 'http://example.org/meta', 'sqlite:', '', 'postgres://user:hunter2@/db', 's3://bucket/x']) {
      const err = await rejection(openEngine(spec));
      expect(err.code).toBe('DF_ERR_CONFIG');
      expect(err.message).not.toContain('hunter2');
      expect(err.fields).toMatchObject({ option: 'meta', value: maskUrl(spec) });
      if (spec) expect(err.message).toContain(maskUrl(spec));
    }
    expect(maskUrl('postgres://u:p%40ss@h:1/d')).toBe('postgres://u:***@h:1/d');
    expect(maskUrl('postgres://u@h/d')).toBe('postgres://u@h/d');
    expect(maskUrl('./meta.sqlite')).toBe('./meta.sqlite');
  });
});

describe('PgEngine without a server', () => {
  it('numbers ? placeholders in order, leaving quoted text alone', () => {
    expect(numberPlaceholders('SELECT a FROM t WHERE b = ? AND c IN (?, ?)')).toBe('SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)');
    expect(numberPlaceholders(`SELECT '?' AS q, "we?rd" FROM t WHERE x = ?`)).toBe(`SELECT '?' AS q, "we?rd" FROM t WHERE x = $1`);
    expect(numberPlaceholders('SELECT 1')).toBe('SELECT 1');
  });

  it('where a URL points, for messages (no password)', () => {
    expect(pgTarget('postgres://df:secret@db.example:5433/meta')).toEqual({ host: 'db.example', port: 5433, database: 'meta', user: 'df' });
    expect(pgTarget('postgresql://df@[::1]/')).toMatchObject({ host: '::1', port: 5432, database: 'df' });
  });

  it('classifies failures: unreachable, denied, missing database, others with their SQLSTATE', () => {
    const t = pgTarget('postgres://df:secret@127.0.0.1:5999/meta');
    const coded = (err: unknown) => pgError(err, t);
    const errno = (code: string) => Object.assign(new Error(`connect ${code} 127.0.0.1:5999`), { code });
    const state = (code: string, message: string) => Object.assign(new Error(message), { code, severity: 'FATAL' });
    for (const e of [errno('ECONNREFUSED'), errno('ETIMEDOUT'), errno('EHOSTUNREACH'), errno('ECONNRESET'), new Error('Connection terminated unexpectedly'), new Error('timeout exceeded when trying to connect'), state('57P01', 'terminating connection due to administrator command'), state('57P03', 'the database system is starting up'), state('08006', 'connection failure')]) {
      const c = coded(e);
      expect(c.code).toBe('DF_ERR_META_UNREACHABLE');
      expect(c.message).toContain('127.0.0.1:5999');
      expect(c.cause).toBe(e);
    }
    expect(coded(state('28P01', 'password authentication failed for user "df"')).code).toBe('DF_ERR_META_DENIED');
    expect(coded(state('28000', 'no pg_hba.conf entry')).code).toBe('DF_ERR_META_DENIED');
    const missing = coded(state('3D000', 'database "meta" does not exist'));
    expect(missing).toMatchObject({ code: 'DF_ERR_META_UNREACHABLE', fields: { database: 'meta' } });
    expect(missing.message).toContain('"meta"');
    expect(coded(state('40001', 'could not serialize access'))).toMatchObject({ code: 'DF_ERR_META', fields: { sqlstate: '40001' } });
    for (const c of [coded(errno('ECONNREFUSED')), coded(state('28P01', 'x')), missing]) expect(JSON.stringify(c.toJSON())).not.toContain('secret');
  });
});
